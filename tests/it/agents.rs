//! Agents (issue 21): `GET /agents`, pausing and resuming one agent or all (kept in the store:
//! through a restart, across a PostgreSQL fleet), concurrency keys with `max_per_key`, and the
//! `agents list|pause|resume` commands against a running sidecar.

use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::{INBOUND_SECRET, auth_toml, claims, hs256};
use crate::fleet::test_postgres;
use crate::helpers::*;

/// `keyed`: two runs at once, one per concurrency key.
fn keyed_toml() -> String {
    format!(
        "\n[agents.keyed]\ncommand = [\"python3\", {:?}]\ntimeout = \"60s\"\nmax_concurrent = 2\nmax_per_key = 1\n",
        repo()
            .join("examples/agents/sleeper.py")
            .display()
            .to_string()
    )
}

/// How long a job is watched to show it is not claimed: longer than a claim takes after the
/// wake-ups the test causes (there is no event for "not claimed").
const SETTLE: Duration = Duration::from_millis(700);

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn sidecar(backend: Backend, receiver: &Receiver, extra: &str) -> Sidecar {
    match backend {
        Backend::Sqlite => Sidecar::start_with(receiver, &[], extra).await,
        Backend::Postgres => {
            let url = test_postgres::fresh_database(&test_postgres::test_server(), "agents").await;
            Sidecar::start_with(receiver, &[("STORE__URL", &url)], extra).await
        }
    }
}

/// Triggers a job of `agent` sleeping `seconds`, with `key` as its concurrency key if any.
async fn job_of(
    sidecar: &Sidecar,
    receiver: &Receiver,
    agent: &str,
    seconds: f64,
    key: Option<&str>,
) -> String {
    let mut body = trigger(receiver, agent);
    body["params"] = json!({ "seconds": seconds });
    if let Some(key) = key {
        body["concurrency_key"] = json!(key);
    }
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// The agent's entry in `GET /agents`, and the sidecar-wide `paused`.
async fn agent(sidecar: &Sidecar, name: &str) -> (Value, bool) {
    let (status, list) = sidecar.get("/agents").await;
    assert_eq!(status, 200, "{list}");
    assert_valid_list(&list);
    let entry = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
        .clone();
    (entry, list["paused"].as_bool().unwrap())
}

fn assert_valid_list(list: &Value) {
    serde_json::from_value::<agent_sidecar::contract::AgentList>(list.clone())
        .unwrap_or_else(|e| panic!("{e}: {list}"));
}

/// `(state, queued, running)` of an agent.
async fn load(sidecar: &Sidecar, name: &str) -> (String, u64, u64) {
    let (a, _) = agent(sidecar, name).await;
    (
        a["state"].as_str().unwrap().to_owned(),
        a["queued"].as_u64().unwrap(),
        a["running"].as_u64().unwrap(),
    )
}

async fn post(sidecar: &Sidecar, path: &str) -> (u16, Value) {
    let (status, body) = sidecar.post_raw(path, Vec::new()).await;
    (status.as_u16(), body)
}

/// Shows the job is still queued after [`SETTLE`].
async fn stays_queued(sidecar: &Sidecar, job_id: &str) {
    tokio::time::sleep(SETTLE).await;
    assert_eq!(job(sidecar, job_id).await["state"], "queued");
}

#[tokio::test]
async fn a_paused_agent_accepts_triggers_keeps_them_queued_lets_runs_finish_and_resumes() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let running = job_of(&sidecar, &receiver, "napper", 1.5, None).await;
    wait_state(&sidecar, &running, "in_progress").await;

    let (status, paused) = post(&sidecar, "/agents/napper/pause").await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(
        (paused["state"].as_str(), paused["paused"].as_bool()),
        (Some("paused"), Some(true))
    );
    let waiting = job_of(&sidecar, &receiver, "napper", 0.0, None).await;
    assert_eq!(load(&sidecar, "napper").await, ("paused".into(), 1, 1));
    // Other agents are not paused.
    assert_eq!(load(&sidecar, "sleeper").await.0, "active");

    // The running job finishes; the queued one stays queued, even after another wake-up.
    wait_state(&sidecar, &running, "completed").await;
    let second = job_of(&sidecar, &receiver, "napper", 0.0, None).await;
    stays_queued(&sidecar, &waiting).await;
    assert_eq!(load(&sidecar, "napper").await, ("paused".into(), 2, 0));

    let (status, resumed) = post(&sidecar, "/agents/napper/resume").await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["state"], "active");
    wait_state(&sidecar, &waiting, "completed").await;
    wait_state(&sidecar, &second, "completed").await;
    assert_eq!(load(&sidecar, "napper").await, ("active".into(), 0, 0));
}

#[tokio::test]
async fn get_agents_lists_every_agent_with_its_limits() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &keyed_toml()).await;
    let (keyed, paused) = agent(&sidecar, "keyed").await;
    assert!(!paused);
    assert_eq!(
        keyed,
        json!({
            "agent_name": "keyed",
            "state": "active",
            "paused": false,
            "limits": {
                "max_concurrent": 2,
                "max_per_key": 1,
                "timeout_ms": 60_000,
                "stale_after_ms": null,
                "max_attempts": 3
            },
            "queued": 0,
            "running": 0
        })
    );
    let (silent, _) = agent(&sidecar, "silent").await;
    assert_eq!(silent["limits"]["stale_after_ms"], 300);
    assert_eq!(silent["limits"]["max_per_key"], Value::Null);
}

#[tokio::test]
async fn pausing_every_agent_holds_each_one_and_resuming_keeps_single_pauses() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, _) = post(&sidecar, "/agents/lane/pause").await;
    assert_eq!(status, 200);
    let (status, list) = post(&sidecar, "/agents/pause").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["paused"], true);
    assert!(
        list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] == "paused")
    );
    let napper = job_of(&sidecar, &receiver, "napper", 0.0, None).await;
    stays_queued(&sidecar, &napper).await;

    let (status, list) = post(&sidecar, "/agents/resume").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["paused"], false);
    wait_state(&sidecar, &napper, "completed").await;
    // The agent paused by name stays paused.
    assert_eq!(load(&sidecar, "lane").await.0, "paused");
    assert_eq!(load(&sidecar, "napper").await.0, "active");
}

#[tokio::test]
async fn a_pause_survives_a_restart_on_the_same_sqlite_file() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    assert_eq!(post(&sidecar, "/agents/napper/pause").await.0, 200);
    let waiting = job_of(&sidecar, &receiver, "napper", 0.0, None).await;
    let pid = sidecar.pid();
    let sidecar = sidecar.crash_and_restart();
    assert!(!alive(pid), "the first process is gone");
    assert_eq!(load(&sidecar, "napper").await, ("paused".into(), 1, 0));
    stays_queued(&sidecar, &waiting).await;
    assert_eq!(post(&sidecar, "/agents/napper/resume").await.0, 200);
    wait_state(&sidecar, &waiting, "completed").await;
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn a_pause_made_on_one_node_holds_on_every_node_of_a_fleet_until_another_resumes() {
    let url = test_postgres::fresh_database(&test_postgres::test_server(), "pause").await;
    let root = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let node = |name: &str| {
        let env = [("STORE__URL", url.as_str()), ("STORE__NODE_ID", name)];
        Sidecar::start_node(&receiver.origin, root.path(), &env, "")
    };
    let (a, b) = (node("a"), node("b"));
    assert_eq!(post(&a, "/agents/napper/pause").await.0, 200);
    assert_eq!(
        load(&b, "napper").await.0,
        "paused",
        "node b sees a's pause"
    );
    let waiting = job_of(&a, &receiver, "napper", 0.0, None).await;
    // Wake node b too: a trigger it accepts.
    let other = job_of(&b, &receiver, "napper", 0.0, None).await;
    stays_queued(&b, &waiting).await;
    assert_eq!(job(&a, &other).await["state"], "queued");
    assert_eq!(load(&a, "napper").await, ("paused".into(), 2, 0));

    assert_eq!(post(&b, "/agents/napper/resume").await.0, 200);
    wait_state(&a, &waiting, "completed").await;
    wait_state(&a, &other, "completed").await;
    assert_eq!(load(&a, "napper").await.0, "active");
}

async fn another_key_runs_while_the_first_keys_next_jobs_wait_their_turn(backend: Backend) {
    let receiver = Receiver::start().await;
    let sidecar = sidecar(backend, &receiver, &keyed_toml()).await;
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(job_of(&sidecar, &receiver, "keyed", 3600.0, Some("user-a")).await);
    }
    let b = job_of(&sidecar, &receiver, "keyed", 3600.0, Some("user-b")).await;
    // Two slots: user-a's first and user-b's, though user-a's others were queued before b.
    wait_state(&sidecar, &a[0], "in_progress").await;
    let b_job = wait_state(&sidecar, &b, "in_progress").await;
    assert_eq!(b_job["concurrency_key"], "user-b");
    assert_valid("status.json", &b_job);
    assert_eq!(job(&sidecar, &a[1]).await["state"], "queued");
    assert_eq!(job(&sidecar, &a[2]).await["state"], "queued");
    assert_eq!(load(&sidecar, "keyed").await, ("active".into(), 2, 2));

    // user-a's next job starts when its first ends, in its order: no starvation.
    assert_eq!(
        post(&sidecar, &format!("/jobs/{}/cancel", a[0])).await.0,
        202
    );
    wait_state(&sidecar, &a[1], "in_progress").await;
    assert_eq!(job(&sidecar, &a[2]).await["state"], "queued");
    for id in [&a[1], &b] {
        assert_eq!(post(&sidecar, &format!("/jobs/{id}/cancel")).await.0, 202);
    }
    wait_state(&sidecar, &a[2], "in_progress").await;
    assert_eq!(
        post(&sidecar, &format!("/jobs/{}/cancel", a[2])).await.0,
        202
    );
    wait_state(&sidecar, &a[2], "canceled").await;
}

#[tokio::test]
async fn another_key_runs_while_the_first_keys_next_jobs_wait_their_turn_on_sqlite() {
    another_key_runs_while_the_first_keys_next_jobs_wait_their_turn(Backend::Sqlite).await;
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn another_key_runs_while_the_first_keys_next_jobs_wait_their_turn_on_postgres() {
    another_key_runs_while_the_first_keys_next_jobs_wait_their_turn(Backend::Postgres).await;
}

#[tokio::test]
async fn a_concurrency_key_longer_than_128_characters_gets_422_at_the_field() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "napper");
    body["concurrency_key"] = json!("k".repeat(129));
    sidecar.write_job(&body);
    let (status, problem) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["errors"][0]["pointer"], "/concurrency_key",
        "{problem}"
    );
    // 128 is fine, and old requests without a key still are.
    body["concurrency_key"] = json!("k".repeat(128));
    assert_eq!(sidecar.post_trigger(&body).await.0, 202);
}

#[tokio::test]
async fn pausing_an_unknown_agent_or_a_malformed_name_is_422_at_name() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, problem) = post(&sidecar, "/agents/nobody/pause").await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/name", "{problem}");
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("no agent nobody is configured"),
        "{problem}"
    );
    let (status, problem) = post(&sidecar, "/agents/Not-An-Agent/resume").await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/name", "{problem}");
}

#[tokio::test]
async fn pausing_needs_a_token_and_a_scoped_token_pauses_only_its_agents() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &auth_toml("")).await;
    let call = |path: &str, token: Option<String>| {
        let mut request = client().post(format!("{}{path}", sidecar.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call("/agents/napper/pause", None).await, 401);
    assert_eq!(call("/agents/pause", None).await, 401);
    let list = client()
        .get(format!("{}/agents", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 401);

    let mut scoped = claims();
    scoped["agents"] = json!(["ticker"]);
    let scoped = hs256(&scoped, INBOUND_SECRET);
    assert_eq!(
        call("/agents/napper/pause", Some(scoped.clone())).await,
        403
    );
    assert_eq!(call("/agents/pause", Some(scoped.clone())).await, 403);
    assert_eq!(
        call("/agents/ticker/pause", Some(scoped.clone())).await,
        200
    );
    assert_eq!(call("/agents/ticker/resume", Some(scoped)).await, 200);
    let operator = hs256(&claims(), INBOUND_SECRET);
    assert_eq!(
        call("/agents/napper/pause", Some(operator.clone())).await,
        200
    );
    let listed = client()
        .get(format!("{}/agents", sidecar.base))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.bytes().await.unwrap()).unwrap();
    let napper = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_name"] == "napper");
    assert_eq!(napper.unwrap()["state"], "paused");
}

async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_lists_pauses_and_resumes_agents_of_a_running_sidecar() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &keyed_toml()).await;
    let url = sidecar.base.as_str();
    let (ok, out, err) = cli(&["agents", "pause", "keyed", "--url", url]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("keyed ") && out.contains("paused"), "{out}");
    let waiting = job_of(&sidecar, &receiver, "keyed", 0.0, Some("u")).await;

    let (ok, out, err) = cli(&["agents", "list", "--json", "--url", url]).await;
    assert!(ok, "{err}");
    let keyed: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|a| a["agent_name"] == "keyed")
        .unwrap();
    assert_eq!(
        (keyed["state"].as_str(), keyed["queued"].as_u64()),
        (Some("paused"), Some(1))
    );
    assert_eq!(keyed["limits"]["max_per_key"], 1);
    let (ok, out, _) = cli(&["agents", "list", "--url", url]).await;
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("keyed ") && l.contains("max_per_key 1")),
        "{out}"
    );

    let (ok, out, err) = cli(&["agents", "resume", "keyed", "--url", url]).await;
    assert!(ok, "{err}");
    assert!(out.contains("active"), "{out}");
    wait_state(&sidecar, &waiting, "completed").await;

    let (ok, out, err) = cli(&["agents", "pause", "--all", "--url", url]).await;
    assert!(ok && out.contains("every agent paused"), "{out}{err}");
    let (ok, out, err) = cli(&["agents", "resume", "--all", "--url", url]).await;
    assert!(ok && out.contains("every agent resumed"), "{out}{err}");

    // A refusal is one readable line and a failing exit.
    let (ok, _, err) = cli(&["agents", "pause", "nobody", "--url", url]).await;
    assert!(!ok);
    assert!(err.contains("no agent nobody is configured"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (ok, _, err) = cli(&["agents", "pause", "--url", url]).await;
    assert!(!ok && err.contains("required"), "{err}");
}
