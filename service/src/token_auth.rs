//! A server's token authentication (`[auth.jwt]`): the JWKS file, loaded
//! again when it changes, the policy, and the cache of verified tokens.
//!
//! Rules:
//! - The JWKS file must load at start. It is looked at (size and
//!   modification time) at most every `reload_check_interval_ms`, on a
//!   request that carries a token; a changed file that loads replaces the
//!   keys at once (and the cache's entries with them: a removed key's
//!   tokens are refused from the next request on); one that does not load
//!   keeps the keys in use, with a WARN naming why, and is tried again at
//!   the next look.
//! - See `jwt_verify.rs` for what a token must satisfy and `jwt_cache.rs`
//!   for what is remembered.

use crate::jwks::KeySet;
use crate::jwt_cache::{digest, TokenCache};
use crate::jwt_config::{JwtConfig, MAX_JWKS_FILE_BYTES};
use crate::jwt_verify::{bearer_token, verify, JwtPolicy, TokenError, Verified};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

type Stamp = Option<(u64, SystemTime)>;

struct Keys {
    set: Arc<KeySet>,
    generation: u64,
    stamp: Stamp,
    looked_at: Instant,
}

pub struct TokenAuthenticator {
    config: JwtConfig,
    policy: JwtPolicy,
    keys: Mutex<Keys>,
    cache: TokenCache,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("jwks_file", &self.config.jwks_file)
            .finish()
    }
}

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

fn read_keys(path: &Path, policy: &JwtPolicy) -> Result<KeySet, String> {
    let file = std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut json = Vec::new();
    file.take(MAX_JWKS_FILE_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    let set = KeySet::parse(&json, &policy.allowed)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    for skipped in &set.skipped {
        tracing::warn!(jwks_file = %path.display(), %skipped, "jwt: skipping a JWKS key");
    }
    Ok(set)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

impl TokenAuthenticator {
    /// Loads the JWKS file; an error names the file and what is wrong.
    pub fn load(config: &JwtConfig) -> Result<Self, String> {
        let policy = JwtPolicy::from_config(config)?;
        let stamp = stamp(&config.jwks_file);
        let set = read_keys(&config.jwks_file, &policy)
            .map_err(|error| format!("[auth.jwt] jwks_file {error}"))?;
        tracing::info!(jwks_file = %config.jwks_file.display(), keys = set.len(), "jwt: keys loaded");
        Ok(Self {
            cache: TokenCache::new(usize::try_from(config.cache_entries).unwrap_or(usize::MAX)),
            config: config.clone(),
            policy,
            keys: Mutex::new(Keys {
                set: Arc::new(set),
                generation: 0,
                stamp,
                looked_at: Instant::now(),
            }),
        })
    }

    /// The principal an `authorization` metadata value proves, and until
    /// when.
    pub fn authenticate(&self, authorization: &[u8]) -> Result<Verified, TokenError> {
        let token = bearer_token(authorization, self.policy.max_token_bytes)?;
        let (keys, generation) = self.current_keys();
        let digest = digest(token);
        let now = now_ms();
        if let Some(verified) = self.cache.get(&digest, generation, now) {
            return Ok(verified);
        }
        let verified = verify(token, &keys, &self.policy, now)?;
        self.cache.put(digest, generation, verified.clone());
        Ok(verified)
    }

    /// The keys in use and their generation, after looking at the file if
    /// it is time to.
    fn current_keys(&self) -> (Arc<KeySet>, u64) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let interval = Duration::from_millis(self.config.reload_check_interval_ms);
        if keys.looked_at.elapsed() >= interval {
            keys.looked_at = Instant::now();
            let now = stamp(&self.config.jwks_file);
            if now != keys.stamp {
                match read_keys(&self.config.jwks_file, &self.policy) {
                    Ok(set) => {
                        tracing::info!(jwks_file = %self.config.jwks_file.display(), keys = set.len(), "jwt: JWKS file changed; verifying with its keys");
                        keys.set = Arc::new(set);
                        keys.generation += 1;
                        keys.stamp = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "jwt: the changed JWKS file does not load; still using the previous keys");
                    }
                }
            }
        }
        (keys.set.clone(), keys.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt_mint::{jwks, TestSigner};
    use serde_json::json;

    fn config(path: &Path) -> JwtConfig {
        JwtConfig {
            enabled: true,
            jwks_file: path.to_path_buf(),
            issuer: "iss".into(),
            audience: "aud".into(),
            reload_check_interval_ms: 100,
            ..JwtConfig::default()
        }
    }

    fn bearer(signer: &TestSigner) -> Vec<u8> {
        let exp = now_ms() / 1000 + 600;
        let claims = json!({"sub": "alice", "iss": "iss", "aud": "aud", "exp": exp});
        format!("Bearer {}", signer.sign(&claims)).into_bytes()
    }

    /// Writes `text` with a modification time `offset_s` seconds from the
    /// first write, so every rewrite is seen as a change.
    fn write(path: &Path, text: &str, offset_s: u64) {
        std::fs::write(path, text).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + offset_s);
        file.set_modified(time).expect("mtime");
    }

    #[test]
    fn rotation_removes_keys_and_a_bad_file_keeps_the_previous_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("jwks.json");
        let (old, new) = (TestSigner::ed25519("old"), TestSigner::ed25519("new"));
        write(&path, &jwks(&[&old]), 0);
        let tokens = TokenAuthenticator::load(&config(&path)).expect("loads");
        let old_token = bearer(&old);
        assert_eq!(
            tokens
                .authenticate(&old_token)
                .expect("valid")
                .principal
                .as_str(),
            "User:alice"
        );
        assert_eq!(tokens.cache.len(), 1);
        assert!(tokens.authenticate(&bearer(&new)).is_err());
        // A half-written file: the old key still works after the next look.
        write(&path, "{\"keys\": [", 1);
        std::thread::sleep(Duration::from_millis(150));
        assert!(tokens.authenticate(&old_token).is_ok());
        // The new set without the old key: refused from the next look on,
        // although the old token was cached.
        write(&path, &jwks(&[&new]), 2);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            tokens.authenticate(&old_token),
            Err(TokenError::UnknownKid("old".into()))
        );
        assert!(tokens.authenticate(&bearer(&new)).is_ok());
    }

    #[test]
    fn a_missing_jwks_file_fails_at_start() {
        let error = TokenAuthenticator::load(&config(Path::new("/nonexistent/jwks.json")))
            .expect_err("no file");
        assert!(error.contains("/nonexistent/jwks.json"), "{error}");
    }
}
