use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TopicCounters = Family<Vec<(&'static str, String)>, Counter>;

fn example_registry() -> (MetricsRegistry, TopicCounters) {
    let registry = MetricsRegistry::new();
    let bytes: TopicCounters = Family::default();
    registry.register("sluice_test_bytes_in", "Bytes in", bytes.clone());
    let latency = AtomicHistogram::latency_seconds();
    registry.register("sluice_test_latency_seconds", "Latency", latency.clone());
    registry.register("sluice_test_up", "Constant", GaugeFn::new(|| 1.0));
    latency.observe(0.002);
    bytes
        .get_or_create(&vec![("topic", "orders".to_string())])
        .inc_by(7);
    (registry, bytes)
}

#[test]
fn the_exposition_names_counters_histograms_and_gauges_with_their_suffixes() {
    let (registry, _) = example_registry();
    let text = registry.encode().expect("encode");
    let names = exposed_sample_names(&text);
    for wanted in [
        "sluice_test_bytes_in_total",
        "sluice_test_latency_seconds_bucket",
        "sluice_test_latency_seconds_count",
        "sluice_test_up",
    ] {
        assert!(names.contains(wanted), "{wanted} not in {names:?}\n{text}");
    }
    assert_eq!(
        sample_value(&text, "sluice_test_bytes_in_total", "topic=\"orders\""),
        Some(7.0)
    );
    assert_eq!(
        sample_value(&text, "sluice_test_latency_seconds_count", ""),
        Some(1.0)
    );
    assert_eq!(sample_value(&text, "sluice_test_up", ""), Some(1.0));
    assert_eq!(sample_value(&text, "sluice_test_absent", ""), None);
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn config_defaults_to_no_endpoint() {
    let config = MetricsConfig::default();
    assert!(!config.enabled());
    assert!(MetricsConfig {
        listen_address: "127.0.0.1:0".to_string(),
        ..config
    }
    .enabled());
    assert!(!MetricsConfig {
        listen_address: "  ".to_string(),
        ..MetricsConfig::default()
    }
    .enabled());
}

async fn http(address: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut answer),
    )
    .await
    .expect("answered in time")
    .expect("read");
    answer
}

#[tokio::test]
async fn the_endpoint_serves_get_metrics_and_refuses_the_rest() {
    let (registry, bytes) = example_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, registry, async move {
        let _ = stopped.await;
    }));
    let close = "Host: x\r\nConnection: close\r\n\r\n";
    let answer = http(address, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(CONTENT_TYPE), "{answer}");
    assert!(
        answer.contains("sluice_test_bytes_in_total{topic=\"orders\"} 7"),
        "{answer}"
    );
    // A series recorded after the first scrape shows in the next.
    bytes
        .get_or_create(&vec![("topic", "orders".to_string())])
        .inc();
    let answer = http(address, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
    assert!(
        answer.contains("sluice_test_bytes_in_total{topic=\"orders\"} 8"),
        "{answer}"
    );
    let answer = http(address, &format!("GET / HTTP/1.1\r\n{close}")).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = http(address, &format!("POST /metrics HTTP/1.1\r\n{close}")).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let answer = http(address, "garbage\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
        "{answer}"
    );
    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
}

#[tokio::test]
async fn scrapers_beyond_the_bound_are_closed_at_accept_and_served_again_later() {
    let (registry, _) = example_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(serve(listener, registry, std::future::pending::<()>()));
    // Silent scrapers holding every slot.
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        silent.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
    }
    // Let the server accept them all before the next one.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // One beyond the bound is closed unanswered (EOF, or a reset when the
    // request was unread).
    let mut extra = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let _ = extra
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        extra.read_to_string(&mut answer),
    )
    .await
    .expect("closed in time");
    assert!(read.is_err() || answer.is_empty(), "answered: {answer}");
    // Their slots come back when they go away.
    drop(silent);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = http(
            address,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served again: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.abort();
}
