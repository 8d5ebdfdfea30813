//! Bearer tokens (JWT) as client identities (issue 13): a cluster with
//! mutual TLS between services and `[auth.jwt]` on the nameserver and the
//! broker, its JWKS file written by the test. A client with TLS but no
//! client certificate, holding a valid token of `User:alice` whom an ACL
//! allows to write and read one topic, produces and reads back; expired,
//! tampered and wrong-audience tokens are refused NOT_AUTHENTICATED,
//! saying which, while alice keeps working; a JWKS without a key makes
//! that key's tokens refused within the reload interval, without a
//! restart; the CLI's `--token-file` works. A produce stream ends when
//! the token it was opened with expires: a client whose token file was
//! refreshed goes on with every record acknowledged once, one whose token
//! was not is refused.

use serde_json::{json, Value};
use sluice_client::{
    Admin, ClientConfig, ClientError, ClientTls, Credentials, Producer, ProducerConfig, Record,
};
use sluice_proto::ErrorCode;
use sluice_service::jwt_mint::{jwks, TestSigner};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::read_back::read_back;
use sluice_tests::security::{sluice_acl, until};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOPIC: &str = "tokens";
const RECORDS: u64 = 50;
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sluice-test";
const RELOAD_CHECK_INTERVAL_MS: u64 = 200;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(subject: &str) -> Value {
    json!({"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "exp": now_s() + 600, "iat": now_s()})
}

/// SDK settings: TLS trusting the cluster's CA, no client certificate,
/// and `token`.
fn with_token(cluster: &Cluster, token: String) -> ClientConfig {
    let ca = cluster.tls_dir().join("ca.pem");
    ClientConfig {
        tls: Some(ClientTls::from_files(ca, None::<(&str, &str)>).expect("ca")),
        credentials: Some(Credentials::Token(token)),
        request_timeout_ms: 3_000,
        ..cluster.client_config()
    }
}

async fn list_topics(config: ClientConfig) -> Result<Vec<String>, ClientError> {
    let topics = Admin::connect(config).await?.list_topics(false).await?;
    Ok(topics.into_iter().map(|topic| topic.name).collect())
}

/// The end of the topic's partition 0 as `config` asks its broker.
async fn broker_describes(config: ClientConfig) -> Result<(), ClientError> {
    let admin = Admin::connect(config).await?;
    admin
        .list_offsets(TOPIC, 0, sluice_proto::v1::OffsetSpec::Latest, 0)
        .await?;
    Ok(())
}

/// Produces `RECORDS` numbered records as `client`, once ACLs allow it.
async fn produce_as(client: &ClientConfig) {
    let producer = Producer::new(ProducerConfig {
        client: client.clone(),
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    for value in 0..RECORDS {
        producer
            .enqueue(Record::new(TOPIC, value.to_string()).with_partition(0))
            .await
            .expect("enqueue")
            .await
            .expect("acknowledged");
    }
    producer.close().await.expect("close");
}

/// The refusal of `config`'s token: NOT_AUTHENTICATED, containing `says`.
async fn assert_refused(config: ClientConfig, says: &str) {
    let refused = list_topics(config).await.expect_err("refused");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::NotAuthenticated),
        "{refused}"
    );
    let text = refused.to_string();
    assert!(text.contains(says), "'{says}' in: {text}");
}

fn write_jwks(path: &Path, signers: &[&TestSigner]) {
    // Written aside and renamed: the server never reads half a file.
    let aside = path.with_extension("new");
    std::fs::write(&aside, jwks(signers)).expect("write jwks");
    std::fs::rename(&aside, path).expect("rename jwks");
}

/// A TLS cluster with `[auth.jwt]` (plus `jwt_extra` in that section)
/// trusting `jwks_file`, the topic, and ACLs letting alice write, read
/// and describe it, in force on the broker; and alice's client with
/// `alice_token`.
async fn start_cluster(
    jwks_file: &Path,
    jwt_extra: &str,
    alice_token: String,
) -> (Cluster, ClientConfig) {
    let cluster = Cluster::start(ClusterSpec {
        tls: true,
        auth_config: format!(
            "[auth.jwt]\nenabled = true\njwks_file = \"{}\"\nissuer = \"{ISSUER}\"\n\
             audience = \"{AUDIENCE}\"\nreload_check_interval_ms = {RELOAD_CHECK_INTERVAL_MS}\n\
             {jwt_extra}",
            jwks_file.display()
        ),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, 1).await;
    for operation in ["Write", "Read", "Describe"] {
        sluice_acl(
            &cluster,
            &[
                "add",
                "--principal",
                "User:alice",
                "--operation",
                operation,
                "--topic",
                TOPIC,
            ],
        );
    }
    let alice = with_token(&cluster, alice_token);
    until("alice may describe her topic", async || {
        list_topics(alice.clone())
            .await
            .is_ok_and(|topics| topics == [TOPIC])
    })
    .await;
    // Brokers read the ACLs on their own schedule: the last one added is
    // in force there once alice may describe the topic at its broker.
    until("the broker has alice's ACLs", async || {
        broker_describes(alice.clone()).await.is_ok()
    })
    .await;
    (cluster, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_clients_without_certificates() {
    let keys = tempfile::tempdir().expect("dir");
    let jwks_file = keys.path().join("jwks.json");
    let (ed, rsa) = (TestSigner::ed25519("ed-1"), TestSigner::rs256("rsa-1"));
    write_jwks(&jwks_file, &[&ed, &rsa]);
    let (cluster, alice) = start_cluster(&jwks_file, "", ed.sign(&claims("alice"))).await;
    produce_as(&alice).await;
    let read = read_back(alice.clone(), TOPIC, 1).await;
    assert_eq!(
        read.at.len() as u64,
        RECORDS,
        "every record reads back as alice"
    );

    // Refused, saying why; alice goes on.
    let expired = with(claims("alice"), "exp", json!(now_s() - 3600));
    assert_refused(with_token(&cluster, ed.sign(&expired)), "expired").await;
    let good = ed.sign(&claims("alice"));
    let forged = ed.sign(&claims("admin"));
    let (head, rest) = good.split_once('.').expect("header");
    let signature = rest.rsplit('.').next().expect("signature");
    let forged_payload = forged.split('.').nth(1).expect("payload");
    let tampered = format!("{head}.{forged_payload}.{signature}");
    assert_refused(with_token(&cluster, tampered), "signature").await;
    let elsewhere = with(claims("alice"), "aud", json!("another-service"));
    assert_refused(with_token(&cluster, ed.sign(&elsewhere)), "audience").await;
    let stranger = TestSigner::ed25519("stranger");
    assert_refused(with_token(&cluster, stranger.sign(&claims("alice"))), "kid").await;
    assert_eq!(
        list_topics(alice.clone()).await.expect("alice is served"),
        [TOPIC]
    );

    // Neither token nor certificate: refused, told what to send.
    let anonymous = ClientConfig {
        credentials: None,
        ..alice.clone()
    };
    assert_refused(anonymous, "token").await;

    // The CLI with --token-file (an RSA key's token).
    let token_file = keys.path().join("token");
    std::fs::write(&token_file, rsa.sign(&claims("alice"))).expect("token file");
    let listed = cluster
        .cli_with_token(&token_file)
        .args(["topic", "list"])
        .output()
        .expect("run sluice topic list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(TOPIC));

    // Rotation: the JWKS without the Ed25519 key.
    write_jwks(&jwks_file, &[&rsa]);
    let took = until("ed-1's tokens are refused", async || {
        matches!(list_topics(alice.clone()).await, Err(error) if error.to_string().contains("kid"))
    })
    .await;
    eprintln!("JWKS rotation in force after {} ms", took.as_millis());
    assert!(
        took < Duration::from_millis(RELOAD_CHECK_INTERVAL_MS + 2_000),
        "within the reload interval: {took:?}"
    );
    let rsa_client = with_token(&cluster, rsa.sign(&claims("alice")));
    assert_eq!(
        list_topics(rsa_client).await.expect("rsa-1 still valid"),
        [TOPIC]
    );
    let cli = cluster
        .cli_with_token(&token_file)
        .args(["topic", "list"])
        .output()
        .expect("run sluice topic list");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A token file holding a token of alice valid `for_s` more seconds.
fn write_token(path: &Path, signer: &TestSigner, for_s: u64) {
    let claims = with(claims("alice"), "exp", json!(now_s() + for_s));
    let aside = path.with_extension("new");
    std::fs::write(&aside, signer.sign(&claims)).expect("write token");
    std::fs::rename(&aside, path).expect("rename token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let keys = tempfile::tempdir().expect("dir");
    let jwks_file = keys.path().join("jwks.json");
    let signer = TestSigner::ed25519("ed-1");
    write_jwks(&jwks_file, &[&signer]);
    let (cluster, alice) = start_cluster(
        &jwks_file,
        "max_clock_skew_ms = 0\n",
        signer.sign(&claims("alice")),
    )
    .await;
    let with_file = |path: &Path| ClientConfig {
        credentials: Some(Credentials::TokenFile(path.to_path_buf())),
        ..alice.clone()
    };

    // Refreshed: the token file is replaced long before the first token
    // expires; the stream opened with it ends then and is reopened with
    // the new one, and every record is acknowledged once, in order.
    let refreshed = keys.path().join("refreshed-token");
    write_token(&refreshed, &signer, 3);
    let producer = Producer::new(ProducerConfig {
        client: with_file(&refreshed),
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    let started = Instant::now();
    let mut produced = 0u64;
    while started.elapsed() < Duration::from_secs(6) {
        if produced == 3 {
            write_token(&refreshed, &signer, 600);
        }
        producer
            .enqueue(Record::new(TOPIC, produced.to_string()).with_partition(0))
            .await
            .expect("enqueue")
            .await
            .expect("acknowledged across the first token's expiry");
        produced += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    producer.close().await.expect("close");
    let read = read_back(alice.clone(), TOPIC, 1).await;
    let mut values: Vec<(u64, u64)> = read.at.iter().map(|(&(_, at), &v)| (at, v)).collect();
    values.sort();
    let in_order: Vec<u64> = values.into_iter().map(|(_, value)| value).collect();
    assert_eq!(
        in_order,
        (0..produced).collect::<Vec<_>>(),
        "once each, in order"
    );
    let broker_log = std::fs::read_to_string(cluster.brokers[0].log_path()).expect("broker log");
    assert!(
        broker_log.contains("stream ended: its token expired"),
        "the broker ended the first stream"
    );

    // Not refreshed: the stream opened with the token ends when it
    // expires, and the next produce is refused. (Were streams left open,
    // it would be acknowledged on the old one.)
    let stale = keys.path().join("stale-token");
    write_token(&stale, &signer, 2);
    let producer = Producer::new(ProducerConfig {
        client: with_file(&stale),
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    let send = |value: u64| {
        let producer = &producer;
        async move {
            producer
                .enqueue(Record::new(TOPIC, value.to_string()).with_partition(0))
                .await
                .expect("enqueue")
                .await
        }
    };
    send(produced)
        .await
        .expect("acknowledged while the token is valid");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = send(produced + 1).await.expect_err("the token has expired");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::NotAuthenticated),
        "{refused}"
    );
    assert!(refused.to_string().contains("expired"), "{refused}");
}
