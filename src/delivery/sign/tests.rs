use std::time::Duration;

use super::*;
use crate::config::{CallbacksConfig, JwtConfig, Secret, StandardWebhooksConfig};

/// Callback settings for tests: a 1 s timeout, HS256, Standard Webhooks with `webhook_secrets`.
pub(crate) fn config(webhook_secrets: &[&str]) -> CallbacksConfig {
    CallbacksConfig {
        allowed_origins: Default::default(),
        allow_http: true,
        timeout: Duration::from_secs(1),
        progress_min_interval: Duration::ZERO,
        progress_retries: 0,
        retry_schedule: vec![Duration::ZERO],
        max_age: Duration::from_secs(60),
        output_index_max_bytes: 1024,
        allowed_networks: Vec::new(),
        breaker_threshold: 5,
        breaker_cooldown: Duration::from_secs(30),
        per_destination_concurrency: 8,
        jwt: JwtConfig {
            issuer: "agent-sidecar".into(),
            audience: "rails".into(),
            secret: Some(Secret::new("0123456789abcdef0123456789abcdef")),
            ttl: Duration::from_secs(300),
            keys: Vec::new(),
        },
        tls: Default::default(),
        standard_webhooks: StandardWebhooksConfig {
            enabled: !webhook_secrets.is_empty(),
            secrets: webhook_secrets.iter().map(|s| Secret::new(*s)).collect(),
        },
    }
}

fn load(cfg: &CallbacksConfig) -> Result<Signer, KeyError> {
    Signer::load(&cfg.jwt, &cfg.standard_webhooks)
}

fn signer() -> Signer {
    load(&config(&[])).unwrap()
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
    assert!(claims.exp > claims.iat && claims.exp - claims.iat == 300);
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

/// The Standard Webhooks specification's published test vector.
#[test]
fn standard_webhooks_signatures_match_the_spec_test_vector() {
    let signer = load(&config(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])).unwrap();
    let signature = signer
        .webhook_signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn during_a_rotation_every_webhook_secret_signs() {
    let signer = load(&config(&[
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_dGhlLW5ldy1zZWNyZXQtdGhlLW5ldy1zZWNyZXQ=",
    ]))
    .unwrap();
    let signature = signer.webhook_signature("msg_1", 1, b"{}").unwrap();
    let parts: Vec<&str> = signature.split(' ').collect();
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.starts_with("v1,")));
    assert_ne!(parts[0], parts[1]);
}

#[test]
fn webhook_signatures_are_off_unless_enabled_and_bad_secrets_are_named() {
    assert!(signer().webhook_signature("msg_1", 1, b"{}").is_none());
    let err = load(&config(&["whsec_not base64!"])).err().unwrap();
    assert!(err.to_string().contains("secrets[0]"), "{err}");
}
