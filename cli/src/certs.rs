//! `sluice certs create`: a development certificate authority and the
//! certificates a TLS cluster needs (issue 13), written as PEM files:
//!
//! | file | what | used by |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the CA | `[tls] ca_file`, `client_ca_file`; `--tls-ca` |
//! | `node.pem`, `node.key` | one certificate naming every `--hosts` entry, for server and client use | every service's `[tls] cert_file`, `key_file`; nameservers' `[metadata] tls_cert_file`, `tls_key_file`; etcd's `--cert-file`, `--key-file` |
//! | `client.pem`, `client.key` | a client certificate (`CN=sluice-client`, or `--client-name`) | `--tls-cert`, `--tls-key` |
//!
//! Keys are written readable by their owner only. Existing files are never
//! overwritten unless `--force`; with `--if-missing` a complete set is kept
//! and `create` succeeds, so a container (the compose cluster's `certs`
//! service, which has no shell) can run it on every start. A partial set is
//! always refused: new keys beside old certificates would not match. For
//! production, use your own CA.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest validity `--valid-days` accepts (10 years).
pub const MAX_VALID_DAYS: u32 = 3650;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a development CA, a node certificate and a client certificate.
    Create(CreateArgs),
    /// Issue one more client certificate from the CA `create` made (its
    /// principal is `User:<name>`).
    Issue(IssueArgs),
}

#[derive(Args, Clone)]
pub struct IssueArgs {
    /// Directory holding the CA's `ca.pem` and `ca.key`.
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// The certificate's common name: the principal is `User:<name>`.
    #[arg(long)]
    pub name: String,
    /// Directory to write `<name>.pem` and `<name>.key` to.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Validity, in days (1 ..= 3650).
    #[arg(long, default_value_t = 365)]
    pub valid_days: u32,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Directory to write the files to (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Names and addresses the node certificate is valid for, comma
    /// separated: every host name or IP the services reach each other and
    /// clients reach them by.
    #[arg(long, default_value = "localhost,127.0.0.1")]
    pub hosts: String,
    /// Common name of the client certificate (`client.pem`): its principal
    /// is `User:<name>`.
    #[arg(long, default_value = DEFAULT_CLIENT_NAME)]
    pub client_name: String,
    /// Validity of every certificate, in days (1 ..= 3650).
    #[arg(long, default_value_t = 365)]
    pub valid_days: u32,
    /// Replace files that exist.
    #[arg(long, conflicts_with = "if_missing")]
    pub force: bool,
    /// Do nothing (and succeed) when every file exists already, so a
    /// container can run `create` on each start; a partial set is still
    /// an error.
    #[arg(long)]
    pub if_missing: bool,
}

/// Common name of the client certificate `create` makes unless
/// `--client-name` says otherwise.
pub const DEFAULT_CLIENT_NAME: &str = "sluice-client";

/// The files `create` writes, in its output directory.
const CREATED_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "node.pem",
    "node.key",
    "client.pem",
    "client.key",
];

/// What `create` does, given which of [`CREATED_FILES`] exist.
#[derive(Debug, PartialEq, Eq)]
enum CreatePlan {
    /// Write every file.
    Write,
    /// Every file exists and `--if-missing` was given: keep them.
    Keep,
    /// Refuse: this file exists (and it may not be replaced, or the set is
    /// partial).
    Refuse { existing: &'static str },
}

/// Pure decision of `create`: `--force` writes over anything;
/// `--if-missing` keeps a complete set and refuses a partial one (a
/// half-written set would pair keys with the wrong certificates); by
/// default any existing file is refused.
fn create_plan(exists: &[bool; 6], force: bool, if_missing: bool) -> CreatePlan {
    let first_existing = CREATED_FILES
        .iter()
        .zip(exists)
        .find(|(_, exists)| **exists)
        .map(|(name, _)| *name);
    match first_existing {
        None => CreatePlan::Write,
        Some(_) if force => CreatePlan::Write,
        Some(_) if if_missing && exists.iter().all(|exists| *exists) => CreatePlan::Keep,
        Some(existing) => CreatePlan::Refuse { existing },
    }
}

pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Create(args) => create(&args),
        CertsCommand::Issue(args) => issue(&args),
    }
}

fn validity(params: &mut CertificateParams, valid_days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(valid_days));
}

fn check_valid_days(valid_days: u32) -> Result<()> {
    if !(1..=MAX_VALID_DAYS).contains(&valid_days) {
        bail!("--valid-days must be 1 ..= {MAX_VALID_DAYS}, got {valid_days}");
    }
    Ok(())
}

/// A certificate's common name becomes a principal and a file name: only
/// letters, digits, '-', '_' and '.'.
fn check_name(flag: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("{flag} must be letters, digits, '-', '_' or '.', got {name:?}");
    }
    Ok(())
}

fn create(args: &CreateArgs) -> Result<()> {
    check_valid_days(args.valid_days)?;
    check_name("--client-name", &args.client_name)?;
    let hosts: Vec<String> = args
        .hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(str::to_string)
        .collect();
    if hosts.is_empty() {
        bail!("--hosts is empty: give the host names or IPs the services are reached by");
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let exists = CREATED_FILES.map(|name| args.out_dir.join(name).exists());
    match create_plan(&exists, args.force, args.if_missing) {
        CreatePlan::Write => {}
        CreatePlan::Keep => {
            println!(
                "kept the certificates in {} (every file exists)",
                args.out_dir.display()
            );
            return Ok(());
        }
        CreatePlan::Refuse { existing } => bail!(
            "{} exists; pass --force to replace the files{}",
            args.out_dir.join(existing).display(),
            if args.if_missing {
                " (--if-missing keeps only a complete set)"
            } else {
                ""
            }
        ),
    }

    let mut ca_params = ca_params(&ca_name(rand::random::<u32>()))?;
    validity(&mut ca_params, args.valid_days);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let (node_cert, node_key) = node_certificate(&hosts, args.valid_days, &issuer)?;
    let (client_cert, client_key) =
        client_certificate(&args.client_name, args.valid_days, &issuer)?;

    let out = &args.out_dir;
    write(&out.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&out.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write(&out.join("node.pem"), &node_cert.pem(), false)?;
    write(&out.join("node.key"), &node_key.serialize_pem(), true)?;
    write(&out.join("client.pem"), &client_cert.pem(), false)?;
    write(&out.join("client.key"), &client_key.serialize_pem(), true)?;
    let dir = out.display();
    println!(
        "wrote a development CA and certificates to {dir} (valid {} days; node names: {}; \
         client principal: User:{})\n\n\
         every service's config:\n  [tls]\n  enabled = true\n  cert_file = \"{dir}/node.pem\"\n  key_file = \"{dir}/node.key\"\n  ca_file = \"{dir}/ca.pem\"\n  client_ca_file = \"{dir}/ca.pem\"\n\n\
         etcd (when the node names include its host): etcd --cert-file {dir}/node.pem --key-file {dir}/node.key \
         --trusted-ca-file {dir}/ca.pem --client-cert-auth, https:// client URLs; the nameservers' config:\n  \
         [metadata]\n  endpoints = [\"https://127.0.0.1:2379\"]\n  tls_ca_file = \"{dir}/ca.pem\"\n  \
         tls_cert_file = \"{dir}/node.pem\"\n  tls_key_file = \"{dir}/node.key\"\n\n\
         clients:\n  sluice --tls-ca {dir}/ca.pem --tls-cert {dir}/client.pem --tls-key {dir}/client.key ...",
        args.valid_days,
        hosts.join(", "),
        args.client_name
    );
    Ok(())
}

/// The node certificate (`CN=sluice-node`, principal `User:sluice-node`):
/// valid for every one of `hosts`, for server and client use.
fn node_certificate(
    hosts: &[String],
    valid_days: u32,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sluice-node");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, valid_days);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, issuer)?;
    Ok((certificate, key))
}

/// The name of a development CA: unique per `create`, so a certificate of
/// another development CA is refused as signed by an unknown CA (a clear
/// TLS alert), not as a bad signature of a CA of the same name.
fn ca_name(unique: u32) -> String {
    format!("Sluice development CA {unique:08x}")
}

/// A development CA's parameters.
fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn client_certificate(
    name: &str,
    valid_days: u32,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, valid_days);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, issuer)?;
    Ok((certificate, key))
}

fn issue(args: &IssueArgs) -> Result<()> {
    check_valid_days(args.valid_days)?;
    check_name("--name", &args.name)?;
    let key_path = args.ca_dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let ca_path = args.ca_dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("cannot read the CA certificate {}", ca_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)
        .with_context(|| format!("{} is not a PEM CA certificate", ca_path.display()))?;
    let (certificate, key) = client_certificate(&args.name, args.valid_days, &issuer)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let cert_path = args.out_dir.join(format!("{}.pem", args.name));
    let key_path = args.out_dir.join(format!("{}.key", args.name));
    if !args.force {
        if let Some(existing) = [&cert_path, &key_path].into_iter().find(|p| p.exists()) {
            bail!("{} exists; pass --force to replace it", existing.display());
        }
    }
    write(&cert_path, &certificate.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    println!(
        "wrote {} and {} (principal User:{})",
        cert_path.display(),
        key_path.display(),
        args.name
    );
    Ok(())
}

/// Writes `contents` to `path`, readable by its owner only when `secret`.
fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;

    fn args(out_dir: PathBuf) -> CreateArgs {
        CreateArgs {
            out_dir,
            hosts: "localhost, 127.0.0.1".into(),
            client_name: DEFAULT_CLIENT_NAME.into(),
            valid_days: 1,
            force: false,
            if_missing: false,
        }
    }

    /// The principal a server works out from the certificate in `path`.
    fn principal_in(path: &Path) -> String {
        let certificate = CertificateDer::from_pem_file(path).expect("a PEM certificate");
        sluice_service::principal_of(Some(&[certificate])).to_string()
    }

    #[test]
    fn creates_the_files_once_and_keys_are_private() {
        let directory = tempfile::tempdir().expect("temp dir");
        let args = args(directory.path().join("tls"));
        create(&args).expect("created");
        for name in ["ca.pem", "node.pem", "client.pem"] {
            let text = std::fs::read_to_string(args.out_dir.join(name)).expect("read");
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
        }
        for name in ["ca.key", "node.key", "client.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(args.out_dir.join(name))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} is readable by others: {mode:o}");
        }
        assert_eq!(
            principal_in(&args.out_dir.join("node.pem")),
            "User:sluice-node"
        );
        assert_eq!(
            principal_in(&args.out_dir.join("client.pem")),
            "User:sluice-client"
        );
        let again = create(&args).expect_err("never overwrites");
        assert!(again.to_string().contains("--force"), "{again}");
        create(&CreateArgs {
            force: true,
            ..args
        })
        .expect("replaced with --force");
    }

    /// (subject, issuer) of the certificate in `path`.
    fn names_in(path: &Path) -> (String, String) {
        let certificate = CertificateDer::from_pem_file(path).expect("a PEM certificate");
        let (_, parsed) =
            x509_parser::parse_x509_certificate(certificate.as_ref()).expect("parses");
        (parsed.subject().to_string(), parsed.issuer().to_string())
    }

    #[test]
    fn every_ca_has_its_own_name_and_issue_signs_as_the_ca_it_is_given() {
        let directory = tempfile::tempdir().expect("temp dir");
        let first = args(directory.path().join("first"));
        let second = args(directory.path().join("second"));
        create(&first).expect("created");
        create(&second).expect("created");
        let (first_ca, _) = names_in(&first.out_dir.join("ca.pem"));
        let (second_ca, _) = names_in(&second.out_dir.join("ca.pem"));
        assert_ne!(first_ca, second_ca, "two development CAs share a name");
        issue(&IssueArgs {
            ca_dir: second.out_dir.clone(),
            name: "alice".into(),
            out_dir: directory.path().join("issued"),
            valid_days: 1,
            force: false,
        })
        .expect("issued");
        let (subject, issuer) = names_in(&directory.path().join("issued/alice.pem"));
        assert_eq!(issuer, second_ca);
        assert!(subject.contains("alice"), "{subject}");
        assert_eq!(names_in(&second.out_dir.join("node.pem")).1, second_ca);
    }

    #[test]
    fn if_missing_keeps_a_complete_set_and_refuses_a_partial_one() {
        let directory = tempfile::tempdir().expect("temp dir");
        let args = CreateArgs {
            client_name: "admin".into(),
            if_missing: true,
            ..args(directory.path().join("tls"))
        };
        create(&args).expect("created into an empty directory");
        assert_eq!(principal_in(&args.out_dir.join("client.pem")), "User:admin");
        let ca_before = std::fs::read(args.out_dir.join("ca.pem")).expect("read");
        create(&args).expect("kept");
        let ca_after = std::fs::read(args.out_dir.join("ca.pem")).expect("read");
        assert_eq!(ca_before, ca_after, "--if-missing replaced the CA");

        std::fs::remove_file(args.out_dir.join("node.key")).expect("remove");
        let partial = create(&args).expect_err("a partial set is refused");
        assert!(partial.to_string().contains("complete set"), "{partial}");
        assert!(
            !args.out_dir.join("node.key").exists(),
            "a refused create wrote a key"
        );
    }

    #[test]
    fn the_plan_follows_the_flags() {
        let none = [false; 6];
        let all = [true; 6];
        let some = [false, false, true, false, false, false];
        assert_eq!(create_plan(&none, false, false), CreatePlan::Write);
        assert_eq!(create_plan(&none, false, true), CreatePlan::Write);
        assert_eq!(
            create_plan(&all, false, false),
            CreatePlan::Refuse { existing: "ca.pem" }
        );
        assert_eq!(create_plan(&all, false, true), CreatePlan::Keep);
        assert_eq!(create_plan(&all, true, false), CreatePlan::Write);
        assert_eq!(
            create_plan(&some, false, true),
            CreatePlan::Refuse {
                existing: "node.pem"
            }
        );
        assert_eq!(create_plan(&some, true, false), CreatePlan::Write);
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        for (days, hosts, client_name) in [
            (0, "localhost", DEFAULT_CLIENT_NAME),
            (MAX_VALID_DAYS + 1, "localhost", DEFAULT_CLIENT_NAME),
            (30, " , ", DEFAULT_CLIENT_NAME),
            (30, "localhost", ""),
            (30, "localhost", "admin,O=evil"),
            (30, "localhost", "../admin"),
        ] {
            let args = CreateArgs {
                hosts: hosts.into(),
                client_name: client_name.into(),
                valid_days: days,
                ..args(directory.path().to_path_buf())
            };
            assert!(create(&args).is_err(), "{days} {hosts:?} {client_name:?}");
        }
        assert!(
            std::fs::read_dir(directory.path())
                .expect("list")
                .next()
                .is_none(),
            "a refused create wrote files"
        );
    }
}
