//! `agent-sidecar contract verify-consumer` against the Rails reference consumer (every case
//! passes, with a shared secret and with the sidecar's JWKS) and against broken consumers (the
//! right cases fail, and only those).

use axum::http::StatusCode;

use super::{Rails, rails_listener};
use crate::helpers::{AUDIENCE, ISSUER, Sidecar};
use crate::pki;

const SECRET: &str = "consumer-check-secret-0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Runs the command against an app at `origin`; returns the exit code and the report.
async fn verify_consumer(origin: &str, signing: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["contract", "verify-consumer"])
        .args(["--progress-url", &format!("{origin}/agents/update/42")])
        .args(["--completion-url", &format!("{origin}/agents/completed/42")])
        .args(signing)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

/// The cases the report marks FAIL.
fn failed_cases(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL"))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

fn secret_args() -> Vec<&'static str> {
    vec![
        "--secret",
        SECRET,
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--webhook-secret",
        WEBHOOK_SECRET,
    ]
}

async fn rails_with_secret(extra_env: &[(&str, String)]) -> Rails {
    let mut env = vec![
        ("AGENT_SIDECAR_ISSUER", ISSUER.to_owned()),
        ("AGENT_SIDECAR_AUDIENCE", AUDIENCE.to_owned()),
        ("AGENT_SIDECAR_CALLBACK_SECRET", SECRET.to_owned()),
        ("AGENT_SIDECAR_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
    ];
    env.extend(extra_env.iter().cloned());
    Rails::start(rails_listener().0, &env).await
}

#[tokio::test]
async fn the_rails_reference_consumer_passes_every_case_with_a_shared_secret() {
    let rails = rails_with_secret(&[]).await;
    let (code, report) = verify_consumer(&rails.origin, &secret_args()).await;
    assert_eq!(code, 0, "{report}\n{}", rails.logs());
    assert!(report.contains("11 of 11 cases"), "{report}");
    assert!(failed_cases(&report).is_empty(), "{report}");
}

#[tokio::test]
async fn the_rails_reference_consumer_passes_every_case_against_the_sidecars_jwks() {
    let keys = tempfile::tempdir().unwrap();
    let key = pki::write(keys.path(), "rs256.pem", &pki::signing_key("RS256"));
    let (rails_listener, rails_addr) = rails_listener();
    let sidecar = Sidecar::start_for_origin(
        &format!("http://{rails_addr}"),
        &[],
        &format!(
            "\n[[callbacks.jwt.keys]]\nkid = \"check\"\nalgorithm = \"RS256\"\nprivate_key_file = {:?}\nsigning = true\n",
            key.display().to_string()
        ),
    );
    let rails = Rails::start(
        rails_listener,
        &[
            ("AGENT_SIDECAR_ISSUER", ISSUER.to_owned()),
            ("AGENT_SIDECAR_AUDIENCE", AUDIENCE.to_owned()),
            (
                "AGENT_SIDECAR_JWKS_URL",
                format!("{}/.well-known/jwks.json", sidecar.base),
            ),
        ],
    )
    .await;
    let config = sidecar.config_path.display().to_string();
    let (code, report) = verify_consumer(&rails.origin, &["--config", &config]).await;
    assert_eq!(code, 0, "{report}\n{}", rails.logs());
    assert!(failed_cases(&report).is_empty(), "{report}");
}

#[tokio::test]
async fn a_consumer_that_ignores_exp_fails_exactly_the_expired_token_case() {
    let rails = rails_with_secret(&[("AGENT_SIDECAR_LEEWAY", "86400".to_owned())]).await;
    let (code, report) = verify_consumer(&rails.origin, &secret_args()).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(failed_cases(&report), ["expired-token"], "{report}");
    assert!(report.contains("10 of 11 cases"), "{report}");
}

#[tokio::test]
async fn a_consumer_that_accepts_everything_fails_every_negative_case() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { StatusCode::OK });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (code, report) = verify_consumer(&origin, &secret_args()).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        failed_cases(&report),
        [
            "missing-token",
            "bad-signature",
            "expired-token",
            "wrong-audience",
            "tampered-body",
            "progress-bad-signature",
            "missing-job-name",
            "unknown-job-name",
        ],
        "{report}"
    );
}

#[tokio::test]
async fn verify_consumer_without_a_signing_key_is_one_readable_error() {
    let (code, report) = verify_consumer("http://127.0.0.1:9", &[]).await;
    assert_eq!(code, 2, "{report}");
    assert!(
        report.contains("--secret") && report.contains("--config"),
        "{report}"
    );
    assert!(!report.contains("panicked"), "{report}");
}
