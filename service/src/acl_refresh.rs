//! Keeps a server's ACLs current: reads them every
//! `[auth] acl_refresh_interval_ms` (from the nameservers, or on a
//! nameserver from its metadata store) and hands changed ones to the
//! [`AuthorizationLayer`]. A read that fails keeps the ACLs in use (logged
//! once until a read works again); a binding that does not parse is
//! skipped with a warning, never the whole set.

use crate::authorization::AuthorizationLayer;
use crate::peer_tls::PeerTls;
use sluice_acl::AclBinding;
use sluice_proto::v1 as proto;
use sluice_proto::v1::name_server_client::NameServerClient;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Runs until `stop` turns true.
pub async fn run<F, Fut>(
    layer: AuthorizationLayer,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    mut read: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<proto::AclBinding>, String>>,
{
    let mut failing = false;
    loop {
        match read().await {
            Ok(wire) => {
                if failing {
                    tracing::info!("ACLs read again");
                    failing = false;
                }
                let bindings = parse(&wire);
                if bindings != layer.bindings() {
                    tracing::info!(bindings = bindings.len(), "ACLs changed");
                    layer.replace_bindings(bindings);
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot read the ACLs; deciding with the last ones read");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// The bindings that parse, sorted as the authoriser keeps them.
fn parse(wire: &[proto::AclBinding]) -> Vec<AclBinding> {
    let mut bindings: Vec<AclBinding> = wire
        .iter()
        .filter_map(|binding| match AclBinding::try_from(binding) {
            Ok(binding) => Some(binding),
            Err(error) => {
                tracing::warn!(%error, "skipping an ACL binding that does not parse");
                None
            }
        })
        .collect();
    bindings.sort();
    bindings.dedup();
    bindings
}

/// Reads the ACLs from the first of `nameservers` that answers.
pub async fn read_from_nameservers(
    nameservers: &[String],
    peer_tls: &PeerTls,
    timeout: Duration,
) -> Result<Vec<proto::AclBinding>, String> {
    let mut last = String::from("no nameservers configured");
    for address in nameservers {
        let endpoint = peer_tls
            .endpoint(address)?
            .configure(|endpoint| endpoint.connect_timeout(timeout).timeout(timeout));
        let attempt = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|error| error.to_string())?;
            NameServerClient::new(channel)
                .list_acls(proto::ListAclsRequest {})
                .await
                .map(|answer| answer.into_inner().bindings)
                .map_err(|status| status.message().to_string())
        };
        match attempt.await {
            Ok(bindings) => return Ok(bindings),
            Err(error) => last = format!("{address}: {error}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth_config::AuthConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn wire(principal: &str) -> proto::AclBinding {
        proto::AclBinding {
            principal: principal.into(),
            host: "*".into(),
            operation: "Describe".into(),
            permission: "Allow".into(),
            resource_type: "Cluster".into(),
            resource_name: "sluice-cluster".into(),
            pattern_type: "Literal".into(),
        }
    }

    #[tokio::test]
    async fn changes_are_applied_failures_keep_the_last_and_bad_bindings_are_skipped() {
        let layer = AuthorizationLayer::new(&AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        })
        .expect("valid");
        let (stop, stopped) = watch::channel(false);
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let interval = Duration::from_millis(200);
        let task = tokio::spawn(run(layer.clone(), interval, stopped, move || {
            let round = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match round {
                    0 => Ok(vec![wire("User:alice"), wire("not a principal")]),
                    1..=3 => Err("nameserver down".to_string()),
                    _ => Ok(vec![wire("User:bob")]),
                }
            }
        }));
        let principals = |layer: &AuthorizationLayer| -> Vec<String> {
            layer
                .bindings()
                .iter()
                .map(|binding| binding.principal.to_string())
                .collect()
        };
        let deadline = Duration::from_secs(10);
        sluice_proto::test_util::eventually_true("three reads", deadline, || {
            reads.load(Ordering::SeqCst) >= 3
        })
        .await;
        assert_eq!(
            principals(&layer),
            ["User:alice"],
            "kept through failed reads"
        );
        sluice_proto::test_util::eventually_true("bob's binding", deadline, || {
            principals(&layer) == ["User:bob"]
        })
        .await;
        stop.send_replace(true);
        task.await.expect("stops");
    }
}
