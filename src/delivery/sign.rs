//! Callback signatures (pure, no network): the `Authorization: Bearer` JWT minted per attempt,
//! the `sig` JWT inside the completion body, the JWKS that publishes the public keys, the
//! optional Standard Webhooks headers, and verification (used by the demo receiver and tests;
//! Rails does the same with ruby-jwt).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{JwtConfig, KeyAlgorithm, KeyConfig, StandardWebhooksConfig};
use crate::contract::{JobId, JobName, JobState};
use crate::jobdir::hex;

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

/// Why the signing keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("key {kid}: cannot read {path}: {source}")]
    Read {
        /// Key id.
        kid: String,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file is not a key of its configured algorithm.
    #[error("key {kid}: {reason}")]
    Invalid {
        /// Key id.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// A Standard Webhooks secret is not `whsec_` + base64.
    #[error("callbacks.standard_webhooks.secrets[{index}] is not whsec_ followed by base64")]
    WebhookSecret {
        /// Position in the list.
        index: usize,
    },
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token names a key the verifier does not know.
    #[error("unknown signing key {0:?}")]
    UnknownKey(Option<String>),
    /// Bad signature, expired, wrong audience or issuer...
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The body is not the one the token was minted for.
    #[error("body_sha256 does not match the body")]
    BodyMismatch,
}

struct SigningKey {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

/// Signs callbacks: one signing key (HS256 secret or an asymmetric key), every asymmetric key
/// published in the JWKS, and the Standard Webhooks keys.
pub struct Signer {
    signing: SigningKey,
    issuer: String,
    audience: String,
    ttl_secs: u64,
    jwks: JwkSet,
    webhooks: Option<WebhookKeys>,
}

/// Keys of the Standard Webhooks `webhook-signature` header: every active key signs.
struct WebhookKeys {
    hmac: Vec<ring::hmac::Key>,
    ed25519: Vec<Ed25519KeyPair>,
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

fn jwt_algorithm(a: KeyAlgorithm) -> Algorithm {
    match a {
        KeyAlgorithm::Rs256 => Algorithm::RS256,
        KeyAlgorithm::Es256 => Algorithm::ES256,
        KeyAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// A private key file: its PEM text and the DER inside (PKCS#8, or PKCS#1 for RSA).
fn read_key(k: &KeyConfig) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    let pem = std::fs::read(&k.private_key_file).map_err(|source| KeyError::Read {
        kid: k.kid.clone(),
        path: k.private_key_file.display().to_string(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| KeyError::Invalid {
        kid: k.kid.clone(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let der = der.secret_der().to_vec();
    Ok((pem, der))
}

fn encoding_key(k: &KeyConfig, pem: &[u8], der: &[u8]) -> Result<EncodingKey, KeyError> {
    let key = match k.algorithm {
        KeyAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem),
        KeyAlgorithm::Es256 => EncodingKey::from_ec_pem(pem),
        KeyAlgorithm::EdDsa => Ok(EncodingKey::from_ed_der(der)),
    };
    key.map_err(|e| KeyError::Invalid {
        kid: k.kid.clone(),
        reason: e.to_string(),
    })
}

fn public_jwk(
    k: &KeyConfig,
    key: &EncodingKey,
    ed25519: Option<&Ed25519KeyPair>,
) -> Result<Jwk, KeyError> {
    let mut jwk = match ed25519 {
        // jsonwebtoken derives Ed25519 JWKs from PKCS#8 v1 keys only; ring reads v1 and v2.
        Some(pair) => Jwk {
            common: CommonParameters {
                key_algorithm: Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: B64URL.encode(pair.public_key().as_ref()),
            }),
        },
        None => Jwk::from_encoding_key(key, jwt_algorithm(k.algorithm)).map_err(|e| {
            KeyError::Invalid {
                kid: k.kid.clone(),
                reason: format!("not a {:?} private key: {e}", k.algorithm),
            }
        })?,
    };
    jwk.common.key_id = Some(k.kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(jwk)
}

impl Signer {
    /// Loads every configured key (reading key files now).
    pub fn load(
        jwt: &JwtConfig,
        standard_webhooks: &StandardWebhooksConfig,
    ) -> Result<Self, KeyError> {
        let mut signing = jwt.secret.as_ref().map(|secret| SigningKey {
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            algorithm: Algorithm::HS256,
            kid: None,
        });
        let mut jwks = JwkSet { keys: Vec::new() };
        let mut ed25519 = Vec::new();
        for k in &jwt.keys {
            let (pem, der) = read_key(k)?;
            let key = encoding_key(k, &pem, &der)?;
            let pair = (k.algorithm == KeyAlgorithm::EdDsa)
                .then(|| {
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
                        KeyError::Invalid {
                            kid: k.kid.clone(),
                            reason: format!("not an Ed25519 PKCS#8 key: {e}"),
                        }
                    })
                })
                .transpose()?;
            jwks.keys.push(public_jwk(k, &key, pair.as_ref())?);
            ed25519.extend(pair);
            if k.signing {
                signing = Some(SigningKey {
                    key,
                    algorithm: jwt_algorithm(k.algorithm),
                    kid: Some(k.kid.clone()),
                });
            }
        }
        let webhooks = if standard_webhooks.enabled {
            let hmac = standard_webhooks
                .secrets
                .iter()
                .enumerate()
                .map(|(index, s)| {
                    let bytes = s
                        .expose()
                        .strip_prefix("whsec_")
                        .and_then(|b| B64.decode(b).ok())
                        .ok_or(KeyError::WebhookSecret { index })?;
                    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
                })
                .collect::<Result<_, KeyError>>()?;
            Some(WebhookKeys { hmac, ed25519 })
        } else {
            None
        };
        let signing = signing.ok_or_else(|| KeyError::Invalid {
            kid: String::new(),
            reason: "no signing key: set callbacks.jwt.secret or a key with signing = true".into(),
        })?;
        Ok(Self {
            signing,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            ttl_secs: jwt.ttl.as_secs().max(1),
            jwks,
            webhooks,
        })
    }

    /// The public keys, for `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
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

    /// The headers of one callback attempt besides `traceparent`: the bearer token, the
    /// delivery id as `Idempotency-Key` and `webhook-id`, and the Standard Webhooks signature
    /// when enabled.
    pub fn callback_headers(
        &self,
        token: &str,
        id: &str,
        body: &[u8],
        now: u64,
    ) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", id.to_owned()),
            ("webhook-id", id.to_owned()),
        ];
        if let Some(signature) = self.webhook_signature(id, now, body) {
            headers.push(("webhook-timestamp", now.to_string()));
            headers.push(("webhook-signature", signature));
        }
        headers
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

    /// The Standard Webhooks `webhook-signature` value for `id.timestamp.body`, when enabled:
    /// `v1,<HMAC>` per secret and `v1a,<Ed25519>` per Ed25519 key, space-separated.
    pub fn webhook_signature(&self, id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
        let keys = self.webhooks.as_ref()?;
        let mut signed = format!("{id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(body);
        let hmac = keys
            .hmac
            .iter()
            .map(|k| format!("v1,{}", B64.encode(ring::hmac::sign(k, &signed).as_ref())));
        let ed = keys
            .ed25519
            .iter()
            .map(|k| format!("v1a,{}", B64.encode(k.sign(&signed).as_ref())));
        Some(hmac.chain(ed).collect::<Vec<_>>().join(" "))
    }

    /// Base64 Ed25519 public keys used for `v1a` signatures.
    pub fn webhook_ed25519_public_keys(&self) -> Vec<String> {
        self.webhooks
            .iter()
            .flat_map(|w| {
                w.ed25519
                    .iter()
                    .map(|k| B64.encode(k.public_key().as_ref()))
            })
            .collect()
    }

    fn encode<T: Serialize>(&self, claims: &T) -> String {
        let mut header = Header::new(self.signing.algorithm);
        header.kid = self.signing.kid.clone();
        // The key was parsed and checked when the signer was built; serde structs always encode.
        jsonwebtoken::encode(&header, claims, &self.signing.key).unwrap_or_default()
    }
}

/// Hex SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Verifies callbacks the way a receiver does: with the shared secret or the published JWKS.
pub struct Verifier {
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    issuer: String,
    audience: String,
}

impl Verifier {
    /// A verifier for HS256 tokens from `issuer` to `audience`.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self {
            keys: vec![(None, DecodingKey::from_secret(secret), Algorithm::HS256)],
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// A verifier for the keys of a JWKS (`GET /.well-known/jwks.json`), chosen by `kid`.
    pub fn from_jwks(jwks: &JwkSet, issuer: &str, audience: &str) -> Result<Self, VerifyError> {
        let keys = jwks
            .keys
            .iter()
            .map(|jwk| {
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                    .unwrap_or(Algorithm::RS256);
                Ok((jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)?, alg))
            })
            .collect::<Result<_, jsonwebtoken::errors::Error>>()?;
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        require_exp: bool,
    ) -> Result<T, VerifyError> {
        let kid = jsonwebtoken::decode_header(token)?.kid;
        let (_, key, alg) = self
            .keys
            .iter()
            .find(|(k, _, _)| kid.is_none() || *k == kid)
            .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(*alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 5;
        if !require_exp {
            validation.required_spec_claims.remove("exp");
            validation.validate_exp = false;
        }
        Ok(jsonwebtoken::decode::<T>(token, key, &validation)?.claims)
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
        let claims: CallbackClaims = self.decode(token, true)?;
        if claims.body_sha256 != body_sha256(body) {
            return Err(VerifyError::BodyMismatch);
        }
        Ok(claims)
    }

    /// Checks the `sig` of a stored completion body.
    pub fn verify_sig(&self, sig: &str) -> Result<SigClaims, VerifyError> {
        self.decode(sig, false)
    }
}

#[cfg(test)]
pub(crate) mod tests;
