//! Wire types: every payload that crosses the boundary with Rails, mirrored by `schemas/v1/`.
//!
//! A test (`contract::tests`) checks these against the schemas and the fixtures, so the two
//! cannot drift apart.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use super::{AgentName, DeliveryId, JobId, JobName, JobState, Priority, Timestamp};

/// The version every callback and output file announces in its `version` field.
pub const PAYLOAD_VERSION: u32 = 1;

/// `POST /agents/trigger` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// Rails' id for the job; also the folder name under `shared_root`.
    pub job_id: JobId,
    /// The user the job runs for.
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: String,
    /// Which registered agent to run.
    pub agent_name: AgentName,
    /// The Rails handler dispatched on completion (`JobName.completed`).
    pub job_name: JobName,
    /// Free-form parameters handed to the agent as `AGENT_PARAMS`; leave it out for none
    /// (`null` is refused, as `trigger-request.json` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub params: Option<Map<String, Value>>,
    /// Where progress and completion are posted.
    pub callback_urls: CallbackUrls,
    /// Scheduling priority (default `normal`).
    #[serde(default)]
    pub priority: Priority,
    /// Groups jobs that share a per-key limit (e.g. the user id): at most the agent's
    /// `max_per_key` jobs of one key run at once; leave it out for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, min_length = 1, max_length = 128)]
    pub concurrency_key: Option<String>,
    /// Not to start before this time (RFC 3339); the job is `scheduled` until then. Not
    /// with `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub run_at: Option<Timestamp>,
    /// Not to start before this many seconds after acceptance (millisecond precision). Not
    /// with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 0, maximum = 2_592_000)]
    pub delay: Option<f64>,
}

/// The two Rails endpoints a job reports to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackUrls {
    /// Receives every progress event.
    #[schema(pattern = "^https?://", max_length = 2048)]
    pub progress: Url,
    /// Receives the terminal state, exactly once per delivery id.
    #[schema(pattern = "^https?://", max_length = 2048)]
    pub completion: Url,
}

/// The `202 Accepted` answer to a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerAccepted {
    /// The job's id.
    pub job_id: JobId,
    /// The job's current state (`queued` for a new job, `scheduled` for one given a later
    /// `run_at` or a `delay`).
    pub status: JobState,
    /// Where to poll the job.
    pub status_url: String,
}

/// `<shared_root>/<job_id>/input/manifest.json`, the authoritative job descriptor, whichever
/// schema version it was written in (the versions differ only in how they list inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Must equal the trigger's `job_id`.
    pub job_id: JobId,
    /// Must equal the trigger's `user_id`.
    pub user_id: String,
    /// Must equal the trigger's `agent_name`.
    pub agent_name: AgentName,
    /// Must equal the trigger's `job_name`.
    pub job_name: JobName,
    /// Parameters as Rails recorded them.
    pub params: Option<Map<String, Value>>,
    /// When Rails wrote the manifest.
    pub created_at: Option<Timestamp>,
    /// The input list, in the form of the manifest's version.
    pub inputs: Inputs,
}

/// A manifest's input list; its form is what tells the versions apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// v1: paths relative to `input/`.
    Paths(Vec<String>),
    /// v2: files with the size and digest Rails wrote.
    Files(Vec<InputFile>),
}

impl Manifest {
    /// The schema version it was written in.
    pub fn version(&self) -> u32 {
        match self.inputs {
            Inputs::Paths(_) => 1,
            Inputs::Files(_) => 2,
        }
    }
}

/// The wire form of manifest v1 (`schemas/v1/manifest.json`).
pub type ManifestV1 = ManifestOf<String>;

/// The wire form of manifest v2 (`schemas/v2/manifest.json`).
pub type ManifestV2 = ManifestOf<InputFile>;

/// The wire form of a manifest whose inputs are listed as `I`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestOf<I> {
    /// Picks the schema the manifest is checked against.
    pub schema_version: u32,
    /// See [`Manifest::job_id`].
    pub job_id: JobId,
    /// See [`Manifest::user_id`].
    pub user_id: String,
    /// See [`Manifest::agent_name`].
    pub agent_name: AgentName,
    /// See [`Manifest::job_name`].
    pub job_name: JobName,
    /// See [`Manifest::params`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    /// Input files under `input/`.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<I>,
    /// See [`Manifest::created_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

impl<I> ManifestOf<I> {
    /// The version-independent view, with the inputs wrapped by `inputs`.
    pub fn into_manifest(self, inputs: impl FnOnce(Vec<I>) -> Inputs) -> Manifest {
        Manifest {
            job_id: self.job_id,
            user_id: self.user_id,
            agent_name: self.agent_name,
            job_name: self.job_name,
            params: self.params,
            created_at: self.created_at,
            inputs: inputs(self.inputs),
        }
    }
}

/// One input file of a v2 manifest: what Rails wrote, so the sidecar can prove it reads the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Relative to `input/`.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// The file's media type, if Rails knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

/// One progress event as the agent reported it (before it gets a `seq`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// A short machine-friendly stage name.
    pub stage: Option<String>,
    /// A human-readable message.
    pub message: Option<String>,
    /// Completion estimate, 0 to 100.
    pub percent: Option<f64>,
}

/// A progress event as stored and served: the agent's report with its order and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgressSnapshot {
    /// Per-job sequence number; Rails drops an event older than one it has seen.
    pub seq: u64,
    /// See [`Progress::stage`].
    pub stage: Option<String>,
    /// See [`Progress::message`].
    pub message: Option<String>,
    /// See [`Progress::percent`].
    pub percent: Option<f64>,
    /// When the agent printed it.
    pub timestamp: Timestamp,
}

/// POSTed to `callback_urls.progress` for progress events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressCallback {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// The job's user.
    pub user_id: String,
    /// The Rails handler of the job.
    pub job_name: JobName,
    /// The agent reporting.
    pub agent_name: AgentName,
    /// Per-job sequence number.
    pub seq: u64,
    /// Stage name, if the agent gave one.
    pub stage: Option<String>,
    /// Message, if any.
    pub message: Option<String>,
    /// Percent done, if known.
    pub percent: Option<f64>,
    /// When the agent printed it.
    pub timestamp: Timestamp,
}

/// Why a job did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReason {
    /// The agent exited with a non-zero code.
    ExitCode,
    /// The agent died on a signal.
    Signal,
    /// The agent ran past its timeout.
    Timeout,
    /// The agent could not be started.
    SpawnFailed,
    /// The sidecar stopped while the job ran and the agent says not to retry (or its
    /// attempts are used up).
    SidecarRestarted,
    /// Someone asked to cancel it (API, CLI or a watcher's `STOP`).
    Canceled,
    /// The agent printed nothing for longer than its `stale_after`.
    Stale,
    /// It waited in the queue longer than `max_queue_age`.
    QueueTimeout,
    /// The sidecar failed while supervising the attempt (a bug, logged with its place); the
    /// agent was stopped.
    Internal,
}

/// The `error` of a completion: null when the job completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobError {
    /// A stable, machine-readable cause.
    pub reason: ErrorReason,
    /// A readable sentence, with the last stderr lines where they help.
    pub message: String,
    /// The agent's exit code, when it exited.
    pub exit_code: Option<i32>,
}

/// Timing and correlation of a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionMeta {
    /// Wall time of the agent run (0 if it never started).
    pub duration_ms: u64,
    /// When the agent started, if it did.
    pub started_at: Option<Timestamp>,
    /// When the job ended.
    pub finished_at: Timestamp,
    /// The job's trace id, for joining logs.
    pub trace_id: String,
    /// The run this outcome came from: 1 for the first, each retry, re-run or restart counts
    /// one more; 0 when the job never started (canceled or expired while queued).
    #[serde(default)]
    pub attempt: u32,
}

/// POSTed to `callback_urls.completion` once the job is terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionCallback {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// The job's user.
    pub user_id: String,
    /// The Rails handler to dispatch: `JobName.completed(...)`.
    pub job_name: JobName,
    /// The agent that ran.
    pub agent_name: AgentName,
    /// The terminal state.
    pub status: JobState,
    /// Where the outputs are (`file:///.../output/` by default).
    pub output_uri: String,
    /// The final summary.json (each artifact with its `url`, and `content_base64` when
    /// inlined), or a trimmed index with a pointer when it is large.
    pub output_index: Value,
    /// Why it did not complete; null when it did.
    pub error: Option<JobError>,
    /// Timing and correlation.
    pub meta: CompletionMeta,
    /// A JWT over `{sub = job_id, job_name, status, user_id}` so a stored payload stays verifiable.
    pub sig: String,
}

/// One file under `output/artifacts/`, as indexed in summary.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Path relative to `output/`.
    pub path: String,
    /// Guessed from the extension.
    pub mime: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// A path under `output/artifacts/` that was not indexed (symlink, device, fifo...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectedArtifact {
    /// Path relative to `output/`.
    pub path: String,
    /// Why it was not indexed.
    pub reason: String,
}

/// When the job was queued, started and finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// When the trigger was accepted.
    pub queued_at: Timestamp,
    /// When the agent started.
    pub started_at: Option<Timestamp>,
    /// When the job ended.
    pub finished_at: Timestamp,
    /// Agent wall time.
    pub duration_ms: u64,
}

/// `output/summary.json`: the agent's findings completed by the sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// The agent that ran.
    pub agent_name: AgentName,
    /// The terminal state.
    pub status: JobState,
    /// Every regular file under `output/artifacts/`.
    pub artifacts: Vec<Artifact>,
    /// Paths under `output/artifacts/` that were refused.
    pub rejected_artifacts: Vec<RejectedArtifact>,
    /// The agent's findings, as it wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Value>,
    /// The agent's notes, as it wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<Value>,
    /// The agent's metrics, as it wrote them in its summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    /// Timing of the run.
    pub timing: Timing,
}

/// `output/metrics.json`: the agent's KPIs merged with what the sidecar measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricsFile {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// Agent wall time.
    pub duration_ms: u64,
    /// The agent's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Progress events parsed from stdout (every line).
    pub progress_events: u64,
    /// Bytes the agent wrote to stdout.
    pub stdout_bytes: u64,
    /// Bytes the agent wrote to stderr.
    pub stderr_bytes: u64,
    /// Peak resident memory of the agent, in KiB.
    pub max_rss_kb: Option<u64>,
    /// The agent's own KPIs (its `output/metrics.json`); measured keys win on a clash.
    #[serde(flatten)]
    pub agent: Map<String, Value>,
}

impl MetricsFile {
    /// Keys the sidecar owns; the agent's values for them are dropped.
    pub const MEASURED_KEYS: [&'static str; 8] = [
        "version",
        "job_id",
        "duration_ms",
        "exit_code",
        "progress_events",
        "stdout_bytes",
        "stderr_bytes",
        "max_rss_kb",
    ];
}

/// One state change of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// The state entered.
    pub state: JobState,
    /// When.
    pub at: Timestamp,
    /// The attempt it belongs to.
    pub attempt: u32,
}

/// One ended attempt of a job: how it ended and, when it is retried, from when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobAttempt {
    /// Its number (1 for the first run).
    pub attempt: u32,
    /// When its agent started, if it did.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Timestamp,
    /// How it ended: a terminal state (`retry_at` set when it was retried), or `queued` when
    /// a restart interrupted it and it was queued again.
    pub state: JobState,
    /// The agent's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why it did not complete.
    pub error: Option<JobError>,
    /// When it is retried: the next attempt starts no earlier than this.
    pub retry_at: Option<Timestamp>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet acknowledged; retried on schedule.
    Pending,
    /// Acknowledged with a 2xx.
    Delivered,
    /// Given up on; needs a redrive.
    Dead,
}

impl DeliveryState {
    /// The wire and storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state {s:?}; known: pending, delivered, dead"))
    }
}

/// One delivery attempt as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryAttempt {
    /// When it started.
    pub at: Timestamp,
    /// HTTP status, if a response came back.
    pub status_code: Option<u16>,
    /// Transport error, or the status and first bytes of an error body.
    pub error: Option<String>,
    /// How long it took.
    pub latency_ms: u64,
}

/// A callback delivery: its stable id, where it stands, and every attempt made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryStatus {
    /// Stable across retries (JWT `jti`, `webhook-id`).
    pub delivery_id: DeliveryId,
    /// The job it reports.
    pub job_id: JobId,
    /// The job's Rails handler.
    pub job_name: JobName,
    /// Origin (`scheme://host:port`) it goes to.
    pub destination: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it was written to the outbox.
    pub created_at: Timestamp,
    /// HTTP status of the last attempt, if it got one.
    pub last_status_code: Option<u16>,
    /// Error of the last attempt, if any.
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<Timestamp>,
    /// When Rails acknowledged it.
    pub delivered_at: Option<Timestamp>,
    /// Every attempt, oldest first.
    pub history: Vec<DeliveryAttempt>,
}

/// `GET /deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryList {
    /// Matching deliveries, newest first.
    pub deliveries: Vec<DeliveryStatus>,
}

/// `POST /deliveries/redrive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveResult {
    /// Ids of the deliveries put back in the outbox.
    pub redriven: Vec<DeliveryId>,
}

/// `GET /jobs/{job_id}` (and `GET /status/{job_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatus {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// The job's user.
    pub user_id: String,
    /// The agent.
    pub agent_name: AgentName,
    /// The Rails handler.
    pub job_name: JobName,
    /// Scheduling priority.
    pub priority: Priority,
    /// The trigger's concurrency key, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub concurrency_key: Option<String>,
    /// Current state.
    pub state: JobState,
    /// Attempt number (1 for the first run; 0 while never started).
    pub attempt: u32,
    /// While `scheduled`: the time it becomes `queued` (a trigger's `run_at` or `delay`, or
    /// a retry's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub run_at: Option<Timestamp>,
    /// Every attempt that ended, oldest first.
    #[serde(default)]
    pub attempts: Vec<JobAttempt>,
    /// Correlation id for logs and callbacks.
    pub trace_id: String,
    /// Every state change, oldest first.
    pub transitions: Vec<Transition>,
    /// The latest progress event, if any.
    pub last_progress: Option<ProgressSnapshot>,
    /// The agent's exit code, once it exited.
    pub exit_code: Option<i32>,
    /// Why it did not complete, once terminal.
    pub error: Option<JobError>,
    /// The completion callback's delivery, once terminal.
    pub delivery: Option<DeliveryStatus>,
    /// Where the outputs are.
    pub output_uri: String,
    /// The final summary (or trimmed index), once terminal.
    pub output_index: Option<Value>,
}

/// One entry of a job's history as watchers receive it: the `data` of an SSE event (whose `id`
/// is `seq`) and one WebSocket message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// Position in the job's history, from 1, without gaps except for pruned progress.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// The attempt it belongs to (0 before the first run).
    pub attempt: u32,
    /// What happened.
    #[serde(flatten)]
    pub data: EventData,
}

/// What a [`JobEvent`] says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventData {
    /// The job moved to `state`.
    State {
        /// The new state.
        state: JobState,
    },
    /// The agent reported progress.
    Progress {
        /// Stage name, if the agent gave one.
        stage: Option<String>,
        /// Message, if any.
        message: Option<String>,
        /// Percent done, if known.
        percent: Option<f64>,
    },
}

impl JobEvent {
    /// Whether this event ends the job's history.
    pub fn is_terminal(&self) -> bool {
        matches!(self.data, EventData::State { state } if state.is_terminal())
    }
}

/// One job in `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSummary {
    /// The job.
    pub job_id: JobId,
    /// The job's user.
    pub user_id: String,
    /// The agent.
    pub agent_name: AgentName,
    /// The Rails handler.
    pub job_name: JobName,
    /// Scheduling priority.
    pub priority: Priority,
    /// Current state.
    pub state: JobState,
    /// Attempt number.
    pub attempt: u32,
    /// Acceptance time.
    pub created_at: Timestamp,
    /// When the current attempt started.
    pub started_at: Option<Timestamp>,
    /// When the job ended.
    pub finished_at: Option<Timestamp>,
}

/// `GET /jobs`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    /// Payload version.
    pub version: u32,
    /// The jobs.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What `POST /jobs/{job_id}/cancel` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelAccepted {
    /// Payload version.
    pub version: u32,
    /// The job.
    pub job_id: JobId,
    /// `canceled` when it was still queued; `in_progress` while its agent is being stopped.
    pub state: JobState,
    /// Where to follow it.
    pub status_url: String,
}

/// The body of `POST /jobs/{job_id}/retry` (optional; an empty body is `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Re-run a job that ended `completed` (or `partial`) too.
    #[serde(default)]
    pub force: bool,
}

/// What `POST /jobs/{job_id}/retry` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryAccepted {
    /// Payload version.
    pub version: u32,
    /// The job (the same id; its folder is the same folder).
    pub job_id: JobId,
    /// `queued`.
    pub state: JobState,
    /// The attempt it runs as next (the ended one's plus one).
    pub attempt: u32,
    /// Where the ended attempt's `output/` was moved, relative to the job folder
    /// (`output.attempt-<n>`); absent when it had none.
    pub previous_output: Option<String>,
    /// Where to follow it.
    pub status_url: String,
}

/// One live node of the fleet in `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// The node's name (`store.node_id`).
    pub node_id: String,
    /// The agents it offers: it claims only jobs of these.
    pub agents: Vec<AgentName>,
    /// Jobs it runs now.
    pub running: u32,
    /// Its overall concurrency limit.
    pub max_concurrent: u32,
    /// When its current process started.
    pub started_at: Timestamp,
    /// Its latest heartbeat.
    pub last_heartbeat: Timestamp,
}

/// `GET /nodes`: the live nodes of the fleet (one for the embedded store), by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeList {
    /// Payload version.
    pub version: u32,
    /// The nodes whose heartbeat is younger than one lease.
    pub nodes: Vec<NodeStatus>,
}

/// How many jobs are in one state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateCount {
    /// The state.
    pub state: JobState,
    /// How many.
    pub count: u64,
}

/// `GET /jobs/counts`: how many jobs a filter matches, per state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCounts {
    /// Payload version.
    pub version: u32,
    /// One entry per state with at least one job, in lifecycle order.
    pub counts: Vec<StateCount>,
    /// Their sum.
    pub total: u64,
}

/// Nearest-rank percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `values`; none for no values.
    pub fn of(mut values: Vec<u64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let rank = |p: usize| values[(values.len() * p).div_ceil(100).max(1) - 1];
        Some(Self {
            count: values.len() as u64,
            p50: rank(50),
            p95: rank(95),
            p99: rank(99),
            max: values[values.len() - 1],
        })
    }
}

/// One agent in the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentOverview {
    /// The agent.
    pub agent: AgentName,
    /// Jobs accepted in the window, per state.
    pub counts: Vec<StateCount>,
    /// Jobs waiting for a slot now.
    pub queued: u64,
    /// When the longest-waiting of them entered the queue.
    pub oldest_queued_at: Option<Timestamp>,
    /// Jobs running now, over the whole fleet.
    pub running: u64,
    /// Its `max_concurrent` on this node; none when this node does not offer it.
    pub max_concurrent: Option<usize>,
}

impl AgentOverview {
    /// An agent with nothing counted yet.
    pub fn new(agent: AgentName, max_concurrent: Option<usize>) -> Self {
        Self {
            agent,
            counts: Vec::new(),
            queued: 0,
            oldest_queued_at: None,
            running: 0,
            max_concurrent,
        }
    }
}

/// One time bucket of the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverviewBucket {
    /// Its start.
    pub at: Timestamp,
    /// Jobs that ended `completed` or `partial` in it.
    pub completed: u64,
    /// Jobs that ended `failed` or `timed_out`.
    pub failed: u64,
    /// Jobs that ended `canceled`.
    pub canceled: u64,
    /// Run time (start of the last attempt to the end) of the jobs that ended.
    pub duration_ms: Option<Percentiles>,
    /// Time in the queue before their last attempt started.
    pub queue_wait_ms: Option<Percentiles>,
    /// Callback attempts made.
    pub callbacks: u64,
    /// Of those, the ones Rails did not answer with a 2xx.
    pub callback_failures: u64,
    /// How long the attempts took.
    pub callback_latency_ms: Option<Percentiles>,
}

/// `GET /overview`: the fleet at a glance over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Overview {
    /// Payload version.
    pub version: u32,
    /// The window's start.
    pub since: Timestamp,
    /// Its end (now).
    pub until: Timestamp,
    /// Each bucket's length.
    pub bucket_seconds: u64,
    /// Each agent this node offers or the store holds jobs of, by name.
    pub agents: Vec<AgentOverview>,
    /// Completions waiting for their next attempt.
    pub pending_deliveries: u64,
    /// Completions given up on (dead letters).
    pub dead_letters: u64,
    /// Run time of the jobs that ended in the window.
    pub duration_ms: Option<Percentiles>,
    /// Their time in the queue.
    pub queue_wait_ms: Option<Percentiles>,
    /// Callback attempts' latency in the window.
    pub callback_latency_ms: Option<Percentiles>,
    /// The window in time buckets, oldest first.
    pub buckets: Vec<OverviewBucket>,
}

/// `POST /jobs/bulk/cancel` and `POST /jobs/bulk/retry`: the jobs to act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// The jobs, at most 1000.
    #[schema(min_items = 1, max_items = 1000)]
    pub job_ids: Vec<JobId>,
    /// Re-run completed jobs too (retry only).
    #[serde(default)]
    pub force: bool,
}

/// What a bulk action did to one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkItem {
    /// The job.
    pub job_id: JobId,
    /// The HTTP status the one-job endpoint would have answered.
    pub status: u16,
    /// The job's state after the action, when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Why it was refused, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer to a bulk action: one item per requested job, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkResult {
    /// Payload version.
    pub version: u32,
    /// How many were acted on.
    pub done: u32,
    /// How many were refused.
    pub refused: u32,
    /// Each job's outcome.
    pub results: Vec<BulkItem>,
}

/// Whether an agent's queued jobs are claimed (issue 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Its jobs are claimed as slots free up.
    Active,
    /// Paused (itself, or every agent): triggers are still accepted and queued, running jobs
    /// finish, nothing new starts until it is resumed.
    Paused,
}

impl AgentState {
    /// The state as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
        }
    }
}

/// An agent's limits, as configured (`[agents.NAME]`, `[jobs]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentLimits {
    /// Runs of the agent at once, on each node.
    pub max_concurrent: u32,
    /// Runs of the agent with one `concurrency_key` at once, on every node; `null` for no limit.
    pub max_per_key: Option<u32>,
    /// Wall-clock limit of one run, in milliseconds.
    pub timeout_ms: u64,
    /// A run silent this long (milliseconds) is stopped; `null` for no check.
    pub stale_after_ms: Option<u64>,
    /// Runs of one job at most.
    pub max_attempts: u32,
}

/// One agent in `GET /agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    /// The agent.
    pub agent_name: AgentName,
    /// `paused` when it, or every agent, is paused.
    pub state: AgentState,
    /// Whether it is paused by itself (`POST /agents/{name}/pause`), whatever the sidecar-wide
    /// pause says.
    pub paused: bool,
    /// Its limits.
    pub limits: AgentLimits,
    /// Its jobs waiting in the queue, on every node.
    pub queued: u64,
    /// Its jobs running, on every node.
    pub running: u64,
}

/// `GET /agents`: every configured agent, by name, and the sidecar-wide pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentList {
    /// Payload version.
    pub version: u32,
    /// Whether every agent is paused (`POST /agents/pause`); an agent paused by itself stays
    /// paused when this is lifted.
    pub paused: bool,
    /// The agents.
    pub agents: Vec<AgentStatus>,
}
