//! The built front end, inside the binary (every file: no CDN, no font from elsewhere). Which
//! folder was embedded is the build script's choice (`build.rs`): the npm build, or a page
//! saying how to make it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "$ZF_DASHBOARD_SITE"]
struct Site;

/// The page every route of the dashboard starts from.
pub fn index() -> Response {
    file("index.html").unwrap_or_else(|| (StatusCode::NOT_FOUND, "no index.html").into_response())
}

/// One embedded file by its path under the site (`assets/index-HASH.js`), None if absent.
pub fn file(path: &str) -> Option<Response> {
    let f = Site::get(path)?;
    let mime = f.metadata.mimetype().to_string();
    let mut r = (StatusCode::OK, f.data.into_owned()).into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    // Vite names built assets by their content hash: they never change under one name. The
    // page itself must be asked for again, to pick up a new build.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(r)
}

/// Whether the real front end is embedded (not the placeholder page).
pub fn built() -> bool {
    Site::iter().any(|p| p.starts_with("assets/"))
}
