//! The web UI: static files embedded in the binary from `web/static/` (no Node.js or build step
//! at run time), served with a content security policy that allows nothing from elsewhere.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};

static STATIC: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../web/static");

/// The page's one inline script is its import map (bare `preact` imports inside the vendored
/// modules need it); the policy allows exactly that script by its hash, computed here from the
/// embedded page so the two cannot drift.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let page = STATIC
        .get_file("index.html")
        .and_then(|f| f.contents_utf8())
        .unwrap_or_default();
    let hash = import_map(page)
        .map(|map| {
            format!(
                " 'sha256-{}'",
                STANDARD.encode(Sha256::digest(map.as_bytes()))
            )
        })
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'{hash}; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
});

/// The text of the page's `<script type="importmap">` element.
fn import_map(page: &str) -> Option<&str> {
    let open = "<script type=\"importmap\">";
    let start = page.find(open)? + open.len();
    let len = page[start..].find("</script>")?;
    Some(&page[start..start + len])
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        _ => "text/plain; charset=utf-8",
    }
}

fn file(path: &str) -> Response {
    let Some(f) = STATIC.get_file(path) else {
        return (StatusCode::NOT_FOUND, "No such file in the web UI.").into_response();
    };
    let mut resp = f.contents().into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Served from the binary: a new binary may change any file, so always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// `GET /`: the web UI's page.
pub async fn index() -> Response {
    file("index.html")
}

/// `GET /ui/{*path}`: the web UI's scripts, styles and vendored modules.
pub async fn asset(Path(path): Path<String>) -> Response {
    // include_dir paths are relative and never contain `..`; a request for one finds nothing.
    file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_modules_are_embedded() {
        for path in [
            "index.html",
            "app.js",
            "crypto.js",
            "api.js",
            "style.css",
            "vendor/preact.module.js",
            "vendor/hooks.module.js",
            "vendor/htm.module.js",
        ] {
            assert!(STATIC.get_file(path).is_some(), "{path} is embedded");
        }
    }

    #[test]
    fn the_policy_allows_the_import_map_by_hash_and_nothing_from_elsewhere() {
        let page = STATIC
            .get_file("index.html")
            .unwrap()
            .contents_utf8()
            .unwrap();
        let map = import_map(page).expect("the page has an import map");
        assert!(map.contains("\"preact\""), "{map}");
        assert!(CSP.contains("'sha256-"), "{}", *CSP);
        assert!(!CSP.contains("http"), "no other origin: {}", *CSP);
        assert!(!CSP.contains("unsafe"), "{}", *CSP);
    }
}
