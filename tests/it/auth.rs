//! Inbound authentication: bearer tokens from Rails, agent scoping, client certificates.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::pki::{self, Ca};

pub(crate) const INBOUND_SECRET: &str = "inbound-secret-0123456789abcdef-0123456789";

pub(crate) fn auth_toml(extra: &str) -> String {
    format!(
        "\n[server.auth]\nissuer = \"rails\"\naudience = \"agent-sidecar\"\nsecret = \"{INBOUND_SECRET}\"\n{extra}"
    )
}

pub(crate) fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

pub(crate) fn claims() -> Value {
    json!({"iss": "rails", "aud": "agent-sidecar", "sub": "rails-app", "exp": now() + 300})
}

pub(crate) fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn get_with(sidecar: &Sidecar, path: &str, token: Option<&str>) -> (u16, Value, String) {
    let mut request = client().get(format!("{}{path}", sidecar.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        challenge,
    )
}

#[tokio::test]
async fn missing_expired_wrong_audience_and_badly_signed_tokens_get_401_with_the_reason() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims();
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = claims();
    wrong_issuer["iss"] = json!("mallory");
    let cases = [
        (None, "missing"),
        (Some("not-a-jwt".to_owned()), "malformed"),
        (Some(hs256(&expired, INBOUND_SECRET)), "expired"),
        (
            Some(hs256(&wrong_audience, INBOUND_SECRET)),
            "wrong_audience",
        ),
        (Some(hs256(&wrong_issuer, INBOUND_SECRET)), "wrong_issuer"),
        (
            Some(hs256(&claims(), "another-secret-0123456789abcdef-01234567")),
            "bad_signature",
        ),
    ];
    for (token, reason) in cases {
        let (status, problem, challenge) = get_with(&sidecar, "/jobs", token.as_deref()).await;
        assert_eq!(status, 401, "{reason}: {problem}");
        assert_eq!(problem["reason"], reason);
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        if let Some(token) = &token {
            assert!(
                !problem.to_string().contains(token.as_str()),
                "the token is never echoed"
            );
        }
    }
    let (status, list, _) =
        get_with(&sidecar, "/jobs", Some(&hs256(&claims(), INBOUND_SECRET))).await;
    assert_eq!(status, 200, "{list}");
    for public in ["/health", "/ready", "/metrics", "/.well-known/jwks.json"] {
        let response = client()
            .get(format!("{}{public}", sidecar.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{public} needs no token");
    }
}

/// Issue 23: the scheme of `Authorization` is case-insensitive (RFC 7235 §2.1).
#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    let token = hs256(&claims(), INBOUND_SECRET);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = client()
            .get(format!("{}/jobs", sidecar.base))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let response = client()
        .get(format!("{}/jobs", sidecar.base))
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "another scheme is no bearer token");
    // A trigger refused for its credentials is counted and logged like any refused trigger.
    let response = client()
        .post(format!("{}/agents/trigger", sidecar.base))
        .header("authorization", format!("Basic {token}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let refused = metric(
        &sidecar,
        "agent_sidecar_triggers_refused_total",
        &[("reason", "unauthorized")],
    )
    .await;
    assert_eq!(refused, 1.0);
    let log = sidecar.log();
    assert!(log.contains("trigger refused (unauthorized)"), "{log}");
    assert!(!log.contains(&token), "the credential is never logged");
}

#[tokio::test]
async fn a_token_scoped_to_some_agents_may_trigger_only_those() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    let mut scoped = claims();
    scoped["agents"] = json!(["ticker"]);
    let token = hs256(&scoped, INBOUND_SECRET);
    let post = |body: Value| {
        client()
            .post(format!("{}/agents/trigger", sidecar.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let refused = trigger(&receiver, "napper");
    sidecar.write_job(&refused);
    let response = post(refused).await.unwrap();
    assert_eq!(response.status(), 403);
    let problem: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/agent_name");
    assert!(problem["detail"].as_str().unwrap().contains("ticker"));

    let allowed = trigger(&receiver, "ticker");
    sidecar.write_job(&allowed);
    assert_eq!(post(allowed).await.unwrap().status(), 202);
}

#[tokio::test]
async fn tokens_signed_with_a_configured_public_key_are_accepted_and_keys_reload_on_sighup() {
    let receiver = Receiver::start().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = pki::write(dir.path(), "rails.pub.pem", &key.public_key_pem());
    let keys = format!("public_keys = [{:?}]\n", public.display().to_string());
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml(&keys)).await;
    let eddsa = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims(),
        &EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(get_with(&sidecar, "/jobs", Some(&eddsa)).await.0, 200);

    // Rails rotates: a new key is added; after SIGHUP its tokens are accepted beside the old.
    let next = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let next_public = pki::write(dir.path(), "rails-next.pub.pem", &next.public_key_pem());
    let es256 = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(next.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(get_with(&sidecar, "/jobs", Some(&es256)).await.0, 401);
    let both = format!(
        "public_keys = [{:?}, {:?}]\n",
        public.display().to_string(),
        next_public.display().to_string()
    );
    sidecar.reconfigure(&receiver, &auth_toml(&both));
    eventually("the added key to be accepted", || async {
        (get_with(&sidecar, "/jobs", Some(&es256)).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(get_with(&sidecar, "/jobs", Some(&eddsa)).await.0, 200);

    // Then the old public key is removed; after SIGHUP its tokens are refused.
    let only_next = format!("public_keys = [{:?}]\n", next_public.display().to_string());
    sidecar.reconfigure(&receiver, &auth_toml(&only_next));
    eventually("the removed key to be refused", || async {
        let (status, problem, _) = get_with(&sidecar, "/jobs", Some(&eddsa)).await;
        (status == 401 && problem["reason"] == "bad_signature").then_some(())
    })
    .await;
    assert_eq!(get_with(&sidecar, "/jobs", Some(&es256)).await.0, 200);
    let hs = hs256(&claims(), INBOUND_SECRET);
    assert_eq!(get_with(&sidecar, "/jobs", Some(&hs)).await.0, 200);
}

/// A listener certificate from one CA and a client CA, as `[server.tls]` TOML.
struct TlsSetup {
    server_ca: Ca,
    client_ca: Ca,
    toml: String,
    _dir: tempfile::TempDir,
}

impl TlsSetup {
    fn new(require_client_cert: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = Ca::new("sidecar ca");
        let client_ca = Ca::new("rails client ca");
        let server = server_ca.leaf(&["127.0.0.1"]);
        let path =
            |name: &str, text: &str| pki::write(dir.path(), name, text).display().to_string();
        let toml = format!(
            "\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nrequire_client_cert = {require_client_cert}\n",
            path("server.pem", &server.cert_pem),
            path("server.key", &server.key_pem),
            path("client-ca.pem", &client_ca.pem()),
        );
        Self {
            server_ca,
            client_ca,
            toml,
            _dir: dir,
        }
    }
}

/// The error and every cause under it, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = Vec::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        chain.push(e.to_string());
        cause = e.source();
    }
    chain.join(": ")
}

/// The TLS alert the server sent, as the client's error chain names it: a refused handshake,
/// not any error (a refused connection or a timeout would not say "alert").
fn tls_alert(error: reqwest::Error) -> String {
    let text = error_chain(&error);
    assert!(
        text.contains("received fatal alert"),
        "not a TLS alert: {text}"
    );
    text
}

fn tls_client(ca: &Ca, identity: Option<&pki::Leaf>) -> reqwest::Client {
    agent_sidecar::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()]);
    if let Some(leaf) = identity {
        let pem = format!("{}\n{}", leaf.cert_pem, leaf.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn with_client_auth_required_only_a_certificate_from_the_configured_ca_gets_through() {
    let receiver = Receiver::start().await;
    let tls = TlsSetup::new(true);
    let sidecar = Sidecar::start_with(&receiver, &[], &tls.toml).await;
    let (server_ca, client_ca) = (&tls.server_ca, &tls.client_ca);
    assert!(sidecar.base.starts_with("https://"), "{}", sidecar.base);
    let url = format!("{}/jobs", sidecar.base);

    let anonymous = tls_client(server_ca, None).get(&url).send().await;
    let alert = tls_alert(anonymous.expect_err("no client certificate: no handshake"));
    assert!(alert.contains("CertificateRequired"), "{alert}");
    let stranger = Ca::new("other ca").leaf(&["stranger"]);
    let foreign = tls_client(server_ca, Some(&stranger))
        .get(&url)
        .send()
        .await;
    let alert = tls_alert(foreign.expect_err("a certificate from another CA: no handshake"));
    assert!(alert.contains("UnknownCA"), "{alert}");

    let rails = client_ca.leaf(&["rails"]);
    let response = tls_client(server_ca, Some(&rails))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the certificate authenticates the caller"
    );
}

#[tokio::test]
async fn with_optional_client_auth_a_tls_client_without_a_certificate_needs_a_token() {
    let receiver = Receiver::start().await;
    let tls = TlsSetup::new(false);
    let sidecar = Sidecar::start_with(&receiver, &[], &(tls.toml.clone() + &auth_toml(""))).await;
    let (server_ca, client_ca) = (&tls.server_ca, &tls.client_ca);
    let url = format!("{}/jobs", sidecar.base);

    let anonymous = tls_client(server_ca, None).get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "TLS alone does not authenticate");
    let problem: Value = serde_json::from_slice(&anonymous.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["reason"], "missing");

    let with_token = tls_client(server_ca, None)
        .get(&url)
        .bearer_auth(hs256(&claims(), INBOUND_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);

    let rails = client_ca.leaf(&["rails"]);
    let with_cert = tls_client(server_ca, Some(&rails))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(
        with_cert.status(),
        200,
        "a verified certificate authenticates"
    );
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_still_accepted() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("leeway = \"60s\"\n")).await;
    let mut barely = claims();
    barely["exp"] = json!(now() - 10);
    let (status, _, _) = get_with(&sidecar, "/jobs", Some(&hs256(&barely, INBOUND_SECRET))).await;
    assert_eq!(status, 200);
    let mut long_ago = claims();
    long_ago["exp"] = json!(now() - 120);
    let (status, problem, _) =
        get_with(&sidecar, "/jobs", Some(&hs256(&long_ago, INBOUND_SECRET))).await;
    assert_eq!((status, problem["reason"].as_str()), (401, Some("expired")));
}

/// Runs the CLI with `args` and `env`; returns its exit status success, stdout and stderr.
pub(crate) fn sidecar_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(args)
        .env_remove("AGENT_SIDECAR_TOKEN")
        .env_remove("AGENT_SIDECAR_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_takes_its_token_from_the_flag_the_environment_or_a_config() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    let config = sidecar.config_path.display().to_string();
    let url = sidecar.base.as_str();

    let (ok, _, err) = sidecar_cli(&["jobs", "list", "--url", url], &[]);
    assert!(!ok && err.contains("no bearer token"), "{err}");

    let (ok, minted, err) =
        sidecar_cli(&["token", "mint", "--config", &config, "--ttl", "2m"], &[]);
    assert!(ok, "{err}");
    let token = minted.trim();
    assert_eq!(get_with(&sidecar, "/jobs", Some(token)).await.0, 200);

    let body = trigger(&receiver, "napper");
    sidecar.write_job(&body);
    let posted = client()
        .post(format!("{url}/agents/trigger"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let job_id = body["job_id"].as_str().unwrap();

    let (ok, listed, err) = sidecar_cli(&["jobs", "list", "--url", url, "--token", token], &[]);
    assert!(ok && listed.contains(job_id), "{listed}{err}");
    let (ok, shown, err) = sidecar_cli(
        &["jobs", "show", job_id, "--url", url],
        &[("AGENT_SIDECAR_TOKEN", token)],
    );
    assert!(ok && shown.contains("\"job_id\""), "{shown}{err}");
    // A config alongside --url: its secret mints the call's token.
    let (ok, out, err) = sidecar_cli(
        &["jobs", "cancel", job_id, "--url", url, "--config", &config],
        &[],
    );
    assert!(ok, "{out}{err}");
    // A running job ends canceled once its agent is gone: its completion says so.
    assert_eq!(
        receiver.completion(job_id).await.json()["status"],
        "canceled"
    );
    let (ok, listed, err) = sidecar_cli(
        &[
            "jobs", "list", "--state", "canceled", "--json", "--url", url, "--config", &config,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(listed.lines().next().unwrap_or("null")).unwrap();
    assert_eq!(first["job_id"], job_id, "{listed}");
}

#[tokio::test]
async fn a_scoped_minted_token_may_trigger_only_its_agents() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    let config = sidecar.config_path.display().to_string();
    let (ok, minted, err) = sidecar_cli(
        &["token", "mint", "--config", &config, "--agent", "ticker"],
        &[],
    );
    assert!(ok, "{err}");
    let refused = trigger(&receiver, "napper");
    sidecar.write_job(&refused);
    let posted = client()
        .post(format!("{}/agents/trigger", sidecar.base))
        .bearer_auth(minted.trim())
        .header("content-type", "application/json")
        .body(refused.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 403);
}

#[test]
fn minting_without_a_secret_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let text = Sidecar::config_text(dir.path(), &dir.path().join("s.db"), "http://127.0.0.1:9");
    std::fs::write(&config, text).unwrap();
    let (ok, _, err) = sidecar_cli(
        &["token", "mint", "--config", config.to_str().unwrap()],
        &[],
    );
    assert!(!ok, "{err}");
    assert_eq!(
        err.trim(),
        "error: the config has no [server.auth]: the API asks for no token"
    );
}

#[tokio::test]
async fn a_swapped_listener_certificate_is_served_on_new_handshakes() {
    let receiver = Receiver::start().await;
    let tls = TlsSetup::new(false);
    let sidecar = Sidecar::start_with(&receiver, &[], &(tls.toml.clone() + &auth_toml(""))).await;
    let url = format!("{}/jobs", sidecar.base);
    let token = hs256(&claims(), INBOUND_SECRET);
    let get = |ca: &Ca| {
        let (url, token) = (url.clone(), token.clone());
        let client = tls_client(ca, None);
        async move { client.get(&url).bearer_auth(token).send().await }
    };
    assert_eq!(get(&tls.server_ca).await.unwrap().status(), 200);

    let next_ca = Ca::new("next sidecar ca");
    let next = next_ca.leaf(&["127.0.0.1"]);
    pki::write(tls._dir.path(), "server.key", &next.key_pem);
    pki::write(tls._dir.path(), "server.pem", &next.cert_pem);
    sidecar.signal("-HUP");
    eventually("the new certificate on new handshakes", || async {
        get(&next_ca)
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(drop)
    })
    .await;
    let old = get(&tls.server_ca)
        .await
        .expect_err("the old CA no longer verifies it");
    let chain = error_chain(&old);
    assert!(chain.contains("UnknownIssuer"), "{chain}");
}

#[tokio::test]
async fn a_reload_that_would_turn_auth_off_is_refused_and_auth_stays_on() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    sidecar.reconfigure(&receiver, "");
    eventually("the refusal in the log", || async {
        let log = sidecar.log();
        log.lines()
            .any(|l| {
                l.contains("reload refused")
                    && l.contains(
                        "turning [server.tls] or API authentication on or off needs a restart",
                    )
            })
            .then_some(())
    })
    .await;
    assert_eq!(get_with(&sidecar, "/jobs", None).await.0, 401);
}
