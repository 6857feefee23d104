//! Mission control: the browser dashboard under `/ui`, server-rendered with `maud`.
//!
//! Pages (`pages`) read what the JSON API reads, through the same functions (`overview_for`,
//! `page_of_jobs`, the store's job view and delivery list); actions (`actions`) are plain HTML
//! form POSTs that call the functions the API's handlers call, then redirect back (303) with a
//! notice. What it keeps of its own, `Dashboard`, is the session key and the live snapshot.
//! The stylesheet and script (`assets`) are embedded in the binary and served under a content-hashed path, so a browser keeps them for
//! a year and a new build is fetched at once. Every response carries [`CSP`]: no inline script
//! or style anywhere, so an injected tag in a job's log or params cannot run.
//!
//! The dashboard is nested inside the API's router (built by `lib.rs`, so `api` never names
//! this module), so it is reached exactly where the API is: without `[server.auth]` the sidecar listens on loopback only. Who may look and who may
//! act is `session`'s: a signed session cookie from a login with an API token, a role, and a
//! CSRF token in every form.

mod actions;
mod assets;
mod live;
mod login;
mod pages;
mod redact;
mod session;

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::{Extension, Router};

use crate::api::AppState;

/// The Content-Security-Policy of every dashboard response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// What the dashboard keeps of its own, reached by its handlers as an `Extension`: the session
/// signer and the live snapshot every open page shares.
pub(crate) struct Dashboard {
    sessions: session::Sessions,
    live: live::Live,
}

/// The dashboard's routes, for [`crate::api::router`] to nest under `/ui`.
pub fn router(state: AppState) -> Router<AppState> {
    let dashboard = Arc::new(Dashboard {
        sessions: session::Sessions::new(state.inner.config.server.auth.as_ref()),
        live: live::Live::default(),
    });
    Router::new()
        .merge(pages::router())
        .merge(actions::router())
        .merge(assets::router())
        .merge(login::router())
        .merge(live::router())
        .layer(axum::middleware::from_fn_with_state(state, session::guard))
        // Outside the guard, so the guard finds it too.
        .layer(Extension(dashboard))
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
