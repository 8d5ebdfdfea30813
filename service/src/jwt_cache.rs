//! Tokens already verified, so a client's steady stream of requests costs a
//! SHA-256 of its token and a lookup rather than a signature check.
//!
//! Rules: keyed by the SHA-256 of the token (equal digests are equal
//! tokens); bounded (`[auth.jwt] cache_entries`, least recently used
//! evicted); an entry is used only until the token's `exp` plus the clock
//! skew, and only under the key set it was verified with (a JWKS reload
//! bumps the generation, so a removed key's tokens are checked again and
//! refused). Refusals are not remembered.

use crate::jwt_verify::Verified;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// SHA-256 of a token.
pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

struct Entry {
    verified: Verified,
    generation: u64,
}

pub struct TokenCache {
    entries: Mutex<LruCache<TokenDigest, Entry>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// What a token verified under key set `generation`, still valid at
    /// `now_ms`, proved.
    pub fn get(&self, digest: &TokenDigest, generation: u64, now_ms: u64) -> Option<Verified> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(digest)?;
        if entry.generation == generation && now_ms < entry.verified.valid_until_ms {
            return Some(entry.verified.clone());
        }
        entries.pop(digest);
        None
    }

    pub fn put(&self, digest: TokenDigest, generation: u64, verified: Verified) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(
            digest,
            Entry {
                verified,
                generation,
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_acl::Principal;

    fn verified(name: &str, valid_until_ms: u64) -> Verified {
        Verified {
            principal: Principal::user(name).expect("valid"),
            valid_until_ms,
        }
    }

    #[test]
    fn entries_expire_follow_the_key_generation_and_are_bounded() {
        let cache = TokenCache::new(2);
        let (a, b, c) = (digest("a"), digest("b"), digest("c"));
        assert_ne!(a, b);
        cache.put(a, 1, verified("alice", 1000));
        assert_eq!(
            cache.get(&a, 1, 999).expect("hit").principal.as_str(),
            "User:alice"
        );
        assert!(cache.get(&a, 1, 1000).is_none(), "expired");
        assert!(
            cache.get(&a, 1, 10).is_none(),
            "an expired entry is dropped"
        );
        cache.put(a, 1, verified("alice", 1000));
        assert!(cache.get(&a, 2, 10).is_none(), "another key set");
        cache.put(a, 1, verified("alice", 1000));
        cache.put(b, 1, verified("bob", 1000));
        cache.put(c, 1, verified("carol", 1000));
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&a, 1, 10).is_none(),
            "least recently used evicted"
        );
        assert!(cache.get(&c, 1, 10).is_some());
    }
}
