//! Scraping a service's Prometheus endpoint (`GET /metrics`) as a test
//! would: plain HTTP/1.1 over loopback, the body as text.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one scrape may take.
const SCRAPE_TIMEOUT_MS: u64 = 10_000;

/// The exposition text at `address` (`host:port`), or why not.
pub async fn try_scrape(address: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect {address}: {error}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|error| format!("write: {error}"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|error| format!("read: {error}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_millis(SCRAPE_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| format!("{address} did not answer within {SCRAPE_TIMEOUT_MS} ms"))??;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{address} answered {head}"));
    }
    Ok(body.to_string())
}

/// [`try_scrape`], panicking with the reason.
pub async fn scrape(address: &str) -> String {
    try_scrape(address)
        .await
        .unwrap_or_else(|error| panic!("scrape failed: {error}"))
}

/// The value of `name{labels}` summed over matching series (see
/// `sluice_telemetry::metrics::sample_value`).
pub fn value(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    sluice_telemetry::metrics::sample_value(exposition, name, labels)
}

/// The series names `text` (PromQL in a dashboard or rule file) refers
/// to: every identifier starting with `sluice_` or `process_`.
pub fn referenced_series(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut current = String::new();
    // A trailing non-identifier character ends the last word.
    for character in text.chars().chain(std::iter::once(' ')) {
        if character.is_ascii_alphanumeric() || character == '_' || character == ':' {
            current.push(character);
            continue;
        }
        if current.starts_with("sluice_") || current.starts_with("process_") {
            names.insert(current.clone());
        }
        current.clear();
    }
    names
}

/// The repository's `deploy/` files that name series: the Grafana
/// dashboard and the Prometheus alert rules, as (path, text).
pub fn deploy_files() -> Vec<(std::path::PathBuf, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    ["grafana/sluice.json", "prometheus/alerts.yml"]
        .iter()
        .map(|relative| {
            let path = root.join(relative);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
            (path, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_series_are_the_sluice_and_process_identifiers() {
        let names = referenced_series(
            "histogram_quantile(0.99, sum by (le) (rate(sluice_broker_produce_latency_seconds_bucket[5m])))\n\
             process_open_fds / process_max_fds > 0.8 and sluice_x:y\nSluiceAlert my_sluice_thing",
        );
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "process_max_fds",
                "process_open_fds",
                "sluice_broker_produce_latency_seconds_bucket",
                "sluice_x:y"
            ]
        );
    }

    #[test]
    fn the_deploy_files_name_series_and_the_dashboard_is_json() {
        for (path, text) in deploy_files() {
            assert!(
                referenced_series(&text).len() >= 10,
                "{} names too few series",
                path.display()
            );
        }
        // The dashboard must be JSON Grafana can import, with panels
        // whose queries name series.
        let (_, dashboard) = &deploy_files()[0];
        let dashboard: serde_json::Value = serde_json::from_str(dashboard).expect("valid JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        let queries = panels
            .iter()
            .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
            .filter(|target| {
                target["expr"]
                    .as_str()
                    .is_some_and(|expr| !referenced_series(expr).is_empty())
            })
            .count();
        assert!(queries >= 20, "{queries} queries");
    }
}
