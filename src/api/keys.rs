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

async fn jwks(State(app): State<AppState>) -> Json<JwkSet> {
    Json(app.inner.deliveries.transport().signer.jwks().clone())
}
