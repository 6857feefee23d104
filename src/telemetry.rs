//! Prometheus metrics: the names, the recording helpers every module calls, and the rendering
//! of `GET /metrics` (through `metrics` and `metrics-exporter-prometheus`).
//!
//! Counters and histograms are recorded where things happen; gauges that are facts of the
//! store (queue depth, dead letters) are read from it at scrape time, so they are right after
//! a restart and across a fleet.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::contract::{AgentName, JobState, Timestamp};

const JOBS_TOTAL: &str = "agent_sidecar_jobs_total";
const JOBS_RUNNING: &str = "agent_sidecar_jobs_running";
const QUEUE_DEPTH: &str = "agent_sidecar_queue_depth";
const JOB_DURATION: &str = "agent_sidecar_job_duration_seconds";
const QUEUE_WAIT: &str = "agent_sidecar_queue_wait_seconds";
const CALLBACKS_TOTAL: &str = "agent_sidecar_callbacks_total";
const CALLBACK_LATENCY: &str = "agent_sidecar_callback_latency_seconds";
const DEAD_LETTERS: &str = "agent_sidecar_callback_dead_letters";
const TRIGGERS_REFUSED: &str = "agent_sidecar_triggers_refused_total";
const SWEEPER_ACTIONS: &str = "agent_sidecar_sweeper_actions_total";
const HEARTBEAT: &str = "agent_sidecar_worker_heartbeat_timestamp_seconds";
const BUILD_INFO: &str = "agent_sidecar_build_info";
const INPUT_HASHES: &str = "agent_sidecar_input_hashes_total";
const OLDEST_QUEUED: &str = "agent_sidecar_queue_oldest_age_seconds";
const READY: &str = "agent_sidecar_ready";

/// Histogram buckets in seconds, from a fast callback to a long agent run.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Names this process's node: every series then carries a `node` label. Must come before the
/// first [`handle`] call to take effect.
pub fn set_node(node_id: &str) {
    let _ = NODE.set(node_id.to_owned());
}

static NODE: OnceLock<String> = OnceLock::new();

/// The process-wide recorder (installed once; every sidecar in a process shares it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty");
        if let Some(node) = NODE.get() {
            builder = builder.add_global_label("node", node);
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours simply stays local.
        let _ = metrics::set_global_recorder(recorder);
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// A callback's kind, as labelled.
#[derive(Debug, Clone, Copy)]
pub enum CallbackKind {
    /// Progress, best effort.
    Progress,
    /// Completion, through the outbox.
    Completion,
}

impl CallbackKind {
    fn label(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::Completion => "completion",
        }
    }

    /// The outcomes an attempt of this kind is counted under.
    fn outcomes(self) -> &'static [&'static str] {
        match self {
            Self::Progress => &["delivered", "retry", "dropped", "refused"],
            Self::Completion => &["delivered", "retry", "dead"],
        }
    }
}

/// Publishes every family now, zeroed for each of `agents`, each status and outcome and each
/// [`RefusedReason`]: a dashboard then shows 0 rather than "no data" before the first job,
/// and an alert on `rate(agent_sidecar_jobs_total{status="failed"}[5m])` can tell zero from
/// broken. Called at start and for the agents a reload adds.
pub fn publish_families<'a>(agents: impl Iterator<Item = &'a AgentName>) {
    for agent in agents {
        let ended = JobState::ALL.into_iter().filter(|s| s.is_terminal());
        for state in ended {
            counter!(JOBS_TOTAL, "agent" => agent.to_string(), "status" => state.as_str())
                .increment(0);
        }
        gauge!(JOBS_RUNNING, "agent" => agent.to_string()).increment(0.0);
        // Registering a histogram publishes it with zero observations.
        drop(histogram!(JOB_DURATION, "agent" => agent.to_string()));
    }
    drop(histogram!(QUEUE_WAIT));
    for kind in [CallbackKind::Progress, CallbackKind::Completion] {
        for outcome in kind.outcomes() {
            counter!(CALLBACKS_TOTAL, "kind" => kind.label(), "outcome" => *outcome).increment(0);
        }
        drop(histogram!(CALLBACK_LATENCY, "kind" => kind.label()));
    }
    for reason in RefusedReason::ALL {
        counter!(TRIGGERS_REFUSED, "reason" => reason.as_str()).increment(0);
    }
    for source in ["cache", "read"] {
        counter!(INPUT_HASHES, "source" => source).increment(0);
    }
    for action in SWEEPER_ACTION_NAMES {
        counter!(SWEEPER_ACTIONS, "action" => action).increment(0);
    }
}

/// What [`sweeper_action`] counts.
const SWEEPER_ACTION_NAMES: [&str; 6] = [
    "stale",
    "timeout",
    "reclaimed",
    "abandoned",
    "queue_timeout",
    "pruned",
];

/// A v2 manifest's input file was checked: its SHA-256 came from the cache of file versions
/// (`cached`) or from reading the file whole.
pub fn input_hash(cached: bool) {
    let source = if cached { "cache" } else { "read" };
    counter!(INPUT_HASHES, "source" => source).increment(1);
}

/// A job's attempt started; it was queued at `queued_at`.
pub fn job_started(agent: &AgentName, queued_at: Timestamp, now: Timestamp) {
    gauge!(JOBS_RUNNING, "agent" => agent.to_string()).increment(1.0);
    histogram!(QUEUE_WAIT).record(now.millis_since(queued_at) as f64 / 1000.0);
}

/// A job's attempt stopped running (whatever its end).
pub fn job_released(agent: &AgentName) {
    gauge!(JOBS_RUNNING, "agent" => agent.to_string()).decrement(1.0);
}

/// A job reached its terminal state; `ran` is its agent's run time, if it ran.
pub fn job_ended(agent: &AgentName, state: JobState, ran: Option<Duration>) {
    counter!(JOBS_TOTAL, "agent" => agent.to_string(), "status" => state.as_str()).increment(1);
    if let Some(ran) = ran {
        histogram!(JOB_DURATION, "agent" => agent.to_string()).record(ran.as_secs_f64());
    }
}

/// One callback attempt and how it went (`delivered`, `retry`, `dead`, `dropped`, `refused`).
pub fn callback(kind: CallbackKind, outcome: &'static str, latency: Duration) {
    counter!(CALLBACKS_TOTAL, "kind" => kind.label(), "outcome" => outcome).increment(1);
    histogram!(CALLBACK_LATENCY, "kind" => kind.label()).record(latency.as_secs_f64());
}

/// Declares [`RefusedReason`] and its `ALL` from one list, so the reasons published at start
/// are exactly the ones a refusal can be counted under.
macro_rules! refused_reasons {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)*) => {
        /// The `reason` label of `agent_sidecar_triggers_refused_total`: a small fixed set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RefusedReason {
            $($(#[$doc])* $variant,)*
        }

        impl RefusedReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }
        }
    };
}

refused_reasons! {
    /// 400: the body is not JSON.
    MalformedJson => "malformed_json",
    /// 401.
    Unauthorized => "unauthorized",
    /// 403.
    Forbidden => "forbidden",
    /// 409.
    Conflict => "conflict",
    /// 413.
    TooLarge => "too_large",
    /// 415.
    UnsupportedMediaType => "unsupported_media_type",
    /// 503.
    Unavailable => "unavailable",
    /// 422 for the job folder's manifest.
    Manifest => "manifest",
    /// 422 for `job_id`.
    JobId => "job_id",
    /// 422 for `user_id`.
    UserId => "user_id",
    /// 422 for `agent_name`.
    AgentName => "agent_name",
    /// 422 for `job_name`.
    JobName => "job_name",
    /// 422 for `callback_urls`.
    CallbackUrls => "callback_urls",
    /// 422 for `params`.
    Params => "params",
    /// 422 for `priority`.
    Priority => "priority",
    /// 422 for anything else in the request.
    Request => "request",
    /// 5xx other than 503.
    Internal => "internal",
    /// Any other refusal (the body could not be read).
    UnreadableBody => "unreadable_body",
}

impl RefusedReason {
    /// The reason for a 422 whose first failing field is the request's top-level `field`.
    pub fn of_field(field: &str) -> Self {
        const FIELDS: [RefusedReason; 7] = [
            RefusedReason::JobId,
            RefusedReason::UserId,
            RefusedReason::AgentName,
            RefusedReason::JobName,
            RefusedReason::CallbackUrls,
            RefusedReason::Params,
            RefusedReason::Priority,
        ];
        FIELDS
            .into_iter()
            .find(|r| r.as_str() == field)
            .unwrap_or(Self::Request)
    }
}

/// A trigger was refused for `reason` (see `api::refusal`).
pub fn trigger_refused(reason: RefusedReason) {
    counter!(TRIGGERS_REFUSED, "reason" => reason.as_str()).increment(1);
}

/// The sweeper did `action` (one of `SWEEPER_ACTION_NAMES`).
pub fn sweeper_action(action: &'static str, count: usize) {
    debug_assert!(SWEEPER_ACTION_NAMES.contains(&action), "{action}");
    counter!(SWEEPER_ACTIONS, "action" => action).increment(count as u64);
}

/// The background workers are alive (set by each sweeper pass and scheduler round).
pub fn heartbeat() {
    gauge!(HEARTBEAT).set(Timestamp::now().unix_ms() as f64 / 1000.0);
}

/// Facts read from the store at scrape time.
#[derive(Debug, Default, Clone)]
pub struct StoreGauges {
    /// Queued jobs per agent: how many, and when the oldest was queued.
    pub queued: Vec<(AgentName, u64, Timestamp)>,
    /// Completions given up on.
    pub dead_letters: u64,
}

/// The Prometheus text exposition, with the store's gauges set for `agents` (0 when absent)
/// and `ready` as `GET /ready` would answer now.
pub fn render<'a>(
    agents: impl Iterator<Item = &'a AgentName>,
    store: StoreGauges,
    ready: bool,
) -> String {
    let handle = handle();
    let now = Timestamp::now();
    for agent in agents {
        let (depth, age) = store
            .queued
            .iter()
            .find(|(a, _, _)| a == agent)
            .map_or((0, 0), |(_, n, oldest)| (*n, now.millis_since(*oldest)));
        gauge!(QUEUE_DEPTH, "agent" => agent.to_string()).set(depth as f64);
        gauge!(OLDEST_QUEUED, "agent" => agent.to_string()).set(age as f64 / 1000.0);
    }
    gauge!(DEAD_LETTERS).set(store.dead_letters as f64);
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    handle.run_upkeep();
    handle.render()
}
