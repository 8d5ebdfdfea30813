//! What keeps a console without authentication from being used by other
//! web pages the operator visits: the `Host` must name the listener (DNS
//! rebinding), POSTs must be `application/json` from the console's own
//! origin (cross-site requests cannot send that without a preflight), and
//! every answer carries a strict Content-Security-Policy.

use http::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request};
use std::net::{IpAddr, SocketAddr};

/// Scripts, styles and fetches only from the console itself; no inline
/// script or style, no frames, no forms posted elsewhere, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Refuses a request not meant for this console, with the reason.
pub fn check<B>(request: &Request<B>, local_addr: SocketAddr) -> Result<(), String> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, local_addr) {
        return Err(format!(
            "Host '{}' is not this console ({local_addr}); open it by its address",
            host.escape_default()
        ));
    }
    if request.method() == Method::POST {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !content_type
            .split(';')
            .next()
            .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("application/json"))
        {
            return Err("actions take a JSON body (Content-Type: application/json)".into());
        }
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let host_part = origin.strip_prefix("http://").unwrap_or("");
            if !host_allowed(host_part, local_addr) {
                return Err(format!(
                    "actions only from the console's own page, not from '{}'",
                    origin.escape_default()
                ));
            }
        }
    }
    Ok(())
}

/// Whether `host` (a `Host` header: `name:port`, `[v6]:port`) names the
/// listener: its port, and a loopback name or the bound address.
pub fn host_allowed(host: &str, local_addr: SocketAddr) -> bool {
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(local_addr.port()) {
        return false;
    }
    let name = name
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return local_addr.ip().is_loopback() || local_addr.ip().is_unspecified();
    }
    match name.parse::<IpAddr>() {
        Ok(ip) if local_addr.ip().is_unspecified() => ip.is_loopback(),
        Ok(ip) => ip == local_addr.ip(),
        Err(_) => false,
    }
}

/// Headers on every answer.
pub fn add_security_headers(headers: &mut HeaderMap) {
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_the_listener_is_an_accepted_host() {
        let local = addr("127.0.0.1:7480");
        assert!(host_allowed("127.0.0.1:7480", local));
        assert!(host_allowed("localhost:7480", local));
        assert!(host_allowed("LOCALHOST:7480", local));
        assert!(!host_allowed("127.0.0.1:7481", local));
        assert!(!host_allowed("evil.example:7480", local));
        assert!(!host_allowed("127.0.0.1", local));
        assert!(!host_allowed("", local));
        assert!(!host_allowed("10.0.0.1:7480", local));
        let v6 = addr("[::1]:9000");
        assert!(host_allowed("[::1]:9000", v6));
        assert!(!host_allowed("[::2]:9000", v6));
        let any = addr("0.0.0.0:9000");
        assert!(host_allowed("127.0.0.1:9000", any));
        assert!(!host_allowed("rebound.example:9000", any));
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/api/topics");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn posts_need_json_from_the_own_origin() {
        let local = addr("127.0.0.1:7480");
        let host = ("host", "127.0.0.1:7480");
        let json = ("content-type", "application/json; charset=utf-8");
        assert!(check(&request(Method::GET, &[host]), local).is_ok());
        assert!(check(&request(Method::GET, &[]), local).is_err());
        assert!(check(&request(Method::POST, &[host, json]), local).is_ok());
        let form = ("content-type", "text/plain");
        assert!(check(&request(Method::POST, &[host, form]), local).is_err());
        assert!(check(&request(Method::POST, &[host]), local).is_err());
        let own = ("origin", "http://127.0.0.1:7480");
        assert!(check(&request(Method::POST, &[host, json, own]), local).is_ok());
        let other = ("origin", "http://evil.example");
        assert!(check(&request(Method::POST, &[host, json, other]), local).is_err());
        let null = ("origin", "null");
        assert!(check(&request(Method::POST, &[host, json, null]), local).is_err());
    }

    #[test]
    fn the_policy_allows_no_inline_script() {
        let mut headers = HeaderMap::new();
        add_security_headers(&mut headers);
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"));
        assert!(!policy.contains("unsafe-inline"));
        assert!(!policy.contains("unsafe-eval"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
