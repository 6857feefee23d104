//! Mission control: the browser dashboard under `/ui`, server-rendered with `maud`.
//!
//! Pages (`pages`) read what the JSON API reads, through the same functions (`overview_for`,
//! `page_of_jobs`, the store's job view and delivery list); actions (`actions`) are plain HTML
//! form POSTs that call the functions the API's handlers call, then redirect back (303) with a
//! notice. Nothing here holds state of its own. The stylesheet and script (`assets`) are
//! embedded in the binary and served under a content-hashed path, so a browser keeps them for
//! a year and a new build is fetched at once. Every response carries [`CSP`]: no inline script
//! or style anywhere, so an injected tag in a job's log or params cannot run.
//!
//! The dashboard is mounted inside the API's router, so it is reached exactly where the API
//! is: without `[server.auth]` the sidecar listens on loopback only. Who may look and who may
//! act is `session`'s: a signed session cookie from a login with an API token, a role, and a
//! CSRF token in every form.

mod actions;
mod assets;
mod live;
mod pages;
mod redact;
mod session;

pub use live::Live;
pub use session::Sessions;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;

use crate::api::AppState;

/// The Content-Security-Policy of every dashboard response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes, to be nested under `/ui`.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(pages::router())
        .merge(actions::router())
        .merge(assets::router())
        .merge(session::router())
        .merge(live::router())
        .layer(axum::middleware::from_fn_with_state(state, session::guard))
        .layer(axum::middleware::map_response(secure_headers))
}

/// Adds the CSP and its companions to every response of the dashboard.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}
