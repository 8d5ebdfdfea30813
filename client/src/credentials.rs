//! Credentials of the SDK (issue 13): a bearer token (JWT) sent as gRPC
//! metadata `authorization: Bearer <token>` with every request to every
//! server, beside the trace context.
//!
//! Rules:
//! - A token file is read when the client connects (a file that cannot be
//!   read is an error then) and looked at again (size and modification
//!   time) at most every [`TOKEN_FILE_CHECK_INTERVAL_MS`], on a request; a
//!   changed file is read again, so a sidecar can rotate short-lived
//!   tokens. A changed file that cannot be read, is empty or is not a
//!   valid metadata value keeps the last token, with a warning.
//! - A token file larger than [`MAX_TOKEN_FILE_BYTES`] is refused.
//! - A token authenticates each request (and each stream when it opens):
//!   a server ends a stream when the token it was opened with expires
//!   (CREDENTIALS_EXPIRED, retriable), and the SDK opens a new one with
//!   the current token.
//! - The token is never printed (`Debug` shows its length).

use crate::error::ClientError;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tonic::metadata::{Ascii, MetadataValue};

/// Least time between two looks at a token file, in milliseconds.
pub const TOKEN_FILE_CHECK_INTERVAL_MS: u64 = 1000;
/// Largest token file read, in bytes.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// What proves the client's identity besides a TLS client certificate.
///
/// ```
/// let config = sluice_client::ClientConfig {
///     credentials: Some(sluice_client::Credentials::TokenFile("/run/secrets/sluice-token".into())),
///     ..Default::default()
/// };
/// # let _ = config;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A bearer token (JWT), sent as it is.
    Token(String),
    /// A file holding a bearer token (surrounding whitespace ignored),
    /// read again when it changes.
    TokenFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(token) => write!(f, "Token({} bytes)", token.len()),
            Self::TokenFile(path) => f.debug_tuple("TokenFile").field(path).finish(),
        }
    }
}

type Header = MetadataValue<Ascii>;
type Stamp = Option<(u64, SystemTime)>;

fn header_of(token: &str) -> Result<Header, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token has characters not allowed in gRPC metadata".to_string())
}

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

fn read_token(path: &Path) -> Result<Header, String> {
    let file = std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_TOKEN_FILE_BYTES} bytes",
            path.display()
        ));
    }
    header_of(&text).map_err(|error| format!("{}: {error}", path.display()))
}

pub(crate) struct FileState {
    header: Header,
    stamp: Stamp,
    looked_at: Instant,
}

/// The `authorization` value to send, kept current.
pub(crate) enum TokenSource {
    Fixed(Header),
    File {
        path: PathBuf,
        interval: Duration,
        state: Mutex<FileState>,
    },
}

impl TokenSource {
    pub fn new(credentials: &Credentials) -> Result<Self, ClientError> {
        let invalid = |error: String| ClientError::InvalidArgument(format!("credentials: {error}"));
        match credentials {
            Credentials::Token(token) => Ok(Self::Fixed(header_of(token).map_err(invalid)?)),
            Credentials::TokenFile(path) => {
                let stamp = stamp(path);
                let header = read_token(path).map_err(invalid)?;
                Ok(Self::File {
                    path: path.clone(),
                    interval: Duration::from_millis(TOKEN_FILE_CHECK_INTERVAL_MS),
                    state: Mutex::new(FileState {
                        header,
                        stamp,
                        looked_at: Instant::now(),
                    }),
                })
            }
        }
    }

    /// The value to send now.
    pub fn header(&self) -> Header {
        match self {
            Self::Fixed(header) => header.clone(),
            Self::File {
                path,
                interval,
                state,
            } => current(path, *interval, state),
        }
    }
}

/// The token of `path`, read again if it changed and it is time to look.
fn current(path: &Path, interval: Duration, state: &Mutex<FileState>) -> Header {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    if state.looked_at.elapsed() >= interval {
        state.looked_at = Instant::now();
        let now = stamp(path);
        if now != state.stamp {
            match read_token(path) {
                Ok(header) => {
                    tracing::debug!(path = %path.display(), "token file changed; sending its token");
                    state.header = header;
                    state.stamp = now;
                }
                Err(error) => {
                    tracing::warn!(%error, "the changed token file cannot be used; still sending the previous token");
                }
            }
        }
    }
    state.header.clone()
}

/// Adds the trace context and, with credentials, the token to every
/// request.
#[derive(Clone)]
pub(crate) struct RequestInterceptor {
    pub token: Option<Arc<TokenSource>>,
}

impl tonic::service::Interceptor for RequestInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = sluice_telemetry::inject_interceptor(request)?;
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.header());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn sent(interceptor: &mut RequestInterceptor) -> Option<String> {
        let request = interceptor.call(tonic::Request::new(())).expect("passes");
        request
            .metadata()
            .get("authorization")
            .map(|value| value.to_str().expect("ascii").to_string())
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first.token.value\n").expect("write");
        let source = TokenSource::new(&Credentials::TokenFile(path.clone())).expect("reads");
        let TokenSource::File { .. } = &source else {
            panic!("a file source")
        };
        let mut interceptor = RequestInterceptor {
            token: Some(Arc::new(source)),
        };
        assert_eq!(
            sent(&mut interceptor).as_deref(),
            Some("Bearer first.token.value")
        );
        std::fs::write(&path, "second.token.value.longer").expect("write");
        // Not looked at again before the interval.
        assert_eq!(
            sent(&mut interceptor).as_deref(),
            Some("Bearer first.token.value")
        );
        std::thread::sleep(Duration::from_millis(TOKEN_FILE_CHECK_INTERVAL_MS + 50));
        assert_eq!(
            sent(&mut interceptor).as_deref(),
            Some("Bearer second.token.value.longer")
        );
        // An emptied file keeps the last token.
        std::fs::write(&path, "").expect("write");
        std::thread::sleep(Duration::from_millis(TOKEN_FILE_CHECK_INTERVAL_MS + 50));
        assert_eq!(
            sent(&mut interceptor).as_deref(),
            Some("Bearer second.token.value.longer")
        );
    }

    #[test]
    fn bad_credentials_fail_at_connect_and_tokens_are_never_printed() {
        assert!(TokenSource::new(&Credentials::TokenFile("/nonexistent/token".into())).is_err());
        assert!(TokenSource::new(&Credentials::Token("  ".into())).is_err());
        assert!(TokenSource::new(&Credentials::Token("bad\ntoken".into())).is_err());
        let printed = format!("{:?}", Credentials::Token("secret.token.here".into()));
        assert!(!printed.contains("secret"), "{printed}");
        let mut none = RequestInterceptor { token: None };
        assert_eq!(sent(&mut none), None);
    }
}
