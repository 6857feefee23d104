//! No process of an interrupted attempt survives into the next one (issue 18, point 2): the
//! guardian `main` forks before the runtime kills every agent's process group when the sidecar
//! dies, and a restarted sidecar recovers jobs only once it has.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// How long a SIGKILLed sidecar's agents may outlive it (the guardian acts in milliseconds).
const PROMPTLY: Duration = Duration::from_secs(5);

/// Kills the listed pids when dropped, so a test that fails (on code without a guardian)
/// leaves no ticker behind.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The pid of the grandchild attempt `attempt` started, once it has written it.
async fn grandchild(dir: &Path, attempt: u32) -> u32 {
    let file = dir.join(format!("grandchild-{attempt}.pid"));
    eventually("the grandchild's pid", || async {
        std::fs::read_to_string(&file).ok()?.trim().parse().ok()
    })
    .await
}

/// `(attempt, wall ns)` of every tick the grandchildren wrote.
fn ticks(dir: &Path) -> Vec<(u32, u128)> {
    std::fs::read_to_string(dir.join("ticks"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (attempt, at) = l.split_once(' ')?;
            Some((attempt.parse().ok()?, at.parse().ok()?))
        })
        .collect()
}

/// The guardian's pid, from the sidecar's log.
fn guardian_pid(sidecar: &Sidecar) -> u32 {
    let log = sidecar.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("guardian started"))
        .unwrap_or_else(|| panic!("no guardian in the log:\n{log}"));
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    u32::try_from(line["pid"].as_u64().unwrap()).unwrap()
}

async fn gone_within(what: &str, pid: u32, limit: Duration) {
    let started = Instant::now();
    while alive(pid) {
        assert!(
            started.elapsed() < limit,
            "{what} (pid {pid}) still alive after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_a_sigkill_no_process_of_attempt_1_is_alive_when_attempt_2_starts() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "grandparent", json!({})).await;
    let dir = sidecar.job_dir(&job_id);
    let first = grandchild(&dir, 1).await;
    let _reap = Reap(vec![first]);
    eventually("attempt 1's grandchild to tick", || async {
        ticks(&dir).iter().any(|(a, _)| *a == 1).then_some(())
    })
    .await;

    let sidecar = sidecar.crash_and_restart();
    let second_started: u128 = eventually("attempt 2 to start", || async {
        std::fs::read_to_string(dir.join("started-2"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(
        !alive(first),
        "attempt 1's grandchild {first} (ignoring SIGTERM) is alive while attempt 2 runs"
    );
    let second = grandchild(&dir, 2).await;
    let _reap_second = Reap(vec![second]);
    eventually("attempt 2's grandchild to tick", || async {
        ticks(&dir).iter().any(|(a, _)| *a == 2).then_some(())
    })
    .await;
    let late: Vec<u128> = ticks(&dir)
        .into_iter()
        .filter(|(a, at)| *a == 1 && *at >= second_started)
        .map(|(_, at)| at)
        .collect();
    assert!(
        late.is_empty(),
        "attempt 1 wrote into the folder after attempt 2 started: {late:?}"
    );
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{job_id}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        receiver.completion(&job_id).await.json()["status"],
        "canceled"
    );
    gone_within("attempt 2's grandchild after the cancel", second, PROMPTLY).await;
}

#[tokio::test]
async fn a_sigkilled_sidecars_agents_and_their_children_die_promptly_without_a_restart() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "grandparent", json!({})).await;
    let orphan = grandchild(&sidecar.job_dir(&job_id), 1).await;
    let _reap = Reap(vec![orphan]);

    sidecar.kill_hard();
    gone_within("the grandchild of a SIGKILLed sidecar", orphan, PROMPTLY).await;
    let guardian = guardian_pid(&sidecar);
    gone_within("the guardian of a SIGKILLed sidecar", guardian, PROMPTLY).await;
    assert!(
        sidecar.log().contains("the sidecar is gone"),
        "the guardian says what it did"
    );
}

#[tokio::test]
async fn a_drained_sidecars_guardian_exits_with_it_and_kills_nothing() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({"seconds": 0.2})).await;
    receiver.completion(&job_id).await;
    let guardian = guardian_pid(&sidecar);
    assert_eq!(sidecar.terminate().code(), Some(0));
    gone_within("the guardian of a drained sidecar", guardian, PROMPTLY).await;
    assert!(
        !sidecar
            .log()
            .contains("SIGKILL to the process group of every agent"),
        "the drain left the guardian nothing to kill:\n{}",
        sidecar.log()
    );
}
