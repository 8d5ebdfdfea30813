//! `sluice certs create`: a development certificate authority and the
//! certificates a TLS cluster needs (issue 13), written as PEM files:
//!
//! | file | what | used by |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the CA | `[tls] ca_file`, `client_ca_file`; `--tls-ca` |
//! | `node.pem`, `node.key` | one certificate naming every `--hosts` entry, for server and client use | every service's `[tls] cert_file`, `key_file` |
//! | `client.pem`, `client.key` | a client certificate (`CN=sluice-client`) | `--tls-cert`, `--tls-key` |
//!
//! Keys are written readable by their owner only. Existing files are never
//! overwritten unless `--force`. For production, use your own CA.

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
    /// Validity of every certificate, in days (1 ..= 3650).
    #[arg(long, default_value_t = 365)]
    pub valid_days: u32,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
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

fn create(args: &CreateArgs) -> Result<()> {
    if !(1..=MAX_VALID_DAYS).contains(&args.valid_days) {
        bail!(
            "--valid-days must be 1 ..= {MAX_VALID_DAYS}, got {}",
            args.valid_days
        );
    }
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
    let names = [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "client.pem",
        "client.key",
    ];
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    if !args.force {
        if let Some(existing) = names
            .iter()
            .map(|name| args.out_dir.join(name))
            .find(|p| p.exists())
        {
            bail!(
                "{} exists; pass --force to replace the files",
                existing.display()
            );
        }
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Sluice development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, args.valid_days);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let mut node_params = CertificateParams::new(hosts.clone())?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, "sluice-node");
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut node_params, args.valid_days);
    let node_key = KeyPair::generate()?;
    let node_cert = node_params.signed_by(&node_key, &issuer)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "sluice-client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client_params, args.valid_days);
    let client_key = KeyPair::generate()?;
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    let out = &args.out_dir;
    write(&out.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&out.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write(&out.join("node.pem"), &node_cert.pem(), false)?;
    write(&out.join("node.key"), &node_key.serialize_pem(), true)?;
    write(&out.join("client.pem"), &client_cert.pem(), false)?;
    write(&out.join("client.key"), &client_key.serialize_pem(), true)?;
    let dir = out.display();
    println!(
        "wrote a development CA and certificates to {dir} (valid {} days; node names: {})\n\n\
         every service's config:\n  [tls]\n  enabled = true\n  cert_file = \"{dir}/node.pem\"\n  key_file = \"{dir}/node.key\"\n  ca_file = \"{dir}/ca.pem\"\n  client_ca_file = \"{dir}/ca.pem\"\n\n\
         clients:\n  sluice --tls-ca {dir}/ca.pem --tls-cert {dir}/client.pem --tls-key {dir}/client.key ...",
        args.valid_days,
        hosts.join(", ")
    );
    Ok(())
}

/// The development CA's parameters (the same on every run, so `issue`
/// can sign with a CA `create` made).
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Sluice development CA");
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
    if !(1..=MAX_VALID_DAYS).contains(&args.valid_days) {
        bail!(
            "--valid-days must be 1 ..= {MAX_VALID_DAYS}, got {}",
            args.valid_days
        );
    }
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "--name must be letters, digits, '-', '_' or '.', got {:?}",
            args.name
        );
    }
    let key_path = args.ca_dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let params = ca_params()?;
    let issuer = Issuer::from_params(&params, &ca_key);
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

    #[test]
    fn creates_the_files_once_and_keys_are_private() {
        let directory = tempfile::tempdir().expect("temp dir");
        let args = CreateArgs {
            out_dir: directory.path().join("tls"),
            hosts: "localhost, 127.0.0.1".into(),
            valid_days: 1,
            force: false,
        };
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
        let again = create(&args).expect_err("never overwrites");
        assert!(again.to_string().contains("--force"), "{again}");
        create(&CreateArgs {
            force: true,
            ..args
        })
        .expect("replaced with --force");
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        for (days, hosts) in [
            (0, "localhost"),
            (MAX_VALID_DAYS + 1, "localhost"),
            (30, " , "),
        ] {
            let args = CreateArgs {
                out_dir: directory.path().to_path_buf(),
                hosts: hosts.into(),
                valid_days: days,
                force: false,
            };
            assert!(create(&args).is_err(), "{days} {hosts:?}");
        }
    }
}
