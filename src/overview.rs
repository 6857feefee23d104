//! The dashboard's overview, computed from what the store reads (no IO here): counts per agent
//! and state over a window, each agent's queue and running jobs against its limit, the outbox,
//! and time buckets of finished jobs (duration and queue-wait percentiles) and callback
//! attempts (latency percentiles, failures).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::contract::{
    AgentName, AgentOverview, JobState, Overview, OverviewBucket, PAYLOAD_VERSION, Percentiles,
    StateCount, Timestamp,
};

/// How many buckets a window is cut into (a minute each over an hour).
pub const BUCKETS: u32 = 60;

/// What the store reads for an overview.
#[derive(Debug, Clone, Default)]
pub struct OverviewRows {
    /// Jobs accepted in the window, per agent and state.
    pub counts: Vec<(AgentName, JobState, u64)>,
    /// Each agent's queue: depth and the oldest job's `queued_at`.
    pub queues: Vec<(AgentName, u64, Timestamp)>,
    /// Jobs running now, per agent.
    pub running: Vec<(AgentName, u64)>,
    /// Completions waiting for their next attempt.
    pub pending_deliveries: u64,
    /// Completions given up on.
    pub dead_letters: u64,
    /// Jobs that ended in the window.
    pub finished: Vec<Finished>,
    /// Callback attempts made in the window.
    pub attempts: Vec<CallbackSample>,
}

/// One job that ended.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// When it ended.
    pub finished_at: Timestamp,
    /// When its last attempt started (none for a job canceled while queued).
    pub started_at: Option<Timestamp>,
    /// When it entered the queue.
    pub queued_at: Timestamp,
    /// How it ended.
    pub state: JobState,
}

/// One callback attempt.
#[derive(Debug, Clone, Copy)]
pub struct CallbackSample {
    /// When it was made.
    pub at: Timestamp,
    /// How long it took.
    pub latency_ms: u64,
    /// Whether Rails answered 2xx.
    pub ok: bool,
}

/// What the overview covers.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Its end (now).
    pub now: Timestamp,
    /// Its length.
    pub length: Duration,
}

impl Window {
    /// Its start.
    pub fn since(self) -> Timestamp {
        self.now.minus(self.length)
    }

    fn bucket_ms(self) -> i64 {
        (i64::try_from(self.length.as_millis()).unwrap_or(i64::MAX) / i64::from(BUCKETS)).max(1)
    }

    /// The bucket `at` falls in, if inside the window.
    fn bucket(self, at: Timestamp) -> Option<usize> {
        let offset = at.unix_ms() - self.since().unix_ms();
        let index = usize::try_from(offset / self.bucket_ms()).ok()?;
        (index < BUCKETS as usize).then_some(index)
    }
}

/// The overview of `rows` over `window`; `limits` gives each configured agent's
/// `max_concurrent` (an agent only the store knows of is listed without one).
pub fn build(rows: OverviewRows, window: Window, limits: &[(AgentName, usize)]) -> Overview {
    let mut agents: BTreeMap<AgentName, AgentOverview> = limits
        .iter()
        .map(|(name, max)| (name.clone(), AgentOverview::new(name.clone(), Some(*max))))
        .collect();
    for (name, state, count) in &rows.counts {
        agent(&mut agents, name).counts.push(StateCount {
            state: *state,
            count: *count,
        });
    }
    for (name, depth, oldest) in &rows.queues {
        let agent = agent(&mut agents, name);
        agent.queued = *depth;
        agent.oldest_queued_at = Some(*oldest);
    }
    for (name, running) in &rows.running {
        agent(&mut agents, name).running = *running;
    }
    Overview {
        version: PAYLOAD_VERSION,
        since: window.since(),
        until: window.now,
        bucket_seconds: u64::try_from(window.bucket_ms() / 1000).unwrap_or(0),
        agents: agents.into_values().collect(),
        pending_deliveries: rows.pending_deliveries,
        dead_letters: rows.dead_letters,
        duration_ms: Percentiles::of(
            rows.finished
                .iter()
                .filter_map(Finished::duration_ms)
                .collect(),
        ),
        queue_wait_ms: Percentiles::of(
            rows.finished.iter().filter_map(Finished::wait_ms).collect(),
        ),
        callback_latency_ms: Percentiles::of(rows.attempts.iter().map(|a| a.latency_ms).collect()),
        buckets: buckets(&rows, window),
    }
}

fn agent<'a>(
    agents: &'a mut BTreeMap<AgentName, AgentOverview>,
    name: &AgentName,
) -> &'a mut AgentOverview {
    agents
        .entry(name.clone())
        .or_insert_with(|| AgentOverview::new(name.clone(), None))
}

impl Finished {
    fn duration_ms(&self) -> Option<u64> {
        let started = self.started_at?;
        u64::try_from(self.finished_at.unix_ms() - started.unix_ms()).ok()
    }

    fn wait_ms(&self) -> Option<u64> {
        let started = self.started_at?;
        u64::try_from(started.unix_ms() - self.queued_at.unix_ms()).ok()
    }
}

/// The window cut into [`BUCKETS`], oldest first.
fn buckets(rows: &OverviewRows, window: Window) -> Vec<OverviewBucket> {
    #[derive(Default)]
    struct Acc {
        completed: u64,
        failed: u64,
        canceled: u64,
        durations: Vec<u64>,
        waits: Vec<u64>,
        latencies: Vec<u64>,
        callback_failures: u64,
    }
    let mut acc: Vec<Acc> = (0..BUCKETS).map(|_| Acc::default()).collect();
    for job in &rows.finished {
        let Some(b) = window.bucket(job.finished_at).map(|i| &mut acc[i]) else {
            continue;
        };
        match job.state {
            JobState::Completed | JobState::Partial => b.completed += 1,
            JobState::Canceled => b.canceled += 1,
            _ => b.failed += 1,
        }
        b.durations.extend(job.duration_ms());
        b.waits.extend(job.wait_ms());
    }
    for attempt in &rows.attempts {
        let Some(b) = window.bucket(attempt.at).map(|i| &mut acc[i]) else {
            continue;
        };
        b.latencies.push(attempt.latency_ms);
        b.callback_failures += u64::from(!attempt.ok);
    }
    let start = window.since().unix_ms();
    acc.into_iter()
        .enumerate()
        .map(|(i, a)| OverviewBucket {
            at: Timestamp::from_unix_ms(start + i as i64 * window.bucket_ms()),
            completed: a.completed,
            failed: a.failed,
            canceled: a.canceled,
            duration_ms: Percentiles::of(a.durations),
            queue_wait_ms: Percentiles::of(a.waits),
            callbacks: a.latencies.len() as u64,
            callback_failures: a.callback_failures,
            callback_latency_ms: Percentiles::of(a.latencies),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_name(name: &str) -> AgentName {
        name.parse().unwrap()
    }

    fn window() -> Window {
        Window {
            now: Timestamp::from_unix_ms(3_600_000),
            length: Duration::from_secs(3600),
        }
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let p = Percentiles::of((1..=100).collect()).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50, 95, 99, 100));
        assert_eq!(Percentiles::of(vec![]), None);
        let one = Percentiles::of(vec![7]).unwrap();
        assert_eq!((one.p50, one.p99), (7, 7));
    }

    #[test]
    fn finished_jobs_land_in_their_minute_with_duration_and_wait() {
        let at = |ms| Timestamp::from_unix_ms(ms);
        let rows = OverviewRows {
            finished: vec![
                Finished {
                    finished_at: at(90_000),
                    started_at: Some(at(80_000)),
                    queued_at: at(79_000),
                    state: JobState::Completed,
                },
                Finished {
                    finished_at: at(100_000),
                    started_at: Some(at(99_000)),
                    queued_at: at(99_000),
                    state: JobState::TimedOut,
                },
                Finished {
                    finished_at: at(100_500),
                    started_at: None,
                    queued_at: at(1_000),
                    state: JobState::Canceled,
                },
                // Before the window: not counted.
                Finished {
                    finished_at: at(-5),
                    started_at: None,
                    queued_at: at(-9),
                    state: JobState::Failed,
                },
            ],
            attempts: vec![
                CallbackSample {
                    at: at(61_000),
                    latency_ms: 12,
                    ok: true,
                },
                CallbackSample {
                    at: at(62_000),
                    latency_ms: 30,
                    ok: false,
                },
            ],
            ..OverviewRows::default()
        };
        let o = build(rows, window(), &[]);
        assert_eq!(o.buckets.len(), BUCKETS as usize);
        assert_eq!(o.bucket_seconds, 60);
        let minute = &o.buckets[1];
        assert_eq!(minute.at, at(60_000));
        assert_eq!(
            (minute.completed, minute.failed, minute.canceled),
            (1, 1, 1)
        );
        assert_eq!(minute.duration_ms.unwrap().max, 10_000);
        assert_eq!(minute.queue_wait_ms.unwrap().max, 1_000);
        assert_eq!((minute.callbacks, minute.callback_failures), (2, 1));
        assert_eq!(o.callback_latency_ms.unwrap().max, 30);
        assert!(o.buckets[0].duration_ms.is_none());
    }

    #[test]
    fn agents_carry_counts_queue_and_limit_even_when_idle() {
        let rows = OverviewRows {
            counts: vec![(agent_name("a"), JobState::Completed, 3)],
            queues: vec![(agent_name("b"), 4, Timestamp::from_unix_ms(5))],
            running: vec![(agent_name("a"), 2)],
            dead_letters: 1,
            ..OverviewRows::default()
        };
        let o = build(
            rows,
            window(),
            &[(agent_name("a"), 4), (agent_name("idle"), 1)],
        );
        let names: Vec<_> = o.agents.iter().map(|a| a.agent.as_str()).collect();
        assert_eq!(names, ["a", "b", "idle"]);
        assert_eq!(
            (o.agents[0].running, o.agents[0].max_concurrent),
            (2, Some(4))
        );
        assert_eq!(o.agents[0].counts[0].count, 3);
        assert_eq!((o.agents[1].queued, o.agents[1].max_concurrent), (4, None));
        assert_eq!(
            o.agents[1].oldest_queued_at,
            Some(Timestamp::from_unix_ms(5))
        );
        assert_eq!(o.dead_letters, 1);
    }
}
