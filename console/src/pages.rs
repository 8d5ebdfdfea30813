//! The page's assets, bundled in the binary (no CDN, no external fonts):
//! one HTML page, its script and its stylesheet, all hand-written. The
//! script puts data in the DOM only as text (`textContent`), never as
//! markup.

use crate::Body;
use bytes::Bytes;
use hyper::Response;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// The asset at `path`, if it is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (content_type, text) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => return None,
    };
    let mut response = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_and_others_are_not() {
        for path in ["/", "/app.js", "/style.css"] {
            assert!(asset(path).is_some(), "{path}");
        }
        assert!(asset("/../Cargo.toml").is_none());
        assert!(asset("/api/cluster").is_none());
    }

    #[test]
    fn the_page_has_no_inline_script_or_external_resource() {
        assert!(INDEX_HTML.contains(r#"<script src="/app.js""#));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "inline script would break the CSP"
        );
        assert!(
            !INDEX_HTML.contains(" style="),
            "inline style would break the CSP"
        );
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!APP_JS.contains("innerHTML"), "data goes in as text only");
        assert!(!APP_JS.contains("insertAdjacentHTML") && !APP_JS.contains("eval("));
    }
}
