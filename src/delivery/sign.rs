//! Callback signatures (pure, no IO): the `Authorization: Bearer` JWT minted per attempt, the
//! `sig` JWT inside the completion body, and their verification (used by the demo receiver and
//! by tests; Rails does the same with ruby-jwt).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::JwtConfig;
use crate::contract::{JobId, JobName, JobState};
use crate::runner::outputs::hex;

/// Which callback a token authorises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackEvent {
    /// A progress post.
    Progress,
    /// The completion post.
    Completion,
}

/// Claims of the `Authorization: Bearer` token of a callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackClaims {
    /// Issuer (the sidecar).
    pub iss: String,
    /// Audience (the Rails app).
    pub aud: String,
    /// The job id.
    pub sub: String,
    /// Issued at (seconds).
    pub iat: u64,
    /// Expiry (seconds); tokens are minted per attempt and short-lived.
    pub exp: u64,
    /// Delivery id, stable across retries.
    pub jti: String,
    /// Progress or completion.
    pub event: CallbackEvent,
    /// The job's Rails handler.
    pub job_name: String,
    /// The job's state (terminal for a completion).
    pub status: String,
    /// Hex SHA-256 of the exact body bytes.
    pub body_sha256: String,
}

/// Claims of the `sig` inside a completion body: verifiable long after delivery, so no `exp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The job id.
    pub sub: String,
    /// Issued at (seconds).
    pub iat: u64,
    /// The job's Rails handler.
    pub job_name: String,
    /// The terminal state.
    pub status: String,
    /// The job's user.
    pub user_id: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Bad signature, expired, wrong audience or issuer...
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The body is not the one the token was minted for.
    #[error("body_sha256 does not match the body")]
    BodyMismatch,
}

/// Signs callbacks with the configured HS256 key.
pub struct Signer {
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

/// What one callback token covers.
pub struct TokenFor<'a> {
    /// Progress or completion.
    pub event: CallbackEvent,
    /// The job.
    pub job_id: JobId,
    /// Its handler.
    pub job_name: &'a JobName,
    /// Its state.
    pub status: JobState,
    /// The delivery id.
    pub jti: &'a str,
    /// The exact body.
    pub body: &'a [u8],
}

impl Signer {
    /// A signer for `[callbacks.jwt]`.
    pub fn new(cfg: &JwtConfig) -> Self {
        Self {
            key: EncodingKey::from_secret(cfg.secret.expose().as_bytes()),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl_secs: cfg.ttl.as_secs().max(1),
        }
    }

    /// A fresh bearer token for one attempt, issued at `now` (Unix seconds).
    pub fn callback_token(&self, t: &TokenFor<'_>, now: u64) -> String {
        let claims = CallbackClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: t.job_id.to_string(),
            iat: now,
            exp: now + self.ttl_secs,
            jti: t.jti.to_owned(),
            event: t.event,
            job_name: t.job_name.to_string(),
            status: t.status.to_string(),
            body_sha256: body_sha256(t.body),
        };
        self.encode(&claims)
    }

    /// The `sig` of a completion body.
    pub fn payload_sig(
        &self,
        job_id: JobId,
        job_name: &JobName,
        status: JobState,
        user_id: &str,
        now: u64,
    ) -> String {
        self.encode(&SigClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: job_id.to_string(),
            iat: now,
            job_name: job_name.to_string(),
            status: status.to_string(),
            user_id: user_id.to_owned(),
        })
    }

    fn encode<T: Serialize>(&self, claims: &T) -> String {
        // HS256 encoding of a serde struct cannot fail: no key parsing, no fallible fields.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key).unwrap_or_default()
    }
}

/// Hex SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Verifies callbacks the way a receiver does.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier for HS256 tokens from `issuer` to `audience`.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.leeway = 5;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks an `Authorization` header value against the body it came with.
    pub fn verify_callback(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<CallbackClaims, VerifyError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(VerifyError::Missing)?;
        let claims =
            jsonwebtoken::decode::<CallbackClaims>(token, &self.key, &self.validation)?.claims;
        if claims.body_sha256 != body_sha256(body) {
            return Err(VerifyError::BodyMismatch);
        }
        Ok(claims)
    }

    /// Checks the `sig` of a stored completion body.
    pub fn verify_sig(&self, sig: &str) -> Result<SigClaims, VerifyError> {
        let mut validation = self.validation.clone();
        validation.required_spec_claims.remove("exp");
        validation.validate_exp = false;
        Ok(jsonwebtoken::decode::<SigClaims>(sig, &self.key, &validation)?.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::time::Duration;

    fn signer() -> Signer {
        Signer::new(&JwtConfig {
            issuer: "agent-sidecar".into(),
            audience: "rails".into(),
            secret: Secret::new("0123456789abcdef0123456789abcdef"),
            ttl: Duration::from_secs(300),
        })
    }

    fn verifier() -> Verifier {
        Verifier::hs256(
            b"0123456789abcdef0123456789abcdef",
            "agent-sidecar",
            "rails",
        )
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(body: &[u8]) -> String {
        let job_name: JobName = "ReportCompileJob".parse().unwrap();
        let t = TokenFor {
            event: CallbackEvent::Completion,
            job_id: "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap(),
            job_name: &job_name,
            status: JobState::Completed,
            jti: "dlv_1",
            body,
        };
        format!("Bearer {}", signer().callback_token(&t, now()))
    }

    #[test]
    fn a_callback_token_verifies_with_the_secret_and_binds_the_body() {
        let claims = verifier()
            .verify_callback(Some(&token(b"{}")), b"{}")
            .unwrap();
        assert_eq!(claims.jti, "dlv_1");
        assert_eq!(claims.job_name, "ReportCompileJob");
        assert_eq!(claims.status, "completed");
        assert!(matches!(
            verifier().verify_callback(Some(&token(b"{}")), b"{ }"),
            Err(VerifyError::BodyMismatch)
        ));
    }

    #[test]
    fn a_token_for_another_audience_or_key_is_refused() {
        let other = Verifier::hs256(
            b"0123456789abcdef0123456789abcdef",
            "agent-sidecar",
            "billing",
        );
        assert!(other.verify_callback(Some(&token(b"{}")), b"{}").is_err());
        let wrong_key = Verifier::hs256(
            b"another-secret-another-secret-xx",
            "agent-sidecar",
            "rails",
        );
        assert!(
            wrong_key
                .verify_callback(Some(&token(b"{}")), b"{}")
                .is_err()
        );
        assert!(matches!(
            verifier().verify_callback(None, b"{}"),
            Err(VerifyError::Missing)
        ));
    }

    #[test]
    fn the_payload_sig_verifies_without_expiry() {
        let job_name: JobName = "ReportCompileJob".parse().unwrap();
        let job_id = "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap();
        let sig = signer().payload_sig(job_id, &job_name, JobState::Failed, "42", 1);
        let claims = verifier().verify_sig(&sig).unwrap();
        assert_eq!(
            (
                claims.sub.as_str(),
                claims.status.as_str(),
                claims.user_id.as_str()
            ),
            ("7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f", "failed", "42")
        );
    }
}
