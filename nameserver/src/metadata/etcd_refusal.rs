//! What an etcd client error means for the nameserver's connection to
//! etcd (pure): a refusal that configuration must fix (TLS handshake or
//! authentication refused) or a member not reachable now (down, electing,
//! restarting), which a later attempt may get past.
//!
//! Rules:
//! - The whole error chain is read: tonic's transport error prints as
//!   "transport error" alone; rustls's reason (`UnknownIssuer`, a
//!   `CertificateRequired` alert) is further down.
//! - A refusal is described with what to check; anything else is
//!   unreachable.

use super::etcd_diagnosis::{CLOSED_AFTER_HANDSHAKE, NO_CLIENT_CERTIFICATE, SPEAKS_TLS};
use std::error::Error as StdError;

/// The meaning of a failed connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// etcd or the TLS handshake refused this nameserver's settings: no
    /// retry helps.
    Refused(String),
    /// Not reachable now.
    Unreachable(String),
}

/// Every message of an error's chain, outermost first, repeats left out.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let message = error.to_string();
        if !messages.iter().any(|seen| seen.contains(&message)) {
            messages.push(message);
        }
        next = error.source();
    }
    messages.join(": ")
}

/// What `description` (an error [`chain`]) says about the connection to
/// `endpoints`.
pub fn verdict(description: &str, endpoints: &[String]) -> Verdict {
    let endpoints = endpoints.join(", ");
    match hint(&description.to_ascii_lowercase()) {
        Some(hint) => Verdict::Refused(format!("etcd {endpoints}: {hint} ({description})")),
        None => Verdict::Unreachable(format!("etcd {endpoints}: {description}")),
    }
}

/// What to check, for a refusal (`lower`: the description in lower case).
fn hint(lower: &str) -> Option<&'static str> {
    let has = |words: &[&str]| {
        words
            .iter()
            .any(|word| lower.contains(&word.to_ascii_lowercase()))
    };
    // etcd (Go) answers a missing client certificate with BadCertificate,
    // like one from another CA; the caller says which it was.
    let refused_after_handshake = has(&[
        "unknownca",
        "badcertificate",
        "bad certificate",
        "certificateunknown",
        "decrypterror",
        CLOSED_AFTER_HANDSHAKE,
    ]);
    let hint = if has(&["unknownissuer", "invalid peer certificate"]) {
        if has(&["notvalidforname"]) {
            "etcd's certificate does not name the host of the endpoint"
        } else {
            "etcd's certificate is not signed by a CA of [metadata] tls_ca_file"
        }
    } else if has(&["certificaterequired", "certificate required"])
        || (refused_after_handshake && has(&[NO_CLIENT_CERTIFICATE.trim()]))
    {
        "etcd requires a client certificate (--client-cert-auth): set [metadata] tls_cert_file and tls_key_file"
    } else if refused_after_handshake {
        "etcd refused the client certificate of [metadata] tls_cert_file: is it signed by a CA etcd trusts (--trusted-ca-file)?"
    } else if has(&["authentication failed", "invalid user id or password"]) {
        "etcd refused [metadata] user and the password of password_file"
    } else if has(&["authentication is not enabled"]) {
        "[metadata] user is set but etcd's authentication is off (etcdctl auth enable)"
    } else if has(&["permission denied"]) {
        "etcd's user lacks a permission on the key prefix (etcdctl role grant-permission)"
    } else if has(&[SPEAKS_TLS]) {
        "etcd serves TLS at this plaintext endpoint: write https:// endpoints with [metadata] tls_ca_file (never plaintext)"
    } else {
        return None;
    };
    Some(hint)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Vec<String> {
        vec!["https://127.0.0.1:2379".to_string()]
    }

    fn refused(description: &str, words: &[&str]) {
        match verdict(description, &endpoints()) {
            Verdict::Refused(message) => {
                assert!(message.contains("https://127.0.0.1:2379"), "{message}");
                assert!(message.contains(description), "{message}");
                for word in words {
                    assert!(message.contains(word), "{word:?} not in {message}");
                }
            }
            other => panic!("{description}: {other:?}"),
        }
    }

    #[test]
    fn tls_and_authentication_refusals_say_what_to_check() {
        refused(
            "transport error: invalid peer certificate: UnknownIssuer",
            &["not signed by a CA of [metadata] tls_ca_file"],
        );
        refused(
            "invalid peer certificate: NotValidForName",
            &["does not name the host"],
        );
        refused(
            "h2 protocol error: received fatal alert: CertificateRequired",
            &["requires a client certificate", "tls_cert_file"],
        );
        refused(
            "received fatal alert: BadCertificate",
            &["refused the client certificate"],
        );
        // Go's TLS 1.3 server answers a missing certificate so too.
        refused(
            &format!("received fatal alert: BadCertificate{NO_CLIENT_CERTIFICATE}"),
            &["requires a client certificate"],
        );
        refused(
            "etcdserver: authentication failed, invalid user ID or password",
            &["password_file"],
        );
        refused(
            "etcdserver: authentication is not enabled",
            &["auth enable"],
        );
        refused(
            &format!("http://127.0.0.1:2379: {SPEAKS_TLS}"),
            &["serves TLS", "https://"],
        );
        refused(
            &format!("https://127.0.0.1:2379: {CLOSED_AFTER_HANDSHAKE}"),
            &["refused the client certificate"],
        );
        refused(
            &format!("{CLOSED_AFTER_HANDSHAKE}{NO_CLIENT_CERTIFICATE}"),
            &["requires a client certificate"],
        );
    }

    #[test]
    fn anything_else_is_unreachable() {
        for description in [
            "transport error: tcp connect error: Connection refused (os error 111)".to_string(),
            "etcdserver: no leader".to_string(),
            "etcd get timed out after 5000 ms (3 attempts)".to_string(),
            // Said of every failure without a client certificate; alone it
            // is no refusal.
            format!("tcp connect error: Connection refused{NO_CLIENT_CERTIFICATE}"),
        ] {
            assert!(
                matches!(verdict(&description, &endpoints()), Verdict::Unreachable(m) if m.contains(&description)),
                "{description}"
            );
        }
    }

    #[test]
    fn the_chain_reads_every_source_once() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Layer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.1.as_deref().map(|layer| layer as _)
            }
        }
        let error = Layer(
            "transport error",
            Some(Box::new(Layer(
                "received fatal alert: UnknownCA",
                Some(Box::new(Layer("UnknownCA", None))),
            ))),
        );
        assert_eq!(
            chain(&error),
            "transport error: received fatal alert: UnknownCA"
        );
    }
}
