//! A service's metrics endpoint (`[metrics] listen_address`) and the
//! series every server exports about its connections.

use crate::server::ServerLimits;
use sluice_telemetry::metrics::{process, serve, GaugeFn, MetricsConfig, MetricsRegistry};
use std::net::SocketAddr;

/// The HTTP endpoint serving a registry; stops when dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    task: tokio::task::JoinHandle<()>,
    /// Where it listens (the bound port when configured with port 0).
    pub address: SocketAddr,
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `[metrics] listen_address` and serves `registry` there, with the
/// process series (memory, open files) added; `None` when no address is
/// configured. A bind failure is an error naming the address.
pub async fn start_metrics_endpoint(
    config: &MetricsConfig,
    registry: &MetricsRegistry,
) -> Result<Option<MetricsEndpoint>, String> {
    if !config.enabled() {
        return Ok(None);
    }
    let address = config.listen_address.trim();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot bind [metrics] listen_address {address}: {error}"))?;
    let bound = listener
        .local_addr()
        .map_err(|error| format!("[metrics] listener has no address: {error}"))?;
    process::register(registry);
    let task = tokio::spawn(serve(
        listener,
        registry.clone(),
        std::future::pending::<()>(),
    ));
    tracing::info!(address = %bound, "metrics endpoint serving /metrics");
    Ok(Some(MetricsEndpoint {
        task,
        address: bound,
    }))
}

/// The ranges of `[metrics]` keys, for a service's `ranges()`.
pub fn metrics_ranges(config: &MetricsConfig) -> Vec<crate::KeyRange> {
    vec![crate::KeyRange::new(
        "[metrics] max_label_values",
        config.max_label_values,
        0,
        u64::from(sluice_telemetry::metrics::MAX_LABEL_VALUES),
    )]
}

impl ServerLimits {
    /// Registers `<prefix>_connections_open`, `<prefix>_streams_open` and
    /// `<prefix>_inflight_request_bytes` (read at scrape time).
    pub fn register_metrics(&self, registry: &MetricsRegistry, prefix: &str) {
        let limits = self.clone();
        registry.register(
            &format!("{prefix}_connections_open"),
            "Client connections being served",
            GaugeFn::new(move || limits.open_connections() as f64),
        );
        let limits = self.clone();
        registry.register(
            &format!("{prefix}_streams_open"),
            "gRPC streams open over all connections",
            GaugeFn::new(move || limits.open_streams() as f64),
        );
        let limits = self.clone();
        registry.register(
            &format!("{prefix}_inflight_request_bytes"),
            "Request message bytes in progress over all connections",
            GaugeFn::new(move || limits.inflight_request_bytes() as f64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_address_no_endpoint_and_a_bad_address_is_named() {
        let registry = MetricsRegistry::new();
        let none = start_metrics_endpoint(&MetricsConfig::default(), &registry)
            .await
            .expect("no endpoint is fine");
        assert!(none.is_none());
        let error = start_metrics_endpoint(
            &MetricsConfig {
                listen_address: "not-an-address".to_string(),
                ..MetricsConfig::default()
            },
            &registry,
        )
        .await
        .expect_err("refused");
        assert!(
            error.contains("[metrics] listen_address not-an-address"),
            "{error}"
        );
    }

    #[test]
    fn max_label_values_beyond_its_range_is_refused_by_name() {
        let at = |value| {
            crate::out_of_range(&metrics_ranges(&MetricsConfig {
                max_label_values: value,
                ..MetricsConfig::default()
            }))
        };
        assert!(at(0).is_empty());
        assert!(at(sluice_telemetry::metrics::MAX_LABEL_VALUES).is_empty());
        let refused = at(sluice_telemetry::metrics::MAX_LABEL_VALUES + 1);
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].contains("[metrics] max_label_values"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn the_endpoint_serves_process_and_connection_series() {
        let registry = MetricsRegistry::new();
        let limits = ServerLimits::new(&crate::ConnectionsConfig::default());
        limits.register_metrics(&registry, "sluice_test");
        let endpoint = start_metrics_endpoint(
            &MetricsConfig {
                listen_address: "127.0.0.1:0".to_string(),
                ..MetricsConfig::default()
            },
            &registry,
        )
        .await
        .expect("binds")
        .expect("configured");
        let text = registry.encode().expect("encodes");
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "sluice_test_connections_open",
            "sluice_test_streams_open",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name}:\n{text}");
        }
        assert_ne!(endpoint.address.port(), 0);
    }
}
