//! Who may call the API: a JWT from Rails (`Authorization: Bearer`) or a client certificate
//! verified by the TLS listener. The keys are rebuilt from the config on SIGHUP.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::listener::PeerInfo;
use crate::config::{AuthConfig, Config};
use crate::contract::AgentName;
use crate::error::ApiError;

/// The JWKS is public by nature: callers need it to verify our callbacks.
const ALWAYS_PUBLIC: &str = "/.well-known/jwks.json";

/// An authenticated caller, available to handlers as a request extension.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's `sub`, or the client certificate.
    pub subject: String,
    /// The agents this caller may trigger; `None` for any.
    pub agents: Option<BTreeSet<AgentName>>,
    /// What the caller may do on the dashboard (the token's `sidecar_role`).
    pub role: Role,
    /// The token's `exp` (Unix seconds); `None` for a client certificate.
    pub expires_at: Option<u64>,
}

/// The claim that names a token's dashboard role.
pub const ROLE_CLAIM: &str = "sidecar_role";

/// What a dashboard session may do: a viewer reads, an operator also acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Reads every page; offered no action (the default).
    #[default]
    Viewer,
    /// Also cancels, re-runs, redrives and delivers.
    Operator,
}

impl Role {
    /// The claim's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }

    /// The role a claim names; `None` for an unknown one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }
}

/// Why a request was not authenticated: a stable code and a sentence, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` and no client certificate.
    Missing,
    /// Not a JWT, or a claim of the wrong type.
    Malformed,
    /// Past `exp` (beyond the leeway).
    Expired,
    /// Not yet valid (`nbf`).
    NotYetValid,
    /// Signed with no key we accept.
    BadSignature,
    /// `aud` is not ours.
    WrongAudience,
    /// `iss` is not the configured one.
    WrongIssuer,
    /// `exp`, `iss` or `aud` absent.
    MissingClaim,
}

impl Refusal {
    /// The machine-readable code (`reason` of the problem).
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::MissingClaim => "missing_claim",
        }
    }

    /// Why, as a sentence (never the token).
    pub fn sentence(self) -> &'static str {
        match self {
            Self::Missing => "no bearer token and no client certificate",
            Self::Malformed => "the bearer token is not a well-formed JWT",
            Self::Expired => "the bearer token has expired",
            Self::NotYetValid => "the bearer token is not valid yet",
            Self::BadSignature => {
                "the bearer token's signature does not verify with any accepted key"
            }
            Self::WrongAudience => "the bearer token is for another audience",
            Self::WrongIssuer => "the bearer token is from another issuer",
            Self::MissingClaim => "the bearer token lacks exp, iss or aud",
        }
    }

    fn from_jwt(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Self::BadSignature,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::MissingRequiredClaim(_) => Self::MissingClaim,
            _ => Self::Malformed,
        }
    }

    /// Signature errors are the least informative: any other error means a key verified it.
    fn rank(self) -> u8 {
        u8::from(self != Self::BadSignature)
    }
}

/// What authentication cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A public key file could not be read.
    #[error("server.auth.public_keys: {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A public key file is not an RSA, EC P-256 or Ed25519 public key in PEM.
    #[error("server.auth.public_keys: {0}: not an RSA, EC P-256 or Ed25519 public key (PEM)")]
    Key(String),
}

/// The accepted keys and the rules a token must meet.
pub struct Authenticator {
    keys: Vec<(DecodingKey, Algorithm)>,
    validation: Validation,
    public_paths: BTreeSet<String>,
    scope_claim: String,
    required: bool,
}

impl Authenticator {
    /// Loads the keys `config` names; nothing is asked of callers when the config has neither
    /// `[server.auth]` nor a client CA.
    pub fn load(config: &Config) -> Result<Self, AuthSetupError> {
        let required = config.server.auth_required();
        let Some(auth) = &config.server.auth else {
            return Ok(Self {
                keys: Vec::new(),
                validation: Validation::default(),
                public_paths: public_paths(None),
                scope_claim: String::new(),
                required,
            });
        };
        let mut keys = Vec::new();
        if let Some(secret) = &auth.secret {
            keys.push((
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ));
        }
        for path in &auth.public_keys {
            keys.push(public_key(path)?);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&auth.issuer]);
        validation.set_audience(&[&auth.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = auth.leeway.as_secs();
        validation.validate_nbf = true;
        Ok(Self {
            keys,
            validation,
            public_paths: public_paths(Some(auth)),
            scope_claim: auth.scope_claim.clone(),
            required,
        })
    }

    fn is_public(&self, path: &str) -> bool {
        !self.required || self.public_paths.contains(path)
    }

    /// Whether callers must authenticate (`[server.auth]` or a required client certificate).
    pub fn required(&self) -> bool {
        self.required
    }

    /// Verifies a bearer token against every accepted key of its algorithm.
    pub fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let mut refusal = Refusal::BadSignature;
        for (key, alg) in self.keys.iter().filter(|(_, a)| *a == header.alg) {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![*alg];
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => {
                    let this = Refusal::from_jwt(e.kind());
                    if this.rank() > refusal.rank() {
                        refusal = this;
                    }
                }
            }
        }
        Err(refusal)
    }

    fn principal(&self, claims: &Value) -> Result<Principal, Refusal> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("rails")
            .to_owned();
        let agents = match claims.get(&self.scope_claim) {
            None => None,
            Some(list) => Some(
                Vec::<String>::deserialize(list)
                    .map_err(|_| Refusal::Malformed)?
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect(),
            ),
        };
        let role = match claims.get(ROLE_CLAIM) {
            None => Role::Viewer,
            Some(role) => role
                .as_str()
                .and_then(Role::parse)
                .ok_or(Refusal::Malformed)?,
        };
        let expires_at = claims.get("exp").and_then(Value::as_u64);
        Ok(Principal {
            subject,
            agents,
            role,
            expires_at,
        })
    }
}

fn public_paths(auth: Option<&AuthConfig>) -> BTreeSet<String> {
    let mut paths: BTreeSet<String> = match auth {
        Some(a) => a.public_paths.iter().cloned().collect(),
        None => ["/health", "/ready", "/metrics", "/openapi.json"]
            .map(String::from)
            .into_iter()
            .collect(),
    };
    paths.insert(ALWAYS_PUBLIC.to_owned());
    paths
}

fn public_key(path: &std::path::Path) -> Result<(DecodingKey, Algorithm), AuthSetupError> {
    let pem = std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.display().to_string(),
        source,
    })?;
    DecodingKey::from_rsa_pem(&pem)
        .map(|k| (k, Algorithm::RS256))
        .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
        .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|k| (k, Algorithm::EdDSA)))
        .map_err(|_| AuthSetupError::Key(path.display().to_string()))
}

/// The authenticator in force, replaced whole on reload.
pub struct Gate {
    current: RwLock<Arc<Authenticator>>,
}

impl Gate {
    /// A gate with `authenticator` in force.
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            current: RwLock::new(Arc::new(authenticator)),
        }
    }

    /// The authenticator in force.
    pub fn current(&self) -> Arc<Authenticator> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Switches to `fresh` (built by [`Authenticator::load`]).
    pub fn install(&self, fresh: Authenticator) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
    }
}

/// The middleware: lets public paths through, else requires a verified client certificate or
/// a valid bearer token, and records the caller as a [`Principal`].
pub async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .map(|c| c.0);
    let auth = app.inner.gate.current();
    if auth.is_public(request.uri().path()) {
        return next.run(request).await;
    }
    // The dashboard authenticates its own way (a session cookie; `ui::session`).
    let path = request.uri().path();
    if path == "/ui" || path.starts_with("/ui/") {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let principal = match (bearer, peer) {
        (Some(token), _) => auth.verify(token),
        (None, Some(peer)) if peer.client_certified => Ok(Principal {
            subject: "client certificate".into(),
            agents: None,
            role: Role::Operator,
            expires_at: None,
        }),
        (None, _) => Err(Refusal::Missing),
    };
    match principal {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refusal) => {
            let problem = ApiError::unauthorized(refusal.sentence())
                .with_extension("reason", Value::String(refusal.code().to_owned()));
            // A Rails whose token is wrong is seen like any other refused trigger.
            if request.uri().path() == "/agents/trigger" {
                super::refusal::record(&problem);
            }
            unauthorized(problem, refusal)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 7235 §2.1), so `bearer` and `BEARER` are the same scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(problem: ApiError, refusal: Refusal) -> Response {
    let mut response = problem.into_response();
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        refusal.code()
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
