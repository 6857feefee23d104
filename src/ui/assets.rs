//! The dashboard's stylesheet and script, embedded in the binary and served at
//! `/ui/assets/<name>.<sha256 prefix>.<ext>`: the path changes whenever the content does, so
//! each is cached for a year as immutable.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::error::ApiError;

/// One embedded file and the path it is served at.
pub(super) struct Asset {
    /// `/ui/assets/<name>.<hash>.<ext>`.
    pub path: String,
    body: &'static [u8],
    mime: &'static str,
}

impl Asset {
    fn new(name: &str, ext: &str, mime: &'static str, body: &'static [u8]) -> Self {
        let digest = crate::jobdir::hex(&Sha256::digest(body));
        Self {
            path: format!("/ui/assets/{name}.{}.{ext}", &digest[..16]),
            body,
            mime,
        }
    }
}

/// The stylesheet (light and dark by `prefers-color-scheme`).
pub(super) static CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    )
});

/// The script (progressive: every page works without it).
pub(super) static JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    )
});

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/assets/{file}", get(serve))
}

async fn serve(Path(file): Path<String>) -> Response {
    let wanted = format!("/ui/assets/{file}");
    let Some(asset) = [&*CSS, &*JS].into_iter().find(|a| a.path == wanted) else {
        return ApiError::not_found(format!("no asset {file}")).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.mime)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        asset.body,
    )
        .into_response()
}
