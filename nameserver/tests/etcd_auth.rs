//! The etcd store against a real etcd serving mutual TLS with its own
//! authentication on (`[metadata] user`, `password_file`): the right
//! password reads and writes under the key prefix; a wrong one stops
//! `connect` naming `password_file`; a user of an etcd without
//! authentication is told to enable it.

mod common;

use common::etcd::{EtcdCluster, EtcdTls};
use etcd_client::{Client, ConnectOptions, Identity, Permission, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use sluice_nameserver::metadata::{
    EtcdMetadataStore, EtcdOptions, EtcdSecurity, MetadataError, MetadataStore, DEFAULT_KEY_PREFIX,
};
use std::path::Path;

/// A CA, and one certificate for 127.0.0.1 signed by it (etcd's, and the
/// nameserver's client certificate), written to `dir`.
fn certificates(dir: &Path) -> EtcdTls {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let mut node = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("node params");
    node.distinguished_name
        .push(DnType::CommonName, "sluice-node");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_key = KeyPair::generate().expect("node key");
    let issuer = Issuer::new(ca, ca_key);
    let node_cert = node
        .signed_by(&node_key, &issuer)
        .expect("node certificate");
    let tls = EtcdTls {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("node.pem"),
        key_file: dir.join("node.key"),
    };
    std::fs::write(&tls.ca_file, ca_cert.pem()).expect("write");
    std::fs::write(&tls.cert_file, node_cert.pem()).expect("write");
    std::fs::write(&tls.key_file, node_key.serialize_pem()).expect("write");
    tls
}

async fn admin(etcd: &EtcdCluster, tls: &EtcdTls) -> Client {
    let read = |path: &Path| std::fs::read(path).expect("read certificate");
    let options = TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_file)))
        .identity(Identity::from_pem(
            read(&tls.cert_file),
            read(&tls.key_file),
        ));
    Client::connect(
        etcd.client_urls(),
        Some(ConnectOptions::new().with_tls(options)),
    )
    .await
    .expect("admin client")
}

/// Root (needed to enable authentication) and `sluice`, allowed the key
/// prefix; then authentication on.
async fn enable_authentication(client: &mut Client) {
    client
        .user_add("root", "root-pw", None)
        .await
        .expect("root");
    client.role_add("root").await.expect("root role");
    client
        .user_grant_role("root", "root")
        .await
        .expect("root grant");
    client
        .user_add("sluice", "s3cret", None)
        .await
        .expect("user");
    client.role_add("sluice").await.expect("role");
    client
        .role_grant_permission(
            "sluice",
            Permission::read_write(DEFAULT_KEY_PREFIX).with_prefix(),
        )
        .await
        .expect("grant");
    client
        .user_grant_role("sluice", "sluice")
        .await
        .expect("grant role");
    client.auth_enable().await.expect("auth enable");
}

async fn connect(
    etcd: &EtcdCluster,
    tls: &EtcdTls,
    password_file: &Path,
) -> Result<EtcdMetadataStore, MetadataError> {
    EtcdMetadataStore::connect(EtcdOptions {
        endpoints: etcd.client_urls(),
        connect_timeout_ms: 3_000,
        request_timeout_ms: 3_000,
        key_prefix: DEFAULT_KEY_PREFIX.to_string(),
        security: EtcdSecurity {
            tls_ca_file: Some(tls.ca_file.clone()),
            tls_cert_file: Some(tls.cert_file.clone()),
            tls_key_file: Some(tls.key_file.clone()),
            tls_reload_check_interval_ms: 1_000,
            user: Some("sluice".to_string()),
            password_file: Some(password_file.to_path_buf()),
        },
    })
    .await
}

#[tokio::test]
async fn a_user_with_its_password_file_reads_and_writes_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = certificates(dir.path());
    let etcd = EtcdCluster::start_with(1, Some(tls.clone()));
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret\n").expect("write");

    // Authentication off: the user is refused, saying so.
    let error = connect(&etcd, &tls, &password_file)
        .await
        .err()
        .expect("etcd without authentication");
    assert!(error.to_string().contains("auth enable"), "{error}");

    enable_authentication(&mut admin(&etcd, &tls).await).await;
    let store = connect(&etcd, &tls, &password_file)
        .await
        .expect("the right password");
    store
        .put("topics/orders", b"v".to_vec(), None)
        .await
        .expect("put");
    let read = store.get("topics/orders").await.expect("get");
    assert_eq!(read.map(|kv| kv.value), Some(b"v".to_vec()));

    std::fs::write(&password_file, "wrong\n").expect("write");
    let error = connect(&etcd, &tls, &password_file)
        .await
        .err()
        .expect("a wrong password");
    assert!(error.to_string().contains("password_file"), "{error}");
}
