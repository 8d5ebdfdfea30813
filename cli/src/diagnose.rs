//! Why no nameserver answered: when every bootstrap address failed, each
//! is probed once (DNS, TCP, then what the listener says to a plaintext
//! HTTP/1 request) so that the error names the cause — a name that does
//! not resolve, nothing listening, an HTTP server that is not gRPC (a
//! metrics port), `https://` to a plaintext server, `http://` to a TLS
//! one — instead of a transport error.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for each step of a probe (resolve, connect, first bytes).
const PROBE_STEP_TIMEOUT_MS: u64 = 2_000;
/// Most addresses probed after one failure.
const MAX_PROBED_ADDRESSES: usize = 4;
/// Bytes of the listener's first answer looked at.
const FIRST_BYTES: usize = 16;

/// One line per probed address: `\ncause: ADDRESS: ...`.
pub async fn explain_addresses(addresses: &[String]) -> String {
    let mut text = String::new();
    for address in addresses.iter().take(MAX_PROBED_ADDRESSES) {
        text.push_str(&format!("\ncause: {address}: {}", probe(address).await));
    }
    text
}

/// Scheme (TLS or not), host and port of a bootstrap URL.
fn split_address(address: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(rest) = address.strip_prefix("https://") {
        (true, rest)
    } else {
        (false, address.strip_prefix("http://").unwrap_or(address))
    };
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((tls, host.to_string(), port.parse().ok()?))
}

async fn probe(address: &str) -> String {
    let Some((tls, host, port)) = split_address(address) else {
        return "not a host:port address".into();
    };
    let step = Duration::from_millis(PROBE_STEP_TIMEOUT_MS);
    let resolved = match tokio::time::timeout(step, tokio::net::lookup_host((host.as_str(), port)))
        .await
    {
        Err(_) => return format!("resolving {host:?} took over {PROBE_STEP_TIMEOUT_MS} ms (DNS)"),
        Ok(Err(error)) => return format!("cannot resolve host {host:?} (DNS failure: {error})"),
        Ok(Ok(addresses)) => addresses.collect::<Vec<_>>(),
    };
    let Some(socket) = resolved.first().copied() else {
        return format!("host {host:?} resolves to no address (DNS)");
    };
    let mut stream = match tokio::time::timeout(step, tokio::net::TcpStream::connect(socket)).await
    {
        Err(_) => {
            return format!(
                "no answer from {socket} within {PROBE_STEP_TIMEOUT_MS} ms (a firewall drops it, or the host is down)"
            )
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            return format!("connection refused: nothing listens on {socket}")
        }
        Ok(Err(error)) => return format!("cannot connect to {socket}: {error}"),
        Ok(Ok(stream)) => stream,
    };
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut first = [0u8; FIRST_BYTES];
    let answer = tokio::time::timeout(step, async {
        stream.write_all(request.as_bytes()).await?;
        let mut read = 0;
        while read < first.len() {
            let n = stream.read(&mut first[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Ok::<usize, std::io::Error>(read)
    })
    .await;
    let bytes = match answer {
        Ok(Ok(read)) => &first[..read],
        // A reset after our request: as good as closing without a word.
        Ok(Err(_)) | Err(_) => &first[..0],
    };
    classify(tls, bytes)
}

/// What a listener is from its first answer to a plaintext HTTP/1
/// request, given whether the client meant to use TLS.
fn classify(tls: bool, first: &[u8]) -> String {
    let http1 = first.starts_with(b"HTTP/1.");
    // An HTTP/2 frame header: 3 length bytes, then the type (4 SETTINGS,
    // 7 GOAWAY) — what an h2-only (gRPC) server sends.
    let http2 = first.len() >= 4 && matches!(first[3], 0x04 | 0x07);
    // A TLS record: 0x15 alert or 0x16 handshake, version 3.x.
    let tls_server = first.len() >= 2 && matches!(first[0], 0x15 | 0x16) && first[1] == 0x03;
    match (tls, http1, http2, tls_server) {
        (_, true, _, _) => format!(
            "an HTTP/1 server answers there ({}), not a gRPC nameserver: is this a metrics or \
             web port? The nameserver listens on its gRPC port (7400 with `sluice dev`)",
            String::from_utf8_lossy(first)
                .lines()
                .next()
                .unwrap_or("HTTP/1")
                .trim()
        ),
        (true, _, true, _) => {
            "the server speaks plaintext (no TLS) but the address says https://: \
             use http:// and leave out --tls-ca, or enable TLS on the server"
                .into()
        }
        (false, _, _, true) => "the server expects TLS: give --tls-ca (the CA that signed its \
             certificate) and use https://"
            .into(),
        (true, _, _, true) => "the server speaks TLS: the handshake or the certificate check \
             failed (see the error above; is --tls-ca the CA that signed it?)"
            .into(),
        (false, _, true, _) => "a plaintext gRPC (HTTP/2) server answers there: it is reachable; \
             run with -v for the client's debug log"
            .into(),
        (true, _, _, _) if first.is_empty() => "the listener closed the connection without a \
             word: it may speak plaintext while the address says https://"
            .into(),
        _ if first.is_empty() => "the listener accepted and closed the connection without a word \
             (not an HTTP server)"
            .into(),
        _ => "the listener does not speak HTTP (not a Sluice nameserver)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_scheme_host_and_port() {
        assert_eq!(
            split_address("https://nameserver:7400"),
            Some((true, "nameserver".into(), 7400))
        );
        assert_eq!(
            split_address("http://[::1]:9/"),
            Some((false, "::1".into(), 9))
        );
        assert_eq!(split_address("http://no-port"), None);
        assert_eq!(split_address("http://h:99999"), None);
    }

    #[test]
    fn listeners_are_told_apart_by_their_first_bytes() {
        let http1 = classify(false, b"HTTP/1.1 404 Not");
        assert!(
            http1.contains("HTTP/1 server") && http1.contains("metrics"),
            "{http1}"
        );
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0];
        assert!(classify(true, &settings).contains("plaintext (no TLS)"));
        assert!(classify(false, &settings).contains("reachable"));
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02];
        assert!(classify(false, &alert).contains("expects TLS"));
        assert!(classify(true, &alert).contains("certificate"));
        assert!(classify(true, b"").contains("https://"));
        assert!(classify(false, b"").contains("without a word"));
        assert!(classify(false, b"SSH-2.0-Open").contains("does not speak HTTP"));
    }
}
