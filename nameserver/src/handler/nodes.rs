//! Brokers and stores: registration with a lease (the session),
//! heartbeats (which carry load reports and, for brokers, return the
//! partitions they own) and deregistration.

use super::node_identity::{check_node_principal, SessionPrincipals};
use super::{invalid, lease_of, NameServerHandler};
use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner};
use crate::metadata::{Compare, KeyValue, MetadataError, Put, Transaction};
use sluice_acl::Principal;
use sluice_proto::names;
use sluice_proto::v1::{
    DeregisterNodeRequest, HeartbeatRequest, HeartbeatResponse, NodeInfo, NodeKind, NodeLoad,
    PartitionAssignment, RegisterNodeRequest, RegisterNodeResponse, Topic,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest accepted node address (`host:port`).
const MAX_ADDRESS_BYTES: usize = 255;

fn node_kind(value: i32) -> Result<NodeKind, NameServerError> {
    match NodeKind::try_from(value) {
        Ok(kind @ (NodeKind::Broker | NodeKind::Store)) => Ok(kind),
        _ => Err(invalid(format!("node kind {value} is not BROKER or STORE"))),
    }
}

fn validate_node_id(node_id: &str) -> Result<(), NameServerError> {
    names::validate_node_id(node_id).map_err(|error| invalid(error.to_string()))
}

fn validate_address(address: &str) -> Result<(), NameServerError> {
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid(format!(
            "address must be 1 to {MAX_ADDRESS_BYTES} bytes of host:port"
        )));
    }
    let without_scheme = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let valid = without_scheme.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|port| port != 0)
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
            })
    });
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("address {address:?} is not host:port")))
    }
}

impl NameServerHandler {
    fn known_principals(&self) -> std::sync::MutexGuard<'_, SessionPrincipals> {
        self.session_principals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn should_write_load(&self, key: &str) -> bool {
        let interval = Duration::from_millis(self.config.load_update_interval_ms);
        let Ok(mut written) = self.load_written_at.lock() else {
            return false;
        };
        let now = Instant::now();
        match written.get(key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                written.insert(key.to_string(), now);
                true
            }
        }
    }

    pub(super) fn forget_load(&self, key: &str) {
        if let Ok(mut written) = self.load_written_at.lock() {
            written.remove(key);
        }
    }

    pub(crate) async fn do_register(
        &self,
        request: RegisterNodeRequest,
        principal: &Principal,
    ) -> Result<RegisterNodeResponse, NameServerError> {
        let kind = node_kind(request.kind)?;
        validate_node_id(&request.node_id)?;
        validate_address(&request.address)?;
        if request.rack.len() > sluice_proto::limits::MAX_NAME_BYTES {
            return Err(invalid("rack name too long"));
        }
        let key = keys::node(kind, &request.node_id);
        let previous = self.store.get(&key).await?;
        let previous_info = previous
            .as_ref()
            .and_then(|entry| keys::decode::<NodeInfo>(&key, &entry.value).ok());
        if let Some(old) = &previous_info {
            check_node_principal(&key, &old.principal, principal, "register")?;
        }
        let lease = self.store.grant(self.config.lease_ttl_ms).await?;
        let info = NodeInfo {
            kind: kind as i32,
            node_id: request.node_id.clone(),
            address: request.address.clone(),
            session_id: lease as u64,
            load: request.load,
            lease_remaining_ms: 0,
            last_heartbeat_ms_ago: -1,
            rack: request.rack,
            principal: principal.to_string(),
        };
        let revision = self
            .store
            .put(&key, keys::encode(&info), Some(lease))
            .await?;
        self.session_written(&key, lease as u64, revision);
        self.known_principals()
            .learn(lease as u64, principal.as_str());
        if let Some(old) = previous_info {
            if lease_of(old.session_id) != lease {
                if let Err(error) = self.store.revoke(lease_of(old.session_id)).await {
                    tracing::warn!(%error, key, "could not revoke the previous session");
                }
            }
        }
        self.forget_load(&key);
        self.forget_down_node(kind, &request.node_id).await;
        tracing::info!(key, session = lease, address = %request.address, "node registered");
        Ok(RegisterNodeResponse {
            session_id: lease as u64,
            lease_ttl_ms: self.config.lease_ttl_ms,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            session_timeout_ms: self.config.session_timeout_ms,
        })
    }

    pub(crate) async fn do_heartbeat(
        &self,
        request: HeartbeatRequest,
        principal: &Principal,
    ) -> Result<HeartbeatResponse, NameServerError> {
        let kind = node_kind(request.kind)?;
        validate_node_id(&request.node_id)?;
        let session = request.session_id;
        let key = keys::node(kind, &request.node_id);
        let known = self.known_principals().of(session).map(str::to_string);
        if let Some(recorded) = known {
            check_node_principal(&key, &recorded, principal, "heartbeat")?;
        }
        // The node is talking to us: its silence clock restarts even if
        // the store cannot renew it now (ending later is always safe).
        self.session_heard(&key, session);
        let (entry, info) = self.renew_session(&key, session).await?;
        self.known_principals().learn(session, &info.principal);
        check_node_principal(&key, &info.principal, principal, "heartbeat")?;
        let revision = self.renew_in_monitor(&key, session, &entry).await?;
        if let Some(load) = request.load {
            self.record_load(&key, revision, info, load).await;
        }
        let mut response = HeartbeatResponse::default();
        if kind == NodeKind::Broker {
            response.live_stores =
                u32::try_from(self.live_stores().await?.len()).unwrap_or(u32::MAX);
            response.assignments = match self.cached_assignments(&request.node_id, session) {
                Some(assignments) => assignments,
                None => self.assignments_of(&request.node_id, session).await?,
            };
        }
        Ok(response)
    }

    /// The broker's assignments from the index kept by the metadata watch
    /// (ADR 0014): proportional to what the broker owns, not to the
    /// cluster. `None` until the index is first loaded.
    fn cached_assignments(
        &self,
        broker_id: &str,
        session: u64,
    ) -> Option<Vec<PartitionAssignment>> {
        let index = self.assignment_index.borrow().clone()?;
        Some(index.of(broker_id, session))
    }

    /// Keeps `session` alive and returns the node's registration under
    /// `key`; `SessionExpired` when the lease is gone or the key now
    /// belongs to another session.
    async fn renew_session(
        &self,
        key: &str,
        session: u64,
    ) -> Result<(KeyValue, NodeInfo), NameServerError> {
        match self.store.keep_alive(lease_of(session)).await {
            Ok(_) => {}
            Err(MetadataError::LeaseExpired(_)) => {
                return Err(NameServerError::SessionExpired(session))
            }
            Err(error) => return Err(error.into()),
        }
        let Some(entry) = self.store.get(key).await? else {
            self.session_gone(key, session);
            return Err(NameServerError::SessionExpired(session));
        };
        let info: NodeInfo = keys::decode(key, &entry.value)?;
        if info.session_id != session {
            self.session_gone(key, session);
            return Err(NameServerError::SessionExpired(session));
        }
        Ok((entry, info))
    }

    /// Writes a changed load report, at most once per
    /// `load_update_interval_ms` per node; losing a race only delays it.
    /// `revision` is the key's as this nameserver holds it; the write's new
    /// revision goes to the session monitor.
    async fn record_load(&self, key: &str, revision: i64, mut info: NodeInfo, load: NodeLoad) {
        if info.load.as_ref() == Some(&load) || !self.should_write_load(key) {
            return;
        }
        let lease = lease_of(info.session_id);
        let session = info.session_id;
        info.load = Some(load);
        let transaction = Transaction {
            compares: vec![Compare::ModRevisionEquals(key.to_string(), revision)],
            puts: vec![Put {
                key: key.to_string(),
                value: keys::encode(&info),
                lease: Some(lease),
            }],
            deletes: Vec::new(),
        };
        match self.store.commit_at(transaction).await {
            Ok(Some(written)) => self.session_written(key, session, written),
            Ok(None) => tracing::debug!(key, "load update lost a race"),
            Err(error) => tracing::debug!(%error, key, "load update failed"),
        }
    }

    /// The partitions `broker_id` owns in `session`, in (topic, partition)
    /// order, with their topics' configs.
    async fn assignments_of(
        &self,
        broker_id: &str,
        session: u64,
    ) -> Result<Vec<PartitionAssignment>, NameServerError> {
        let topics: HashMap<String, Topic> = self
            .all_topics()
            .await?
            .into_iter()
            .map(|(topic, _)| (topic.name.clone(), topic))
            .collect();
        let mut owned: Vec<((String, u32), PartitionOwner)> = self
            .owners(keys::PARTITIONS)
            .await?
            .into_iter()
            .filter(|(_, owner)| owner.broker_id == broker_id && owner.broker_session == session)
            .collect();
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        let mut assignments = Vec::new();
        for ((topic, partition), owner) in owned {
            let Some(record) = topics.get(&topic) else {
                continue;
            };
            assignments.push(PartitionAssignment {
                topic,
                partition,
                epoch: owner.epoch,
                config: record.config,
            });
        }
        Ok(assignments)
    }

    pub(crate) async fn do_deregister(
        &self,
        request: DeregisterNodeRequest,
        principal: &Principal,
    ) -> Result<(), NameServerError> {
        let kind = node_kind(request.kind)?;
        validate_node_id(&request.node_id)?;
        let key = keys::node(kind, &request.node_id);
        // Only the session that holds the key may end it.
        if let Some(entry) = self.store.get(&key).await? {
            let info: NodeInfo = keys::decode(&key, &entry.value)?;
            if info.session_id == request.session_id {
                check_node_principal(&key, &info.principal, principal, "deregister")?;
                self.store.revoke(lease_of(request.session_id)).await?;
                self.known_principals().forget(request.session_id);
                self.session_gone(&key, request.session_id);
                self.forget_load(&key);
                tracing::info!(key, "node deregistered");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        for good in [
            "127.0.0.1:7401",
            "broker-1.internal:80",
            "http://h:1",
            "[::1]:7401",
        ] {
            assert!(validate_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:99999",
            "a b:1",
            "h/x:1",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_brokers_and_stores_register() {
        assert_eq!(
            node_kind(NodeKind::Broker as i32).expect("broker"),
            NodeKind::Broker
        );
        assert_eq!(
            node_kind(NodeKind::Store as i32).expect("store"),
            NodeKind::Store
        );
        for refused in [NodeKind::Nameserver as i32, 0, 99] {
            assert!(node_kind(refused).is_err(), "{refused}");
        }
    }
}
