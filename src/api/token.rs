//! Short-lived inbound tokens minted from `[server.auth] secret`: what `agent-sidecar token
//! mint` prints and what the CLI sends when it is given a config but no token. Only the HS256
//! secret can mint; public keys verify tokens whose private keys Rails holds.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::auth::{ROLE_CLAIM, Role};
use crate::config::AuthConfig;
use crate::contract::AgentName;

/// Why no token can be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The config does not ask callers for tokens.
    #[error("the config has no [server.auth]: the API asks for no token")]
    NoAuth,
    /// Only public keys are configured.
    #[error(
        "server.auth.secret is not set: tokens for server.auth.public_keys are minted by whoever holds their private keys"
    )]
    NoSecret,
    /// The signing library refused.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What a minted token asks for.
#[derive(Debug, Clone)]
pub struct Mint {
    /// `sub`, e.g. `ops` (shown in logs as the caller).
    pub subject: String,
    /// How long it is valid.
    pub ttl: Duration,
    /// The agents it may trigger (the scope claim); empty for any.
    pub agents: Vec<AgentName>,
    /// Its dashboard role (the `sidecar_role` claim).
    pub role: Role,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Signs a token the API accepts for `mint.ttl`.
pub fn mint(auth: Option<&AuthConfig>, mint: &Mint) -> Result<String, MintError> {
    let auth = auth.ok_or(MintError::NoAuth)?;
    let secret = auth.secret.as_ref().ok_or(MintError::NoSecret)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        iss: &auth.issuer,
        aud: &auth.audience,
        sub: &mint.subject,
        iat: now,
        nbf: now,
        exp: now + mint.ttl.as_secs().max(1),
    };
    let mut body = serde_json::to_value(claims).map_err(jsonwebtoken::errors::Error::from)?;
    body[ROLE_CLAIM] = serde_json::json!(mint.role.as_str());
    if !mint.agents.is_empty() {
        body[&auth.scope_claim] = serde_json::json!(mint.agents);
    }
    let key = EncodingKey::from_secret(secret.expose().as_bytes());
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &body,
        &key,
    )?)
}
