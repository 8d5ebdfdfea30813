//! ACL bindings (issue 13): stored one key each under `acls/` (the key is
//! the binding's canonical text, so a binding is stored once however it
//! was written), listed whole. Every service reloads them every
//! `[auth] acl_refresh_interval_ms`.

use super::{invalid, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, MetadataStore, Put, Transaction};
use sluice_acl::{AclBinding, MAX_BINDINGS, MAX_BINDINGS_PER_REQUEST};
use sluice_proto::v1 as proto;

fn parse(bindings: &[proto::AclBinding]) -> Result<Vec<AclBinding>, NameServerError> {
    if bindings.is_empty() || bindings.len() > MAX_BINDINGS_PER_REQUEST {
        return Err(invalid(format!(
            "give 1 ..= {MAX_BINDINGS_PER_REQUEST} ACL bindings per request, got {}",
            bindings.len()
        )));
    }
    bindings
        .iter()
        .map(|wire| AclBinding::try_from(wire).map_err(|error| invalid(error.to_string())))
        .collect()
}

/// Every stored binding (undecodable ones skipped with a warning).
pub(crate) async fn read_acls(
    store: &dyn MetadataStore,
) -> Result<Vec<proto::AclBinding>, NameServerError> {
    let mut bindings = Vec::new();
    for entry in store.range(keys::ACLS).await? {
        match keys::decode::<proto::AclBinding>(&entry.key, &entry.value) {
            Ok(binding) => bindings.push(binding),
            Err(error) => tracing::warn!(%error, "skipping an undecodable ACL binding"),
        }
    }
    Ok(bindings)
}

impl NameServerHandler {
    /// Adds `bindings`; returns how many were new.
    pub(crate) async fn do_create_acls(
        &self,
        bindings: &[proto::AclBinding],
    ) -> Result<u32, NameServerError> {
        let bindings = parse(bindings)?;
        let stored = self.store.range(keys::ACLS).await?.len();
        if stored + bindings.len() > MAX_BINDINGS {
            return Err(invalid(format!(
                "the cluster holds {stored} ACL bindings; at most {MAX_BINDINGS}"
            )));
        }
        let mut created = 0;
        for binding in &bindings {
            let key = keys::acl(binding);
            let wire = proto::AclBinding::from(binding);
            // Absent compare: creating twice keeps one.
            let new = self
                .store
                .commit(Transaction {
                    compares: vec![Compare::Absent(key.clone())],
                    puts: vec![Put::new(key, keys::encode(&wire))],
                    deletes: Vec::new(),
                })
                .await?;
            if new {
                tracing::info!(target: "sluice_audit", %binding, "ACL created");
                created += 1;
            }
        }
        Ok(created)
    }

    pub(crate) async fn do_list_acls(&self) -> Result<Vec<proto::AclBinding>, NameServerError> {
        read_acls(self.store.as_ref()).await
    }

    /// Removes exactly `bindings`; returns how many existed.
    pub(crate) async fn do_delete_acls(
        &self,
        bindings: &[proto::AclBinding],
    ) -> Result<u32, NameServerError> {
        let mut deleted = 0;
        for binding in parse(bindings)? {
            if self.store.delete(&keys::acl(&binding)).await? {
                tracing::info!(target: "sluice_audit", %binding, "ACL deleted");
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
