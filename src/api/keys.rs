//! `GET /.well-known/jwks.json`: the public keys callbacks are signed with, so Rails can verify
//! (and follow rotations) without sharing a secret.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::JwkSet;

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(jwks))
}

/// The public keys callbacks are signed with (empty with HS256 only).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "keys",
    responses((status = 200, description = "A JSON Web Key Set", body = Object)))]
pub(super) async fn jwks(State(app): State<AppState>) -> Json<JwkSet> {
    Json(app.inner.deliveries.transport().signer.jwks().clone())
}
