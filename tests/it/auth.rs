//! Inbound authentication: bearer tokens from Rails, agent scoping, client certificates.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::pki::{self, Ca};

const INBOUND_SECRET: &str = "inbound-secret-0123456789abcdef-0123456789";

fn auth_toml(extra: &str) -> String {
    format!(
        "\n[server.auth]\nissuer = \"rails\"\naudience = \"agent-sidecar\"\nsecret = \"{INBOUND_SECRET}\"\n{extra}"
    )
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

fn claims() -> Value {
    json!({"iss": "rails", "aud": "agent-sidecar", "sub": "rails-app", "exp": now() + 300})
}

fn hs256(claims: &Value, secret: &str) -> String {
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

    // Rails rotates: the public key is removed; after SIGHUP its tokens are refused.
    sidecar.reconfigure(&receiver, &auth_toml(""));
    eventually("the removed key to be refused", || async {
        let (status, problem, _) = get_with(&sidecar, "/jobs", Some(&eddsa)).await;
        (status == 401 && problem["reason"] == "bad_signature").then_some(())
    })
    .await;
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
    assert!(anonymous.is_err(), "no client certificate: no handshake");
    let stranger = Ca::new("other ca").leaf(&["stranger"]);
    let foreign = tls_client(server_ca, Some(&stranger))
        .get(&url)
        .send()
        .await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA: no handshake"
    );

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
