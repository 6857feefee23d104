//! Authenticated callbacks: mutual TLS, asymmetric keys with a JWKS and rotation, Standard
//! Webhooks signatures checked by an independent implementation, egress limits, the circuit
//! breaker, and 401 handling.

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::pki::{self, Ca};

fn tls_toml(ca: &std::path::Path, client: Option<(&std::path::Path, &std::path::Path)>) -> String {
    let mut text = format!(
        "\n[callbacks.tls]\nca_file = {:?}\n",
        ca.display().to_string()
    );
    if let Some((cert, key)) = client {
        text += &format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
    }
    text
}

async fn delivery(sidecar: &Sidecar, job_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually("the delivery", || async {
        let (_, job) = sidecar.get(&format!("/jobs/{job_id}")).await;
        done(&job["delivery"]).then(|| job["delivery"].clone())
    })
    .await
}

/// Triggers a failing job and returns its completion delivery once one attempt was made.
async fn first_attempt(sidecar: &Sidecar, receiver: &Receiver) -> Value {
    let body = trigger(receiver, "failing_agent");
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, StatusCode::ACCEPTED);
    delivery(sidecar, body["job_id"].as_str().unwrap(), |d| {
        d["attempts"].as_u64() >= Some(1)
    })
    .await
}

struct MtlsSetup {
    receiver: Receiver,
    server_ca: Ca,
    client_ca: Ca,
    dir: tempfile::TempDir,
}

async fn mtls_receiver() -> MtlsSetup {
    let server_ca = Ca::new("rails-ca");
    let client_ca = Ca::new("sidecar-clients-ca");
    let server = server_ca.leaf(&["127.0.0.1"]);
    let receiver = Receiver::start_tls(pki::acceptor(&server, Some(&client_ca))).await;
    MtlsSetup {
        receiver,
        server_ca,
        client_ca,
        dir: tempfile::tempdir().unwrap(),
    }
}

#[tokio::test]
async fn callbacks_go_over_mutual_tls_with_the_configured_client_certificate() {
    let s = mtls_receiver().await;
    let client = s.client_ca.leaf(&["agent-sidecar"]);
    let ca = pki::write(s.dir.path(), "rails-ca.pem", &s.server_ca.pem());
    let cert = pki::write(s.dir.path(), "client.pem", &client.cert_pem);
    let key = pki::write(s.dir.path(), "client.key", &client.key_pem);
    let sidecar = Sidecar::start_with(&s.receiver, &[], &tls_toml(&ca, Some((&cert, &key)))).await;
    let body = trigger(&s.receiver, "failing_agent");
    let hit = run_job(&sidecar, &s.receiver, &body).await;
    verifier()
        .verify_callback(hit.authorization.as_deref(), &hit.body)
        .unwrap();
    assert!(
        !s.receiver.hits("/progress").is_empty(),
        "progress goes over mTLS too"
    );
}

#[tokio::test]
async fn a_receiver_requiring_a_client_certificate_refuses_a_sidecar_without_one() {
    let s = mtls_receiver().await;
    let ca = pki::write(s.dir.path(), "rails-ca.pem", &s.server_ca.pem());
    let sidecar = Sidecar::start_with(&s.receiver, &[], &tls_toml(&ca, None)).await;
    let d = first_attempt(&sidecar, &s.receiver).await;
    assert_eq!(d["state"], "pending", "{d}");
    assert!(
        d["last_status_code"].is_null(),
        "no HTTP exchange without the handshake: {d}"
    );
    assert!(s.receiver.hits("/completion").is_empty());
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let s = mtls_receiver().await;
    let client = s.client_ca.leaf(&["agent-sidecar"]);
    let other_ca = Ca::new("someone-else");
    let ca = pki::write(s.dir.path(), "other-ca.pem", &other_ca.pem());
    let cert = pki::write(s.dir.path(), "client.pem", &client.cert_pem);
    let key = pki::write(s.dir.path(), "client.key", &client.key_pem);
    let sidecar = Sidecar::start_with(&s.receiver, &[], &tls_toml(&ca, Some((&cert, &key)))).await;
    let d = first_attempt(&sidecar, &s.receiver).await;
    let error = d["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    assert!(s.receiver.hits("/completion").is_empty());
}

fn key_toml(dir: &std::path::Path, keys: &[(&str, &str, &str, bool)]) -> String {
    keys.iter()
        .map(|(kid, alg, pem, signing)| {
            let path = pki::write(dir, &format!("{kid}.pem"), pem);
            format!(
                "\n[[callbacks.jwt.keys]]\nkid = \"{kid}\"\nalgorithm = \"{alg}\"\nprivate_key_file = {:?}\nsigning = {signing}\n",
                path.display().to_string()
            )
        })
        .collect()
}

async fn jwks(sidecar: &Sidecar) -> jsonwebtoken::jwk::JwkSet {
    let (status, body) = sidecar.get("/.well-known/jwks.json").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_value(body).unwrap()
}

fn jwks_verifier(set: &jsonwebtoken::jwk::JwkSet) -> agent_sidecar::delivery::sign::Verifier {
    agent_sidecar::delivery::sign::Verifier::from_jwks(set, ISSUER, AUDIENCE).unwrap()
}

#[tokio::test]
async fn completions_signed_with_rs256_es256_and_eddsa_verify_against_the_jwks() {
    for alg in ["RS256", "ES256", "EdDSA"] {
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let keys = key_toml(dir.path(), &[("k1", alg, &pki::signing_key(alg), true)]);
        let sidecar = Sidecar::start_with(&receiver, &[], &keys).await;
        let body = trigger(&receiver, "failing_agent");
        let hit = run_job(&sidecar, &receiver, &body).await;
        let set = jwks(&sidecar).await;
        assert_eq!(set.keys.len(), 1);
        let header = jsonwebtoken::decode_header(
            hit.authorization
                .as_deref()
                .unwrap()
                .trim_start_matches("Bearer "),
        )
        .unwrap();
        assert_eq!(format!("{:?}", header.alg), alg);
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let claims = jwks_verifier(&set)
            .verify_callback(hit.authorization.as_deref(), &hit.body)
            .unwrap();
        assert_eq!(claims.sub, body["job_id"].as_str().unwrap(), "{alg}");
        let sig = hit.json()["sig"].as_str().unwrap().to_owned();
        assert_eq!(
            jwks_verifier(&set).verify_sig(&sig).unwrap().status,
            "failed",
            "{alg}"
        );
        assert!(
            verifier()
                .verify_callback(hit.authorization.as_deref(), &hit.body)
                .is_err(),
            "not HS256 any more"
        );
    }
}

#[tokio::test]
async fn during_a_key_rotation_old_and_new_tokens_verify_until_the_old_key_is_removed() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (pki::signing_key("EdDSA"), pki::signing_key("ES256"));
    let sidecar = Sidecar::start_with(
        &receiver,
        &[],
        &key_toml(dir.path(), &[("old", "EdDSA", &old, true)]),
    )
    .await;
    let first = run_job(&sidecar, &receiver, &trigger(&receiver, "failing_agent")).await;

    sidecar.reconfigure(
        &receiver,
        &key_toml(
            dir.path(),
            &[("old", "EdDSA", &old, false), ("new", "ES256", &new, true)],
        ),
    );
    let set = eventually("the new key in the JWKS", || async {
        let set = jwks(&sidecar).await;
        (set.keys.len() == 2).then_some(set)
    })
    .await;
    let second = run_job(&sidecar, &receiver, &trigger(&receiver, "failing_agent")).await;
    let both = jwks_verifier(&set);
    both.verify_callback(first.authorization.as_deref(), &first.body)
        .expect("old token verifies during rotation");
    let claims = both
        .verify_callback(second.authorization.as_deref(), &second.body)
        .expect("new token verifies");
    let kid = jsonwebtoken::decode_header(
        second
            .authorization
            .as_deref()
            .unwrap()
            .trim_start_matches("Bearer "),
    )
    .unwrap()
    .kid;
    assert_eq!(kid.as_deref(), Some("new"));
    assert_eq!(
        claims.event,
        agent_sidecar::delivery::sign::CallbackEvent::Completion
    );

    sidecar.reconfigure(
        &receiver,
        &key_toml(dir.path(), &[("new", "ES256", &new, true)]),
    );
    let set = eventually("the old key gone", || async {
        let set = jwks(&sidecar).await;
        (set.keys.len() == 1).then_some(set)
    })
    .await;
    assert!(
        jwks_verifier(&set)
            .verify_sig(first.json()["sig"].as_str().unwrap())
            .is_err(),
        "old key removed"
    );
    jwks_verifier(&set)
        .verify_sig(second.json()["sig"].as_str().unwrap())
        .unwrap();
}

#[tokio::test]
async fn a_broken_key_file_on_reload_keeps_the_old_keys_and_says_why() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_with(
        &receiver,
        &[],
        &key_toml(
            dir.path(),
            &[("k1", "ES256", &pki::signing_key("ES256"), true)],
        ),
    )
    .await;
    sidecar.reconfigure(
        &receiver,
        &key_toml(
            dir.path(),
            &[(
                "k1",
                "ES256",
                "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
                true,
            )],
        ),
    );
    eventually("the refusal in the log", || async {
        sidecar.log().contains("reload refused").then_some(())
    })
    .await;
    assert!(
        sidecar.log().contains("key k1"),
        "the log names the key: {}",
        sidecar.log()
    );
    let hit = run_job(&sidecar, &receiver, &trigger(&receiver, "failing_agent")).await;
    let set = jwks(&sidecar).await;
    jwks_verifier(&set)
        .verify_callback(hit.authorization.as_deref(), &hit.body)
        .expect("still signed with the old key");
}

#[tokio::test]
async fn standard_webhooks_headers_verify_with_the_reference_python_library_and_ed25519() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = key_toml(
        dir.path(),
        &[("ed", "EdDSA", &pki::signing_key("EdDSA"), false)],
    ) + "\n[callbacks.standard_webhooks]\nenabled = true\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=\"]\n";
    let sidecar = Sidecar::start_with(&receiver, &[], &extra).await;
    let hit = run_job(&sidecar, &receiver, &trigger(&receiver, "failing_agent")).await;
    let header = |name: &str| hit.headers[name].to_str().unwrap().to_owned();
    let signature = header("webhook-signature");
    assert_eq!(
        signature
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .count(),
        2,
        "both secrets sign: {signature}"
    );
    assert_eq!(
        signature
            .split(' ')
            .filter(|s| s.starts_with("v1a,"))
            .count(),
        1,
        "{signature}"
    );
    let ed_public = jwks(&sidecar).await.keys[0].clone();
    let x = match &ed_public.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => p.x.clone(),
        other => panic!("{other:?}"),
    };
    let script = repo().join("tests/scripts/verify_standard_webhooks.py");
    for secret in [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=",
    ] {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args([
                secret,
                &x,
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &signature,
            ])
            .arg(String::from_utf8(hit.body.to_vec()).unwrap())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("v1 ok") && text.contains("v1a ok"), "{text}");
    }
}

#[tokio::test]
async fn a_hostname_resolving_to_loopback_is_refused_unless_its_network_is_allowed() {
    let receiver = Receiver::start().await;
    let port = receiver.origin.rsplit(':').next().unwrap().to_owned();
    let named = format!("http://localhost:{port}");
    let origins = format!("[\"{named}\"]");
    let mut body = trigger(&receiver, "failing_agent");
    body["callback_urls"]["progress"] = format!("{named}/progress").into();
    body["callback_urls"]["completion"] = format!("{named}/completion").into();

    let guarded =
        Sidecar::start_with_env(&receiver, &[("CALLBACKS__ALLOWED_ORIGINS", &origins)]).await;
    guarded.write_job(&body);
    assert_eq!(guarded.post_trigger(&body).await.0, StatusCode::ACCEPTED);
    // Issue 23: no retry makes a private address public; dead-lettered at the first attempt.
    let d = delivery(&guarded, body["job_id"].as_str().unwrap(), |d| {
        d["attempts"].as_u64() >= Some(1) && d["state"] != "pending"
    })
    .await;
    assert_eq!(
        (d["state"].as_str(), d["attempts"].as_u64()),
        (Some("dead"), Some(1)),
        "{d}"
    );
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("allowed_networks"),
        "{d}"
    );
    assert!(receiver.hits("/completion").is_empty());

    let allowed = Sidecar::start_with_env(
        &receiver,
        &[
            ("CALLBACKS__ALLOWED_ORIGINS", &origins),
            (
                "CALLBACKS__ALLOWED_NETWORKS",
                "[\"127.0.0.0/8\", \"::1/128\"]",
            ),
        ],
    )
    .await;
    let mut body = body.clone();
    body["job_id"] = uuid::Uuid::new_v4().to_string().into();
    run_job(&allowed, &receiver, &body).await;
}

#[tokio::test]
async fn an_origin_failing_again_and_again_is_held_by_the_circuit_breaker() {
    let receiver = Receiver::answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let sidecar = Sidecar::start_with_env(
        &receiver,
        &[
            ("CALLBACKS__BREAKER_THRESHOLD", "2"),
            ("CALLBACKS__BREAKER_COOLDOWN", "1h"),
            ("CALLBACKS__RETRY_SCHEDULE", "[\"0s\", \"100ms\"]"),
        ],
    )
    .await;
    let first = trigger(&receiver, "failing_agent");
    run_job(&sidecar, &receiver, &first).await;
    delivery(&sidecar, first["job_id"].as_str().unwrap(), |d| {
        d["attempts"] == 2
    })
    .await;
    let second = trigger(&receiver, "failing_agent");
    sidecar.write_job(&second);
    assert_eq!(sidecar.post_trigger(&second).await.0, StatusCode::ACCEPTED);
    let held = delivery(&sidecar, second["job_id"].as_str().unwrap(), |d| {
        let next = d["next_attempt_at"]
            .as_str()
            .and_then(|t| t.parse::<agent_sidecar::contract::Timestamp>().ok());
        next.is_some_and(|n| {
            n.unix_ms() > agent_sidecar::contract::Timestamp::now().unix_ms() + 30 * 60 * 1000
        })
    })
    .await;
    assert_eq!(held["attempts"], 0, "held without an attempt: {held}");
    assert_eq!(
        receiver.hits("/completion").len(),
        2,
        "no third call to a failing origin"
    );
}

#[tokio::test]
async fn a_401_reloads_keys_and_is_retried_once_then_dead_lettered() {
    let receiver = Receiver::answering(StatusCode::UNAUTHORIZED).await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    run_job(&sidecar, &receiver, &body).await;
    let dead = delivery(&sidecar, body["job_id"].as_str().unwrap(), |d| {
        d["state"] == "dead"
    })
    .await;
    assert_eq!(dead["attempts"], 2, "{dead}");
    let codes: Vec<&Value> = dead["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&Value::from(401), &Value::from(401)]);
    assert!(
        sidecar
            .log()
            .contains("callback keys and certificates reloaded")
    );
}

/// nginx as Rails usually sits behind it: TLS with `ssl_verify_client on`, proxying to the app.
struct Nginx {
    child: std::process::Child,
    origin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(server: &pki::Leaf, client_ca: &Ca, upstream: &str) -> Nginx {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is installed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cert = pki::write(dir.path(), "server.pem", &server.cert_pem);
    let key = pki::write(dir.path(), "server.key", &server.key_pem);
    let ca = pki::write(dir.path(), "clients-ca.pem", &client_ca.pem());
    let d = dir.path().display();
    let conf = format!(
        "master_process off;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             ssl_client_certificate {ca};\n    ssl_verify_client on;\n\
             location / {{ proxy_pass {upstream}; }}\n  }}\n}}\n",
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
    );
    let conf_path = pki::write(dir.path(), "nginx.conf", &conf);
    let child = std::process::Command::new(nginx)
        .args(["-p", &d.to_string(), "-c"])
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Nginx {
        child,
        origin: format!("https://127.0.0.1:{port}"),
        _dir: dir,
    }
}

#[tokio::test]
async fn nginx_with_ssl_verify_client_accepts_the_sidecar_and_rejects_a_client_without_a_certificate()
 {
    let app = Receiver::start().await;
    let (server_ca, client_ca) = (Ca::new("rails-ca"), Ca::new("clients-ca"));
    let nginx = start_nginx(&server_ca.leaf(&["127.0.0.1"]), &client_ca, &app.origin);
    let dir = tempfile::tempdir().unwrap();
    let client = client_ca.leaf(&["agent-sidecar"]);
    let ca = pki::write(dir.path(), "rails-ca.pem", &server_ca.pem());
    let cert = pki::write(dir.path(), "client.pem", &client.cert_pem);
    let key = pki::write(dir.path(), "client.key", &client.key_pem);

    // A client without a certificate: nginx answers 400 and never reaches the app.
    agent_sidecar::install_crypto_provider();
    let anonymous = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(server_ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let status = eventually("nginx to listen", || async {
        anonymous
            .post(format!("{}/completion", nginx.origin))
            .body("{}")
            .send()
            .await
            .ok()
            .map(|r| r.status())
    })
    .await;
    assert_eq!(
        status.as_u16(),
        400,
        "nginx refuses a client without a certificate"
    );
    assert!(app.hits("/completion").is_empty());

    let origins = format!("[\"{}\"]", nginx.origin);
    let sidecar = Sidecar::start_with(
        &app,
        &[("CALLBACKS__ALLOWED_ORIGINS", &origins)],
        &tls_toml(&ca, Some((&cert, &key))),
    )
    .await;
    let mut body = trigger(&app, "failing_agent");
    body["callback_urls"]["progress"] = format!("{}/progress", nginx.origin).into();
    body["callback_urls"]["completion"] = format!("{}/completion", nginx.origin).into();
    let hit = run_job(&sidecar, &app, &body).await;
    verifier()
        .verify_callback(hit.authorization.as_deref(), &hit.body)
        .unwrap();
}

#[tokio::test]
async fn replacing_the_client_certificate_files_switches_callbacks_without_a_restart_and_a_broken_key_is_refused()
 {
    let s = mtls_receiver().await;
    // Start with a certificate the receiver does not trust: completions stay pending.
    let stranger = Ca::new("not-trusted").leaf(&["agent-sidecar"]);
    let ca = pki::write(s.dir.path(), "rails-ca.pem", &s.server_ca.pem());
    let cert = pki::write(s.dir.path(), "client.pem", &stranger.cert_pem);
    let key = pki::write(s.dir.path(), "client.key", &stranger.key_pem);
    let sidecar = Sidecar::start_with(&s.receiver, &[], &tls_toml(&ca, Some((&cert, &key)))).await;
    let refused = first_attempt(&sidecar, &s.receiver).await;
    assert_eq!(refused["state"], "pending", "{refused}");

    // Rotate the files in place (no SIGHUP): the next attempt uses the new certificate.
    let trusted = s.client_ca.leaf(&["agent-sidecar"]);
    pki::write(s.dir.path(), "client.pem", &trusted.cert_pem);
    pki::write(s.dir.path(), "client.key", &trusted.key_pem);
    s.receiver
        .wait_until("the retried completion over the new certificate", |hits| {
            hits.iter().any(|h| h.path == "/completion")
        })
        .await;

    // A broken key file is refused with one log line; the working certificate stays.
    pki::write(
        s.dir.path(),
        "client.key",
        "-----BEGIN PRIVATE KEY-----\nnot a key\n",
    );
    eventually("the refusal to be logged", || async {
        sidecar
            .log()
            .lines()
            .any(|l| l.contains("reload refused") && l.contains("client_key_file"))
            .then_some(())
    })
    .await;
    let body = trigger(&s.receiver, "failing_agent");
    let hit = run_job(&sidecar, &s.receiver, &body).await;
    assert_eq!(hit.json()["status"], "failed", "callbacks still go out");
}

#[tokio::test]
async fn a_receiver_answering_a_redirect_is_never_followed() {
    for redirect in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
        let receiver = Receiver::answering(redirect).await;
        let sidecar = Sidecar::start(&receiver).await;
        let body = trigger(&receiver, "failing_agent");
        run_job(&sidecar, &receiver, &body).await;
        let dead = delivery(&sidecar, body["job_id"].as_str().unwrap(), |d| {
            d["state"] == "dead"
        })
        .await;
        assert_eq!(
            dead["history"][0]["status_code"],
            redirect.as_u16(),
            "{dead}"
        );
        assert!(
            receiver.hits("/landed").is_empty(),
            "{redirect}: the Location was requested"
        );
    }
}

#[tokio::test]
async fn an_origin_removed_by_a_reload_is_refused_at_send_time() {
    let receiver = Receiver::answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let sidecar = Sidecar::start_with_env(
        &receiver,
        &[("CALLBACKS__RETRY_SCHEDULE", "[\"0s\", \"300ms\"]")],
    )
    .await;
    let body = trigger(&receiver, "failing_agent");
    run_job(&sidecar, &receiver, &body).await;
    let job_id = body["job_id"].as_str().unwrap();
    // Rails' origin leaves the allowlist while its completion waits for a retry.
    let text = std::fs::read_to_string(&sidecar.config_path)
        .unwrap()
        .replace(
            &format!("allowed_origins = [\"{}\"]", receiver.origin),
            "allowed_origins = [\"http://rails.invalid:3000\"]",
        );
    std::fs::write(&sidecar.config_path, text).unwrap();
    sidecar.signal("-HUP");
    eventually("the reload", || async {
        sidecar.log().contains("reloaded").then_some(())
    })
    .await;
    let before = receiver.hits("/completion").len();
    receiver.set_completion_status(StatusCode::OK);
    let refused = delivery(&sidecar, job_id, |d| {
        d["history"].as_array().is_some_and(|h| {
            h.iter()
                .any(|a| a["error"].as_str().is_some_and(|e| e.contains("allowed")))
        })
    })
    .await;
    assert_ne!(refused["state"], "delivered", "{refused}");
    assert_eq!(
        receiver.hits("/completion").len(),
        before,
        "no request to a removed origin"
    );
    // And a new trigger naming it is refused from the reload on.
    let again = trigger(&receiver, "failing_agent");
    sidecar.write_job(&again);
    let (status, problem) = sidecar.post_trigger(&again).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/callback_urls/progress");
}
