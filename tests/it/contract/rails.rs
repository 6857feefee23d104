//! The consumer app generated with the `agent_sidecar` gem, on real Rails (Debian's Rails 6.1
//! under puma) with a real sidecar that asks Rails for tokens: jobs triggered through
//! `AgentSidecar.trigger` run to completion, failure and cancel; each handler runs exactly once
//! through ActiveJob although the sidecar re-delivers; an ActionCable subscriber sees the
//! progress, and only the job's own user may subscribe.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{LossyProxy, Rails, rails_listener};
use crate::helpers::{Sidecar, eventually};
use crate::pki;

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// `[server.auth] secret` of the sidecar: the gem mints a short-lived token per request.
const API_SECRET: &str = "rails-to-sidecar-secret-0123456789abcdef";

/// A sidecar signing with an ES256 key (Rails verifies against its JWKS) and Standard Webhooks,
/// calling Rails through a proxy that loses the first completion answer of every job; and the
/// Rails app, pointed at both. `mode` is how the Ruby client triggers: `http` or `folder`.
pub async fn rails_behind_lossy_proxy(mode: &str) -> (Sidecar, LossyProxy, Rails) {
    let env: &[(&str, &str)] = if mode == "folder" {
        &[
            ("STORAGE__FOLDER_TRIGGERS", "true"),
            ("STORAGE__RESCAN_INTERVAL", "1h"),
        ]
    } else {
        &[]
    };
    let (rails_listener, rails_addr) = rails_listener();
    let proxy = LossyProxy::start(format!("http://{rails_addr}")).await;
    let keys = tempfile::tempdir().unwrap();
    let key = pki::write(keys.path(), "es256.pem", &pki::signing_key("ES256"));
    let extra = format!(
        "\n[[callbacks.jwt.keys]]\nkid = \"rails-test\"\nalgorithm = \"ES256\"\nprivate_key_file = {:?}\nsigning = true\n\
         \n[callbacks.standard_webhooks]\nenabled = true\nsecrets = [\"{WEBHOOK_SECRET}\"]\n\
         \n[server.auth]\nissuer = \"rails\"\naudience = \"agent-sidecar\"\nsecret = \"{API_SECRET}\"\n",
        key.display().to_string()
    );
    let sidecar = Sidecar::start_for_origin(&proxy.origin, env, &extra);
    let rails = Rails::start(
        rails_listener,
        &[
            ("AGENT_SIDECAR_ISSUER", crate::helpers::ISSUER.to_owned()),
            (
                "AGENT_SIDECAR_AUDIENCE",
                crate::helpers::AUDIENCE.to_owned(),
            ),
            (
                "AGENT_SIDECAR_JWKS_URL",
                format!("{}/.well-known/jwks.json", sidecar.base),
            ),
            ("AGENT_SIDECAR_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
            ("AGENT_SIDECAR_URL", sidecar.base.clone()),
            (
                "AGENT_SIDECAR_SHARED_ROOT",
                sidecar.shared_root.display().to_string(),
            ),
            ("AGENT_SIDECAR_CALLBACK_BASE_URL", proxy.origin.clone()),
            ("AGENT_SIDECAR_TRIGGER_MODE", mode.to_owned()),
            ("AGENT_SIDECAR_API_SECRET", API_SECRET.to_owned()),
        ],
    )
    .await;
    (sidecar, proxy, rails)
}

/// An ActionCable client subscribed to one job's stream.
struct CableSubscriber {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl CableSubscriber {
    /// Subscribes as `user` (the example app's connection takes `?user_id=`) and panics if
    /// the subscription is rejected.
    async fn subscribe(rails: &Rails, job_id: &str, user: &str) -> Self {
        let (cable, answer) = Self::try_subscribe(rails, job_id, user).await;
        assert_eq!(answer, "confirm_subscription", "{}", rails.logs());
        cable
    }

    /// Subscribes as `user`; returns the socket and the server's answer
    /// (`confirm_subscription` or `reject_subscription`).
    async fn try_subscribe(rails: &Rails, job_id: &str, user: &str) -> (Self, String) {
        let url = format!(
            "{}/cable?user_id={user}",
            rails.origin.replace("http://", "ws://")
        );
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "actioncable-v1-json".parse().unwrap(),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut cable = Self { socket };
        let identifier =
            json!({"channel": "AgentSidecar::JobChannel", "job_id": job_id}).to_string();
        cable
            .socket
            .send(Message::text(
                json!({"command": "subscribe", "identifier": identifier}).to_string(),
            ))
            .await
            .unwrap();
        let answer = cable
            .next_where(|m| {
                m["type"] == "confirm_subscription" || m["type"] == "reject_subscription"
            })
            .await;
        (
            cable,
            answer["type"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// The next frame matching `wanted` within 60 s, skipping welcome and pings (which come
    /// every 3 s, so the deadline is for the whole wait, not per frame).
    async fn next_where(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("the wanted ActionCable frame within 60 s")
                .expect("the ActionCable socket stays open")
                .unwrap();
            if let Message::Text(text) = frame {
                let value: Value = serde_json::from_str(&text).unwrap();
                if wanted(&value) {
                    return value;
                }
            }
        }
    }

    /// Messages until the job's final one (inclusive): first the job's snapshot (its newest
    /// progress), then each broadcast.
    async fn messages_until_completed(&mut self) -> Vec<Value> {
        let mut messages = Vec::new();
        loop {
            let frame = self.next_where(|m| m.get("message").is_some()).await;
            let message = frame["message"].clone();
            let done = message["type"] == "completed";
            messages.push(message);
            if done {
                return messages;
            }
        }
    }
}

/// Waits until Rails' report of `job_id` is terminal and its duplicate was seen.
async fn settled_report(rails: &Rails, job_id: &str) -> Value {
    eventually("the report to settle after the re-delivery", || async {
        let (status, report) = rails.get(&format!("/reports/{job_id}")).await;
        (status == 200 && report["duplicate_completions"] == 1).then_some(report)
    })
    .await
}

#[tokio::test]
async fn rails_dispatches_each_completion_once_despite_redelivery_and_streams_progress() {
    let (_sidecar, proxy, rails) = rails_behind_lossy_proxy("http").await;
    let cases = [
        (
            "summarizer_v2",
            json!({"step_delay_s": 0.05}),
            "completed",
            Value::Null,
        ),
        ("failing_agent", json!({}), "failed", json!("exit_code")),
    ];
    for (agent, params, status, reason) in cases {
        let job_id = uuid::Uuid::new_v4().to_string();
        let (code, accepted) = rails
            .post(
                "/reports",
                json!({"agent_name": agent, "params": params, "job_id": job_id}),
            )
            .await;
        assert_eq!(code, 202, "{accepted}\n{}", rails.logs());
        // Subscribing after the trigger: the channel sends the newest progress first.
        let mut cable = CableSubscriber::subscribe(&rails, &job_id, "42").await;
        let messages = cable.messages_until_completed().await;
        let report = settled_report(&rails, &job_id).await;
        assert_eq!(report["status"], status, "{report}");
        assert_eq!(report["handler_calls"], 1, "handler ran once: {report}");
        assert_eq!(report["error_reason"], reason, "{report}");

        // As the view helper does: a progress older than the newest seen is dropped (the
        // snapshot and a live broadcast can cross).
        let mut progress: Vec<u64> = Vec::new();
        for seq in messages
            .iter()
            .filter(|m| m["type"] == "progress")
            .map(|m| m["seq"].as_u64().unwrap())
        {
            if progress.last().is_none_or(|last| seq > *last) {
                progress.push(seq);
            }
        }
        assert!(
            !progress.is_empty(),
            "{agent}: no progress broadcast: {messages:?}"
        );
        assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
        assert_eq!(messages.last().unwrap()["status"], status);

        // The proxy records an answer after Rails gave it, so wait for the second one too.
        let completions = eventually("both completion deliveries through the proxy", || async {
            let passed: Vec<_> = proxy
                .passed_for(&job_id)
                .into_iter()
                .filter(|p| p.path.starts_with("/agents/completed/"))
                .collect();
            (passed.len() >= 2).then_some(passed)
        })
        .await;
        assert_eq!(completions.len(), 2, "{completions:?}");
        assert!(completions[0].lost && completions[0].answer["status"] == "ok");
        assert!(
            completions.iter().all(|c| c.status == 200),
            "{completions:?}"
        );
        assert_eq!(completions[1].answer["status"], "duplicate");
        assert_eq!(
            completions[0].idempotency_key, completions[1].idempotency_key,
            "a re-delivery keeps its delivery id"
        );
        assert_eq!(completions[1].body["job_name"], "ReportCompileJob");
    }
}

#[tokio::test]
async fn a_job_canceled_through_the_ruby_client_reaches_its_handler_once_as_canceled() {
    let (_sidecar, _proxy, rails) = rails_behind_lossy_proxy("http").await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let (code, accepted) = rails
        .post(
            "/reports",
            json!({"agent_name": "napper", "job_id": job_id}),
        )
        .await;
    assert_eq!(code, 202, "{accepted}");
    let mut cable = CableSubscriber::subscribe(&rails, &job_id, "42").await;
    let (code, answer) = rails
        .post(&format!("/reports/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{answer}\n{}", rails.logs());
    let messages = cable.messages_until_completed().await;
    assert_eq!(messages.last().unwrap()["status"], "canceled");
    let report = settled_report(&rails, &job_id).await;
    assert_eq!(report["status"], "canceled", "{report}");
    assert_eq!(report["handler_calls"], 1, "{report}");
    assert_eq!(report["error_reason"], "canceled", "{report}");
}

#[tokio::test]
async fn the_ruby_client_triggers_through_the_job_folder_when_told_to() {
    let (_sidecar, _proxy, rails) = rails_behind_lossy_proxy("folder").await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let (code, accepted) = rails
        .post(
            "/reports",
            json!({"agent_name": "summarizer_v2", "params": {"step_delay_s": 0}, "job_id": job_id}),
        )
        .await;
    assert_eq!(code, 202, "{accepted}\n{}", rails.logs());
    assert_eq!(accepted["job_id"], job_id.as_str());
    let report = settled_report(&rails, &job_id).await;
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["handler_calls"], 1, "{report}");
}

#[tokio::test]
async fn a_folder_trigger_the_sidecar_refuses_reaches_rails_as_the_problem() {
    let (_sidecar, _proxy, rails) = rails_behind_lossy_proxy("folder").await;
    let (code, problem) = rails
        .post("/reports", json!({"agent_name": "no_such_agent"}))
        .await;
    assert_eq!(code, 422, "{problem}\n{}", rails.logs());
    assert!(problem.to_string().contains("/agent_name"), "{problem}");
}

#[tokio::test]
async fn the_ruby_client_refuses_a_job_id_or_input_name_that_would_leave_shared_root() {
    let (sidecar, _proxy, rails) = rails_behind_lossy_proxy("http").await;
    // An absolute path outside shared_root, in this test's own folder (shared_root's parent),
    // so parallel runs cannot see each other's file.
    let parent = sidecar.shared_root.parent().unwrap();
    let absolute = parent.join("absolute-escaped.txt");
    let mut outside = serde_json::Map::new();
    outside.insert(absolute.display().to_string(), "x".into());
    let escapes = [
        json!({"job_id": "../../escaped"}),
        json!({"job_id": uuid::Uuid::new_v4().to_string(), "inputs": {"../../escaped.txt": "x"}}),
        json!({"job_id": uuid::Uuid::new_v4().to_string(), "inputs": outside}),
    ];
    for body in escapes {
        let (code, problem) = rails.post("/reports", body.clone()).await;
        assert_eq!(code, 400, "{body}: {problem}");
    }
    assert!(!parent.join("escaped").exists() && !parent.join("escaped.txt").exists());
    assert!(!absolute.exists(), "{}", absolute.display());
}

#[tokio::test]
async fn only_the_jobs_own_user_may_watch_it_over_action_cable() {
    let (_sidecar, _proxy, rails) = rails_behind_lossy_proxy("http").await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let (code, accepted) = rails
        .post(
            "/reports",
            json!({"agent_name": "napper", "job_id": job_id, "user_id": "42"}),
        )
        .await;
    assert_eq!(code, 202, "{accepted}\n{}", rails.logs());

    let (_stranger, answer) = CableSubscriber::try_subscribe(&rails, &job_id, "43").await;
    assert_eq!(
        answer, "reject_subscription",
        "user 43 watches user 42's job"
    );
    let (_nobody, answer) = CableSubscriber::try_subscribe(&rails, &job_id, "").await;
    assert_eq!(
        answer, "reject_subscription",
        "an anonymous connection watches a job"
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let (_guess, answer) = CableSubscriber::try_subscribe(&rails, &unknown, "42").await;
    assert_eq!(
        answer, "reject_subscription",
        "a job nobody triggered is watchable"
    );

    let mut owner = CableSubscriber::subscribe(&rails, &job_id, "42").await;
    let (code, answer) = rails
        .post(&format!("/reports/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{answer}\n{}", rails.logs());
    let messages = owner.messages_until_completed().await;
    assert_eq!(messages.last().unwrap()["status"], "canceled");
}
