//! A fleet: several sidecar processes on one PostgreSQL database and one shared root. These
//! need a server (`AGENT_SIDECAR_TEST_POSTGRES_URL`; `.ci/run` starts one) and are reported as
//! ignored without it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::*;

/// The fleet's lease in these tests: short, so a dead node's jobs move on quickly.
const LEASE: &str = "2s";

struct Fleet {
    url: String,
    root: tempfile::TempDir,
    receiver: Receiver,
}

impl Fleet {
    async fn new() -> Self {
        Self {
            url: test_postgres::fresh_database(&test_postgres::test_server(), "fleet").await,
            root: tempfile::tempdir().unwrap(),
            receiver: Receiver::start().await,
        }
    }

    fn shared_root(&self) -> &Path {
        self.root.path()
    }

    /// Node `name`, offering the standard test agents, `fleet_probe` (which says which node ran
    /// it), and `extra` TOML.
    fn node(&self, name: &str, env: &[(&str, &str)], extra: &str) -> Sidecar {
        let mut all = vec![
            ("STORE__URL", self.url.as_str()),
            ("STORE__NODE_ID", name),
            ("STORE__LEASE", LEASE),
            ("SWEEPER__INTERVAL", "250ms"),
        ];
        all.extend_from_slice(env);
        let probe = repo().join("tests/agents/fleet_probe.py");
        let toml = format!(
            "[agents.fleet_probe]\ncommand = [\"python3\", {:?}]\ntimeout = \"60s\"\nmax_attempts = 3\n\
             env = {{ FLEET_NODE = \"{name}\" }}\n{extra}",
            probe.display().to_string()
        );
        Sidecar::start_node(&self.receiver.origin, self.shared_root(), &all, &toml)
    }

    /// Writes the folder of a `fleet_probe` job sleeping `seconds` and triggers it on `node`.
    async fn trigger(&self, node: &Sidecar, agent: &str, seconds: f64) -> String {
        start_job(node, &self.receiver, agent, json!({ "seconds": seconds })).await
    }

    /// `(node, attempt, pid)` of every run of the job, in order.
    fn markers(&self, job_id: &str) -> Vec<(String, u32, u32)> {
        let text =
            std::fs::read_to_string(self.job_root(job_id).join("markers")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut parts = l.split(' ');
                let mut next = || parts.next().unwrap().to_owned();
                (next(), next().parse().unwrap(), next().parse().unwrap())
            })
            .collect()
    }

    fn job_root(&self, job_id: &str) -> PathBuf {
        self.shared_root().join(job_id)
    }

    fn assert_never_overlapped(&self, job_id: &str) {
        let overlap = self.job_root(job_id).join("overlap");
        assert!(
            !overlap.exists(),
            "job {job_id} ran on two nodes at once: {}",
            std::fs::read_to_string(&overlap).unwrap_or_default()
        );
    }

    /// Waits until `job_id` has `n` markers (its agent started `n` times).
    async fn wait_markers(&self, job_id: &str, n: usize) -> Vec<(String, u32, u32)> {
        eventually("the agent to start", || async {
            let m = self.markers(job_id);
            (m.len() >= n).then_some(m)
        })
        .await
    }

    /// `(node, attempt)` → first and last tick (wall ns) of each run of a ticking job.
    fn spans(&self, job_id: &str) -> BTreeMap<(String, u32), (u128, u128)> {
        let text = std::fs::read_to_string(self.job_root(job_id).join("spans")).unwrap_or_default();
        let mut spans = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(node), Some(attempt), Some(at)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(attempt), Ok(at)) = (attempt.parse(), at.parse::<u128>()) else {
                continue;
            };
            let span = spans.entry((node.to_owned(), attempt)).or_insert((at, at));
            span.0 = span.0.min(at);
            span.1 = span.1.max(at);
        }
        spans
    }

    /// Completions of `job_id` delivered so far.
    fn completions(&self, job_id: &str) -> Vec<Value> {
        self.receiver
            .hits("/completion")
            .iter()
            .map(Hit::json)
            .filter(|c| c["job_id"] == job_id)
            .collect()
    }
}

#[path = "../support/postgres.rs"]
pub(crate) mod test_postgres;

async fn wait_log(node: &Sidecar, what: &str, needle: &str) {
    eventually(what, || async { node.log().contains(needle).then_some(()) }).await;
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn three_nodes_run_three_hundred_jobs_each_exactly_once_and_all_do_work() {
    let fleet = Fleet::new().await;
    let nodes: Vec<Sidecar> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| fleet.node(n, &[], ""))
        .collect();
    let mut ids = Vec::new();
    for chunk in (0..300).collect::<Vec<_>>().chunks(30) {
        let triggers = chunk
            .iter()
            .map(|i| fleet.trigger(&nodes[i % 3], "fleet_probe", 0.0));
        ids.extend(futures_util::future::join_all(triggers).await);
    }
    fleet
        .receiver
        .wait_until("300 completions", |hits| {
            hits.iter().filter(|h| h.path == "/completion").count() >= 300
        })
        .await;
    let mut ran_on = BTreeMap::<String, usize>::new();
    let mut completions = BTreeMap::<String, Vec<Value>>::new();
    for c in fleet.receiver.hits("/completion").iter().map(Hit::json) {
        completions
            .entry(c["job_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(c);
    }
    for id in &ids {
        let markers = fleet.markers(id);
        assert_eq!(markers.len(), 1, "job {id} ran {markers:?}");
        assert_eq!(markers[0].1, 1, "first attempt");
        *ran_on.entry(markers[0].0.clone()).or_default() += 1;
        fleet.assert_never_overlapped(id);
        let mine = &completions[id];
        assert_eq!(mine.len(), 1, "one completion for {id}");
        assert_eq!(mine[0]["status"], "completed");
    }
    assert_eq!(ran_on.len(), 3, "every node did work: {ran_on:?}");
    // Any node answers for the whole fleet.
    let (_, listed) = nodes[2].get("/jobs?limit=1000").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 300);
    let (_, live) = nodes[0].get("/nodes").await;
    let names: BTreeSet<&str> = live["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["n1", "n2", "n3"]));
    assert!(
        live["nodes"][0]["agents"]
            .as_array()
            .unwrap()
            .contains(&json!("fleet_probe"))
    );
    let metrics = nodes[1].get_text("/metrics").await;
    assert!(
        metrics.contains("node=\"n2\""),
        "metrics carry the node label"
    );
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn a_killed_nodes_jobs_finish_on_the_others_after_its_lease_and_never_ran_twice_at_once() {
    let fleet = Fleet::new().await;
    let mut doomed = fleet.node("n1", &[], "");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(fleet.trigger(&doomed, "fleet_probe", 3.0).await);
    }
    let mut pids = Vec::new();
    for id in &ids {
        pids.push(fleet.wait_markers(id, 1).await[0].2);
    }
    let _others = [fleet.node("n2", &[], ""), fleet.node("n3", &[], "")];
    doomed.kill_hard();
    for pid in pids {
        eventually("the dead node's agents to die with it", || async {
            (!alive(pid)).then_some(())
        })
        .await;
    }
    for id in &ids {
        let completion = fleet.receiver.completion(id).await.json();
        assert_eq!(completion["status"], "completed", "{completion}");
        let markers = fleet.markers(id);
        assert_eq!(markers.len(), 2, "{markers:?}");
        assert_eq!((markers[0].0.as_str(), markers[0].1), ("n1", 1));
        assert_ne!(markers[1].0, "n1");
        assert_eq!(markers[1].1, 2, "taken over as the next attempt");
        fleet.assert_never_overlapped(id);
        assert_eq!(fleet.completions(id).len(), 1);
    }
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn a_node_paused_past_its_lease_writes_nothing_for_its_stale_attempt_when_it_resumes() {
    let fleet = Fleet::new().await;
    let paused = fleet.node("n1", &[], "");
    // The agent finishes while its sidecar is paused, well within the lease, so the lock it
    // holds is free before another node can take the job over.
    let id = fleet.trigger(&paused, "fleet_probe", 0.3).await;
    fleet.wait_markers(&id, 1).await;
    paused.signal("-STOP");
    let other = fleet.node("n2", &[], "");
    let completion = fleet.receiver.completion(&id).await.json();
    assert_eq!(completion["status"], "completed");
    // Settled: n2 has recorded its completion's delivery too.
    let before = eventually("n2 to record the delivery", || async {
        let now = job(&other, &id).await;
        (now["delivery"]["state"] == "delivered").then_some(now)
    })
    .await;
    assert_eq!(before["attempt"], 2);
    paused.signal("-CONT");
    wait_log(
        &paused,
        "the resumed node to give its stale attempt up",
        "no longer this node's",
    )
    .await;
    let after = job(&other, &id).await;
    assert_eq!(
        after, before,
        "the stale attempt changed nothing in the store"
    );
    assert_eq!(fleet.completions(&id).len(), 1, "and sent no completion");
    let markers = fleet.markers(&id);
    assert_eq!(markers.len(), 2);
    fleet.assert_never_overlapped(&id);
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn a_cancel_and_a_watch_sent_to_another_node_reach_the_run_and_unoffered_agents_get_422() {
    let fleet = Fleet::new().await;
    // Only n1 offers `gpu_probe` (the GPU host); the job is sent to n2.
    let gpu = format!(
        "[agents.gpu_probe]\ncommand = [\"python3\", {:?}]\ntimeout = \"60s\"\nenv = {{ FLEET_NODE = \"n1\" }}\n",
        repo()
            .join("tests/agents/fleet_probe.py")
            .display()
            .to_string()
    );
    let runner = fleet.node("n1", &[], &gpu);
    let front = fleet.node("n2", &[], "");
    let id = fleet.trigger(&front, "gpu_probe", 60.0).await;
    let agent = fleet.wait_markers(&id, 1).await[0].2;
    assert_eq!(fleet.markers(&id)[0].0, "n1");
    let watch = tokio::spawn({
        let url = format!("{}/jobs/{id}/events", front.base);
        async move {
            let mut response = client().get(url).send().await.unwrap();
            let mut text = String::new();
            while let Some(chunk) = response.chunk().await.unwrap() {
                text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
            text
        }
    });
    let (status, answer) = front
        .post_raw(&format!("/jobs/{id}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202, "{answer}");
    let completion = fleet.receiver.completion(&id).await.json();
    assert_eq!(completion["status"], "canceled");
    assert!(!alive(agent), "the agent on n1 was stopped");
    let events = tokio::time::timeout(PATIENCE, watch)
        .await
        .unwrap()
        .unwrap();
    for needle in ["\"in_progress\"", "\"on n1\"", "\"canceled\""] {
        assert!(
            events.contains(needle),
            "{needle} missing from n2's stream:\n{events}"
        );
    }
    let mut body = trigger(&fleet.receiver, "nobody_offers_this");
    runner.write_job(&body);
    body["params"] = json!({});
    let (status, problem) = front.post_trigger(&body).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/agent_name");
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn when_the_sweepers_leader_dies_another_node_sweeps_within_an_interval() {
    let fleet = Fleet::new().await;
    let env = [("JOBS__MAX_QUEUE_AGE", "1s")];
    let one_lane = "[agents.lane_probe]\ncommand = [\"python3\", \"-c\", \"import time; time.sleep(60)\"]\n\
                    timeout = \"60s\"\nmax_concurrent = 1\n";
    let mut leader = fleet.node("n1", &env, one_lane);
    wait_log(&leader, "n1 to lead", "now leads the sweeper").await;
    let follower = fleet.node("n2", &env, one_lane);
    leader.kill_hard();
    wait_log(&follower, "n2 to take the lead", "now leads the sweeper").await;
    // One job holds the lane; the next waits past max_queue_age and only a leader ends it.
    let busy = fleet.trigger(&follower, "lane_probe", 0.0).await;
    wait_state(&follower, &busy, "in_progress").await;
    let waiting = fleet.trigger(&follower, "lane_probe", 0.0).await;
    let completion = fleet.receiver.completion(&waiting).await.json();
    assert_eq!(completion["status"], "timed_out");
    assert_eq!(completion["error"]["reason"], "queue_timeout");
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn nodes_starting_at_the_same_instant_on_an_empty_database_all_come_up() {
    let fleet = Fleet::new().await;
    // Each start migrates the empty database first, under one advisory lock.
    let nodes: Vec<Sidecar> = std::thread::scope(|s| {
        let started: Vec<_> = ["n1", "n2", "n3", "n4"]
            .iter()
            .map(|name| s.spawn(|| fleet.node(name, &[], "")))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for node in &nodes {
        let (status, ready) = node.get("/ready").await;
        assert_eq!(status, 200, "{ready}");
    }
    let id = fleet.trigger(&nodes[3], "fleet_probe", 0.0).await;
    assert_eq!(
        fleet.receiver.completion(&id).await.json()["status"],
        "completed"
    );
    let (_, listed) = nodes[0].get("/nodes").await;
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 4, "{listed}");
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn a_node_paused_for_several_leases_stops_its_agent_before_the_takeover_and_then_writes_nothing()
 {
    let lease = std::time::Duration::from_secs(2);
    let fleet = Fleet::new().await;
    let paused = fleet.node("n1", &[], "");
    let params = json!({ "seconds": 8.0, "ticks": true });
    let id = start_job(&paused, &fleet.receiver, "fleet_probe", params).await;
    let first = ("n1".to_owned(), 1);
    let second = ("n2".to_owned(), 2);
    eventually("the agent to tick on n1", || async {
        fleet.spans(&id).contains_key(&first).then_some(())
    })
    .await;
    paused.signal("-STOP");
    let stopped = std::time::Instant::now();
    let _other = fleet.node("n2", &[], "");
    let overlap = fleet.job_root(&id).join("overlap");
    eventually(
        "n2 to run attempt 2 while n1 stays stopped for three leases",
        || async {
            let started = fleet.spans(&id).contains_key(&second) || overlap.exists();
            (stopped.elapsed() >= 3 * lease && started).then_some(())
        },
    )
    .await;
    paused.signal("-CONT");
    fleet.assert_never_overlapped(&id);
    wait_log(
        &paused,
        "the resumed node to give its attempt up",
        "no longer this node's",
    )
    .await;
    assert!(
        paused.log().contains("the sidecar's lease lapsed"),
        "n1's guardian stopped the agent while n1 was stopped"
    );
    let completion = fleet.receiver.completion(&id).await.json();
    assert_eq!(completion["status"], "completed", "{completion}");
    assert_eq!(fleet.completions(&id).len(), 1);

    let spans = fleet.spans(&id);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(
        spans[&first].1 < spans[&second].0,
        "n1's run (its agent, which its stopped sidecar could not stop) overlapped n2's: {spans:?}"
    );
    fleet.assert_never_overlapped(&id);
    let output = fleet.job_root(&id).join("output");
    let log = std::fs::read_to_string(output.join("log.txt")).unwrap();
    let from = log
        .lines()
        .position(|l| l.contains("attempt 2 started"))
        .unwrap_or_else(|| panic!("no attempt 2 in log.txt:\n{log}"));
    let stale: Vec<&str> = log
        .lines()
        .skip(from)
        .filter(|l| l.contains("tick n1 ") || l.contains("attempt 1") || l.contains("this node"))
        .collect();
    assert!(
        stale.is_empty(),
        "the stale node wrote into log.txt after losing the job: {stale:#?}\n{log}"
    );
    let events = std::fs::read_to_string(output.join("events.jsonl")).unwrap();
    let seqs: Vec<u64> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events.jsonl was appended by two writers: {seqs:?}\n{events}"
    );
}
