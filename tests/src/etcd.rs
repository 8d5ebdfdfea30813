//! A real `etcd` for tests: spawned on free loopback ports in a temporary
//! directory, killed and cleaned up on drop.
//!
//! If the binary is missing the test fails and says how to install it; it
//! never skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a freshly spawned etcd gets to accept connections.
const STARTUP_TIMEOUT_MS: u64 = 20_000;

/// A running single-member etcd.
pub struct Etcd {
    child: Child,
    client_url: String,
    _data_dir: tempfile::TempDir,
}

/// Picks a port the OS reports free on 127.0.0.1. Another process may take
/// it before we bind it; spawns retry on a fresh port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener
        .local_addr()
        .expect("ephemeral listener has an address")
        .port()
}

/// The etcd binary: `SLUICE_TEST_ETCD` or `etcd` on PATH.
pub fn etcd_binary() -> PathBuf {
    let binary = std::env::var_os("SLUICE_TEST_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"));
    match Command::new(&binary).arg("--version").output() {
        Ok(output) if output.status.success() => binary,
        _ => panic!(
            "etcd is required by this test but `{}` could not be run. Install it \
             (Debian/Ubuntu: `apt-get install etcd-server`) or set SLUICE_TEST_ETCD to its path.",
            binary.display()
        ),
    }
}

impl Etcd {
    /// Starts etcd and waits until it answers on its client port.
    pub fn start() -> Self {
        let binary = etcd_binary();
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let data_dir = tempfile::tempdir().expect("create a temp dir for etcd");
            let client_port = free_port();
            let peer_port = free_port();
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let log =
                std::fs::File::create(data_dir.path().join("etcd.log")).expect("create etcd log");
            let mut child = Command::new(&binary)
                .arg("--name")
                .arg("test")
                .arg("--data-dir")
                .arg(data_dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(&peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .arg("--initial-cluster")
                .arg(format!("test={peer_url}"))
                // Tests write little; keep etcd light on a 2-core machine.
                .arg("--quota-backend-bytes")
                .arg("1073741824")
                .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|error| panic!("failed to spawn {}: {error}", binary.display()));
            let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "etcd exited with {status}: {}",
                        std::fs::read_to_string(data_dir.path().join("etcd.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", client_port)).is_ok() {
                    return Self {
                        child,
                        client_url,
                        _data_dir: data_dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!(
                        "etcd did not listen on {client_url} within {STARTUP_TIMEOUT_MS} ms"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start etcd: {last_error}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
