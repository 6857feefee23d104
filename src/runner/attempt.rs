//! The supervisor of one attempt of one job: spawn the agent, stream its output, enforce its
//! timeout, finalise `output/`, and hand the outcome to [`Deliveries::complete`], which ends
//! the job in the store together with its completion callback.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::guardian::Guardian;
use super::lines::{LineReader, parse_progress, parse_retry};
use super::outputs::{self, Measured, RunReport};
use super::process::{AgentProcess, ExitKind, Spawn};
use super::{Control, StopReason};
use crate::config::{AgentConfig, Config};
use crate::contract::{
    ErrorReason, JobError, JobState, PAYLOAD_VERSION, ProgressCallback, Timestamp, Timing,
};
use crate::delivery::{Deliveries, Outcome};
use crate::fence::Fence;
use crate::jobdir::JobDir;
use crate::retry::{Ended, RetryAsk};
use crate::store::{JobRecord, RetryLater, Store, StoreError};

/// stderr lines kept for error.log.
const STDERR_TAIL: usize = 20;
/// How long output pipes may stay open after the agent's group was killed (a descendant that
/// left the group could hold them).
const PIPE_DRAIN: Duration = Duration::from_secs(5);
/// Environment passed through from the sidecar; nothing else of its environment is.
const PASSED_ENV: [&str; 6] = ["PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR"];

/// How an attempt ended, before the outputs are finalised.
struct Ending {
    state: JobState,
    error: Option<JobError>,
    measured: Measured,
    stderr_tail: Vec<String>,
    /// The agent's final stdout line, when it asked for a retry.
    ask: Option<RetryAsk>,
}

/// The newest stdout line, overwritten in place (no allocation per line).
#[derive(Default)]
struct LatestLine {
    bytes: Vec<u8>,
    truncated: bool,
    at: Option<Timestamp>,
}

/// `output/log.txt`: the agent's stderr and the sidecar's lifecycle lines, timestamped.
/// Fenced by its run: once the run may no longer write (its lease lapsed, it was lost), lines
/// are dropped, those still buffered included.
pub(super) struct JobLog {
    file: Mutex<Option<tokio::io::BufWriter<tokio::fs::File>>>,
    run: Option<Arc<Control>>,
}

impl JobLog {
    /// Opens `output/log.txt` through the job folder's handle (never through a link).
    fn open(dir: &JobDir) -> Result<Self, crate::jobdir::JobDirError> {
        let file = tokio::fs::File::from_std(dir.append("output/log.txt")?);
        Ok(Self {
            file: Mutex::new(Some(tokio::io::BufWriter::new(file))),
            run: None,
        })
    }

    /// The same log, written only while `run` may write.
    fn fenced_by(self, run: &Arc<Control>) -> Self {
        Self {
            run: Some(Arc::clone(run)),
            ..self
        }
    }

    /// The file, unless the run may no longer write: then what is buffered is dropped too.
    fn writable<'a>(
        &self,
        file: &'a mut Option<tokio::io::BufWriter<tokio::fs::File>>,
    ) -> Option<&'a mut tokio::io::BufWriter<tokio::fs::File>> {
        if self.run.as_ref().is_some_and(|run| !run.may_write()) {
            *file = None;
        }
        file.as_mut()
    }

    async fn line(&self, source: &str, text: &str) {
        let entry = format!("{} [{source}] {text}\n", Timestamp::now());
        let mut file = self.file.lock().await;
        let Some(file) = self.writable(&mut file) else {
            return;
        };
        if let Err(e) = file.write_all(entry.as_bytes()).await {
            warn!(error = %e, "cannot write log.txt");
        }
    }

    async fn flush(&self) {
        let mut file = self.file.lock().await;
        if let Some(file) = self.writable(&mut file) {
            let _ = file.flush().await;
        }
    }
}

enum Waited {
    Exited(std::io::Result<super::process::Exit>),
    Stopped(StopReason),
}

/// Runs claimed attempts to their end; what it needs of the sidecar, and nothing of the
/// scheduler's state.
pub(super) struct Supervisor {
    pub(super) store: Arc<dyn Store>,
    pub(super) config: Arc<Config>,
    pub(super) deliveries: Arc<Deliveries>,
    pub(super) shared_root: PathBuf,
    /// The API's base URL, which artifact URLs are under.
    pub(super) public_url: String,
    pub(super) fence: Arc<Fence>,
    pub(super) guardian: Option<Arc<Guardian>>,
    pub(super) tracker: TaskTracker,
    pub(super) cancel: CancellationToken,
}

impl Supervisor {
    /// Runs one claimed job to its end.
    pub(super) async fn supervise(
        self: &Arc<Self>,
        job: JobRecord,
        control: Arc<Control>,
        agent: Option<Arc<AgentConfig>>,
    ) {
        let cannot_run = |message: String| async {
            let _ = self
                .conclude_without_run(
                    job.clone(),
                    JobState::Failed,
                    ErrorReason::SpawnFailed,
                    message,
                )
                .await;
        };
        let Some(agent) = agent else {
            cannot_run(format!("agent {} is no longer configured", job.agent_name)).await;
            return;
        };
        let dir = match JobDir::open(&self.shared_root, job.job_id, self.modes()) {
            Ok(dir) => dir,
            Err(e) => {
                cannot_run(format!("job folder unusable: {e}")).await;
                return;
            }
        };
        // A link planted in output/ before the run fails it here, before the agent starts.
        if let Err(e) = dir.prepare_output().and_then(|()| dir.check_output()) {
            cannot_run(format!("job folder refused: {e}")).await;
            return;
        }
        let log = match JobLog::open(&dir) {
            Ok(log) => Arc::new(log.fenced_by(&control)),
            Err(e) => {
                cannot_run(format!("job folder refused: {e}")).await;
                return;
            }
        };
        let ending = match self.run_agent(&job, &agent, &dir, &log, &control).await {
            Some(ending) if control.may_write() => ending,
            ended => {
                if !control.may_write() {
                    // Lost, or the lease lapsed while the agent ran: the guardian (or the
                    // runner) killed it, another node may run the job now; its folder is theirs.
                    self.fence.forfeit(job.job_id);
                    warn!(
                        attempt = job.attempt,
                        "this attempt is no longer this node's (its lease lapsed or another node took \
                         the job over): agent stopped, nothing written for it"
                    );
                } else if ended.is_none() {
                    log.line(
                        "sidecar",
                        "sidecar shutting down; agent stopped, job left for recovery",
                    )
                    .await;
                }
                log.flush().await;
                return;
            }
        };
        log.line(
            "sidecar",
            &format!("attempt {} ended: {}", job.attempt, ending.state),
        )
        .await;
        log.flush().await;
        let _ = self
            .conclude_in(job, Some((dir, Some(&control))), ending)
            .await;
    }

    /// Spawns and supervises the agent; `None` when the sidecar is shutting down.
    async fn run_agent(
        &self,
        job: &JobRecord,
        agent: &AgentConfig,
        dir: &JobDir,
        log: &Arc<JobLog>,
        control: &Arc<Control>,
    ) -> Option<Ending> {
        let env = agent_env(job, agent, dir);
        let spec = Spawn {
            argv: &agent.command,
            cwd: dir.root(),
            env: &env,
        };
        if !control.may_write() {
            return None;
        }
        let mut process = match self.spawn_guarded(&spec, control) {
            Ok(p) => p,
            Err(e) => {
                let message = format!("cannot start {:?}: {e}", agent.command[0]);
                log.line("sidecar", &message).await;
                return Some(failed(
                    ErrorReason::SpawnFailed,
                    message,
                    Measured::default(),
                    Vec::new(),
                ));
            }
        };
        info!(pid = process.pid(), attempt = job.attempt, "agent started");
        // The tests make supervision fail here (see `Runner::start`'s panic boundary).
        fail::fail_point!("agent_started");
        log.line(
            "sidecar",
            &format!(
                "attempt {} started: pid {} {}",
                job.attempt,
                process.pid(),
                agent.command.join(" ")
            ),
        )
        .await;

        let max_line = self.config.jobs.max_line_bytes;
        let stdout = self.tracker.spawn(self.stream_stdout(
            job,
            process.stdout.take(),
            max_line,
            Arc::clone(control),
        ));
        let stderr = self.tracker.spawn(read_stderr(
            process.stderr.take(),
            Arc::clone(log),
            max_line,
            Arc::clone(control),
        ));

        let waited = tokio::select! {
            exit = process.wait() => Waited::Exited(exit),
            () = tokio::time::sleep(agent.timeout) => Waited::Stopped(StopReason::Timeout),
            () = control.stop.cancelled() => Waited::Stopped(control.reason()),
            () = self.cancel.cancelled() => Waited::Stopped(StopReason::Interrupt),
        };
        let (exit, stopped) = match waited {
            Waited::Exited(exit) => (exit, None),
            Waited::Stopped(reason) => {
                let why = stop_sentence(reason, agent);
                warn!(reason = ?reason, "stopping the agent: {why}");
                log.line("sidecar", &format!("{why}: SIGTERM to the process group"))
                    .await;
                let exit = if reason == StopReason::Lost {
                    // The job is the fleet's now: no grace that would overlap the next attempt.
                    process.signal_group(libc::SIGKILL);
                    process.wait().await
                } else {
                    self.terminate(&process, log).await
                };
                if matches!(reason, StopReason::Interrupt | StopReason::Lost) {
                    // Bounded, so a descendant holding a pipe cannot hold up the shutdown.
                    drain(stdout).await;
                    drain(stderr).await;
                    return None;
                }
                (exit, Some((reason, why)))
            }
        };
        // Whatever the agent left behind in its group went with it (`wait`), so the pipes close.
        let (stdout_bytes, progress_events, ask) = drain(stdout).await.unwrap_or_default();
        let (stderr_bytes, stderr_tail) = drain(stderr).await.unwrap_or_default();
        let mut measured = Measured {
            exit_code: None,
            progress_events,
            stdout_bytes,
            stderr_bytes,
            max_rss_kb: None,
        };
        let mut ending = match exit {
            Ok(e) if stopped.is_some() => {
                measured.max_rss_kb = Some(e.max_rss_kb);
                let (reason, why) = stopped.unwrap_or((StopReason::Timeout, String::new()));
                let (state, reason) = match reason {
                    StopReason::Cancel => (JobState::Canceled, ErrorReason::Canceled),
                    StopReason::Stale => (JobState::TimedOut, ErrorReason::Stale),
                    _ => (JobState::TimedOut, ErrorReason::Timeout),
                };
                failed_as(state, reason, why, measured, stderr_tail)
            }
            Ok(e) => ending_of(e, measured, stderr_tail),
            Err(e) => failed(
                ErrorReason::SpawnFailed,
                format!("cannot wait for the agent: {e}"),
                measured,
                stderr_tail,
            ),
        };
        ending.ask = ask;
        Some(ending)
    }

    /// Spawns the agent and registers its process group with the guardian (if there is one),
    /// which forgets it just before the agent is reaped. An agent the guardian cannot watch
    /// is killed: it must not outlive the sidecar.
    fn spawn_guarded(&self, spec: &Spawn<'_>, control: &Control) -> std::io::Result<AgentProcess> {
        let mut process = AgentProcess::spawn(spec)?;
        let Some(guardian) = &self.guardian else {
            return Ok(process);
        };
        let pgid = process.pid();
        if let Err(e) = guardian.watch(pgid, control.epoch) {
            process.kill_now();
            return Err(e);
        }
        let guardian = Arc::clone(guardian);
        process.before_reap(move || guardian.unwatch(pgid));
        Ok(process)
    }

    /// SIGTERM to the group, the grace period, then SIGKILL; returns the reaped exit.
    async fn terminate(
        &self,
        process: &AgentProcess,
        log: &JobLog,
    ) -> std::io::Result<super::process::Exit> {
        process.signal_group(libc::SIGTERM);
        match tokio::time::timeout(self.config.jobs.kill_grace, process.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                log.line("sidecar", "grace period over: SIGKILL to the process group")
                    .await;
                process.signal_group(libc::SIGKILL);
                process.wait().await
            }
        }
    }

    /// Reads stdout and turns it into stored progress events and (coalesced) progress posts;
    /// answers the bytes and lines read, and the agent's ask for a retry if its final line is one.
    fn stream_stdout(
        &self,
        job: &JobRecord,
        pipe: Option<pipe::Receiver>,
        max_line: usize,
        control: Arc<Control>,
    ) -> impl Future<Output = (u64, u64, Option<RetryAsk>)> + Send + 'static {
        let (latest_tx, latest_rx) = watch::channel(LatestLine::default());
        let poster = self.deliveries.progress_poster(
            job.job_id,
            job.request.callback_urls.progress.clone(),
            job.trace_id.clone(),
        );
        let pump = pump_progress(Arc::clone(&self.store), job.clone(), latest_rx, poster);
        async move {
            let read = async move {
                let Some(pipe) = pipe else {
                    return (0, 0, None);
                };
                let mut reader = LineReader::new(pipe, max_line);
                let mut events = 0u64;
                while let Ok(Some(line)) = reader.next_line().await {
                    if line.bytes.trim_ascii().is_empty() {
                        continue;
                    }
                    events += 1;
                    control.touch();
                    latest_tx.send_modify(|slot| {
                        slot.bytes.clear();
                        slot.bytes.extend_from_slice(line.bytes);
                        slot.truncated = line.truncated;
                        slot.at = Some(Timestamp::now());
                    });
                }
                let ask = {
                    let last = latest_tx.borrow();
                    (!last.truncated)
                        .then(|| parse_retry(&last.bytes))
                        .flatten()
                };
                (reader.bytes_read(), events, ask)
            };
            let (counts, ()) = tokio::join!(read, pump);
            counts
        }
    }

    /// Ends a job without (further) running its agent: it cannot run, was canceled or timed
    /// out in the queue, or its agent died with a previous process. `StoreError::Stale` if the
    /// job moved meanwhile and nothing was changed.
    pub(super) async fn conclude_without_run(
        &self,
        job: JobRecord,
        state: JobState,
        reason: ErrorReason,
        message: String,
    ) -> Result<(), StoreError> {
        info!(%state, %message, "ending the job");
        // output/ alone: a refused artifacts/ is then said in error.log, which lives there.
        let output = JobDir::open(&self.shared_root, job.job_id, self.modes())
            .ok()
            .filter(|dir| dir.create_dir("output").is_ok());
        let ending = failed_as(state, reason, message, Measured::default(), Vec::new());
        self.conclude_in(job, output.map(|o| (o, None)), ending)
            .await
    }

    /// Finalises `output/` (when there is one; fenced by the run that wrote it, if any) and
    /// ends the job with its completion callback; `StoreError::Stale` if the job moved
    /// meanwhile and this end was discarded.
    async fn conclude_in(
        &self,
        job: JobRecord,
        output: Option<(JobDir, Option<&Arc<Control>>)>,
        mut ending: Ending,
    ) -> Result<(), StoreError> {
        let ask = ending.ask.take();
        let ran = output.as_ref().and_then(|(_, run)| run.cloned());
        let stale = || StoreError::Stale {
            job_id: job.job_id,
            expected: job.state,
            attempt: job.attempt,
        };
        // Checked before the output files are written, so a writer that lost a race (a claim
        // beat the sweeper; a paused node's job was taken over) does not touch them; `finish`
        // fences the rest of the window.
        match self.store.job(job.job_id).await? {
            Some(now) if now.state == job.state && now.attempt == job.attempt => {}
            _ => {
                info!(
                    attempt = job.attempt,
                    "this attempt is no longer this node's; its result is discarded"
                );
                return Err(stale());
            }
        }
        let finished_at = Timestamp::now();
        let timing = Timing {
            queued_at: job.created_at,
            started_at: job.started_at,
            finished_at,
            duration_ms: job.started_at.map_or(0, |s| finished_at.millis_since(s)),
        };
        let report = RunReport {
            job_id: job.job_id,
            agent_name: job.agent_name.clone(),
            state: ending.state,
            error: ending.error.clone(),
            timing: timing.clone(),
            measured: ending.measured.clone(),
            stderr_tail: ending.stderr_tail.clone(),
            inline: self
                .config
                .agents
                .get(&job.agent_name)
                .map(|a| a.inline_artifacts)
                .unwrap_or_default(),
        };
        let finalized = match output {
            Some((dir, run)) => {
                let run = run.cloned();
                let finalized = tokio::task::spawn_blocking(move || {
                    // Checked last, right before the files are written.
                    run.is_none_or(|r| r.may_write())
                        .then(|| outputs::finalize(&dir, report))
                })
                .await;
                match finalized {
                    Ok(None) => {
                        info!(
                            attempt = job.attempt,
                            "the lease lapsed before the outputs were written; this attempt is no longer this node's"
                        );
                        return Err(stale());
                    }
                    Ok(Some(r)) => r,
                    Err(e) => Err(io_error(std::io::Error::other(e))),
                }
            }
            None => Err(io_error(std::io::Error::other("no usable job folder"))),
        };
        let output_uri = self.output_uri(&job);
        let (state, error, output_index) = match finalized {
            Ok(done) => (
                done.state,
                done.error,
                outputs::output_index(
                    &done.summary,
                    &done.inlined,
                    &outputs::Announced {
                        output_uri: &output_uri,
                        public_url: &self.public_url,
                    },
                    self.config.callbacks.output_index_max_bytes,
                ),
            ),
            Err(e) => {
                warn!(error = %e, "cannot write the output files");
                let (state, error) = if e.is_refusal() {
                    outputs::refused(ending.state, ending.error, &e)
                } else {
                    (ending.state, ending.error)
                };
                let index = serde_json::json!({"version": PAYLOAD_VERSION, "job_id": job.job_id, "status": state, "artifacts": []});
                (state, error, index)
            }
        };
        if let Some(run) = ran
            && let Some(delay) = self.retry_delay(&job, state, error.as_ref(), ask.as_ref())
        {
            let end = (state, error.clone(), ending.measured.exit_code);
            if self.retry_later(&job, run, end, finished_at, delay).await? {
                return Ok(());
            }
        }
        let outcome = Outcome {
            state,
            error,
            exit_code: ending.measured.exit_code,
            output_uri,
            output_index,
            finished_at,
            duration_ms: timing.duration_ms,
        };
        self.deliveries.complete(&job, outcome).await
    }

    /// The wait before the next attempt when the run of `job` ended `state` (`error`), per
    /// its agent's retry policy as configured now; `None` when this end is final.
    fn retry_delay(
        &self,
        job: &JobRecord,
        state: JobState,
        error: Option<&JobError>,
        ask: Option<&RetryAsk>,
    ) -> Option<Duration> {
        let agent = self.config.agents.get(&job.agent_name)?;
        let error = error?;
        let ended = match (state, error.reason) {
            (JobState::Failed, ErrorReason::ExitCode) => Ended::ExitCode(error.exit_code?),
            (JobState::Failed, ErrorReason::Signal) => Ended::Signal,
            (JobState::TimedOut, ErrorReason::Timeout) => Ended::Timeout,
            (JobState::TimedOut, ErrorReason::Stale) => Ended::Stale,
            _ => return None,
        };
        agent
            .retry
            .next_delay(job.attempt, ended, ask, rand::random())
    }

    /// Ends the run's attempt for a retry after `delay`: its `output/` (final) moved aside to
    /// `output.attempt-<n>/`, Rails told "retrying in N s (attempt k of n)" as progress, then
    /// the job `scheduled` until then. `false` when `output/` cannot be moved aside: this end
    /// is then final, and completes as usual.
    async fn retry_later(
        &self,
        job: &JobRecord,
        run: Arc<Control>,
        (state, error, exit_code): (JobState, Option<JobError>, Option<i32>),
        at: Timestamp,
        delay: Duration,
    ) -> Result<bool, StoreError> {
        let stale = || StoreError::Stale {
            job_id: job.job_id,
            expected: job.state,
            attempt: job.attempt,
        };
        let (root, job_id, modes, attempt) = (
            self.shared_root.clone(),
            job.job_id,
            self.modes(),
            job.attempt,
        );
        let moved = tokio::task::spawn_blocking(move || {
            run.may_write()
                .then(|| JobDir::open(&root, job_id, modes)?.set_aside_output(attempt))
        })
        .await;
        match moved {
            Ok(None) => return Err(stale()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                warn!(error = %e, "cannot move output/ aside for the retry; this end is final");
                return Ok(false);
            }
            Err(e) => {
                warn!(error = %e, "cannot move output/ aside for the retry; this end is final");
                return Ok(false);
            }
        }
        let run_at = at.plus(delay);
        let attempts = self
            .config
            .agents
            .get(&job.agent_name)
            .map_or(attempt + 1, |a| a.retry.attempts);
        let message = format!(
            "retrying in {:.1} s (attempt {} of {attempts})",
            delay.as_secs_f64(),
            attempt + 1
        );
        info!(attempt, %state, run_at = %run_at, "attempt {attempt} ended {state}; {message}");
        self.tell_retrying(job, message, at).await;
        let schedule_key = job
            .priority
            .schedule_key(run_at, self.config.jobs.priority_aging);
        let retry = RetryLater {
            job_id,
            attempt,
            state,
            exit_code,
            error,
            at,
            run_at,
            schedule_key,
        };
        self.store.retry_later(retry).await?;
        Ok(true)
    }

    /// Records the "retrying" progress event of the attempt and posts it to Rails (best
    /// effort: the retry happens whether or not Rails heard of it).
    async fn tell_retrying(&self, job: &JobRecord, message: String, at: Timestamp) {
        let progress = crate::contract::Progress {
            stage: Some("retrying".to_owned()),
            message: Some(message),
            percent: None,
        };
        match self
            .store
            .record_progress(job.job_id, job.attempt, progress, at)
            .await
        {
            Ok(snapshot) => {
                let poster = self.deliveries.progress_poster(
                    job.job_id,
                    job.request.callback_urls.progress.clone(),
                    job.trace_id.clone(),
                );
                poster.send_replace(Some(progress_callback(job, snapshot)));
            }
            Err(e) => warn!(error = %e, "cannot record the retry as progress"),
        }
    }

    fn modes(&self) -> crate::jobdir::Modes {
        self.config.storage.modes
    }

    /// `output_uri` of a job: the configured prefix, or a `file://` URI of its folder.
    pub(crate) fn output_uri(&self, job: &JobRecord) -> String {
        crate::jobdir::output_uri(
            &self.config.storage.output_uri_prefix,
            &self.shared_root,
            job.job_id,
        )
    }
}

fn io_error(source: std::io::Error) -> crate::jobdir::JobDirError {
    crate::jobdir::JobDirError::Io {
        path: "output".into(),
        source,
    }
}

async fn drain<T>(handle: tokio::task::JoinHandle<T>) -> Option<T> {
    let abort = handle.abort_handle();
    match tokio::time::timeout(PIPE_DRAIN, handle).await {
        Ok(result) => result.ok(),
        Err(_) => {
            abort.abort();
            None
        }
    }
}

/// Why a run is being stopped, as a sentence for logs and `error.message`.
fn stop_sentence(reason: StopReason, agent: &AgentConfig) -> String {
    let human = |d: Duration| humantime::format_duration(d).to_string();
    match reason {
        StopReason::Cancel => "canceled by request".to_owned(),
        StopReason::Stale => format!(
            "agent printed nothing for longer than its stale_after of {}",
            human(agent.stale_after.unwrap_or_default())
        ),
        StopReason::Timeout => format!("agent ran past its timeout of {}", human(agent.timeout)),
        StopReason::Interrupt => {
            "sidecar shutting down; the job resumes on the next start".to_owned()
        }
        StopReason::Lost => {
            "the job is no longer this node's (its lease lapsed; another node took it over)"
                .to_owned()
        }
    }
}

fn failed(
    reason: ErrorReason,
    message: String,
    measured: Measured,
    stderr_tail: Vec<String>,
) -> Ending {
    failed_as(JobState::Failed, reason, message, measured, stderr_tail)
}

fn failed_as(
    state: JobState,
    reason: ErrorReason,
    message: String,
    measured: Measured,
    stderr_tail: Vec<String>,
) -> Ending {
    Ending {
        state,
        error: Some(JobError {
            reason,
            message,
            exit_code: measured.exit_code,
        }),
        measured,
        stderr_tail,
        ask: None,
    }
}

fn ending_of(
    exit: super::process::Exit,
    mut measured: Measured,
    stderr_tail: Vec<String>,
) -> Ending {
    measured.max_rss_kb = Some(exit.max_rss_kb);
    match exit.kind {
        ExitKind::Code(0) => {
            measured.exit_code = Some(0);
            Ending {
                state: JobState::Completed,
                error: None,
                measured,
                stderr_tail,
                ask: None,
            }
        }
        ExitKind::Code(code) => {
            measured.exit_code = Some(code);
            failed(
                ErrorReason::ExitCode,
                format!("agent exited with code {code}"),
                measured,
                stderr_tail,
            )
        }
        ExitKind::Signal(sig) => failed(
            ErrorReason::Signal,
            format!("agent was killed by signal {sig}"),
            measured,
            stderr_tail,
        ),
    }
}

/// Turns the newest stdout line into a stored event and hands it to the progress poster.
/// Lines printed while a write is in flight collapse into the newest one.
async fn pump_progress(
    store: Arc<dyn crate::store::Store>,
    job: JobRecord,
    mut latest: watch::Receiver<LatestLine>,
    poster: watch::Sender<Option<ProgressCallback>>,
) {
    while latest.changed().await.is_ok() {
        let (bytes, truncated, at) = {
            let slot = latest.borrow_and_update();
            (
                slot.bytes.clone(),
                slot.truncated,
                slot.at.unwrap_or_else(Timestamp::now),
            )
        };
        let Some(progress) = parse_progress(&bytes, truncated) else {
            continue;
        };
        match store
            .record_progress(job.job_id, job.attempt, progress, at)
            .await
        {
            Ok(snapshot) => {
                poster.send_replace(Some(progress_callback(&job, snapshot)));
            }
            Err(e) => {
                warn!(error = %e, "cannot record progress; later progress of this attempt is dropped");
                return;
            }
        }
    }
}

/// The progress callback of `job` for a stored event.
fn progress_callback(
    job: &JobRecord,
    snapshot: crate::contract::ProgressSnapshot,
) -> ProgressCallback {
    ProgressCallback {
        version: PAYLOAD_VERSION,
        job_id: job.job_id,
        user_id: job.user_id.clone(),
        job_name: job.job_name.clone(),
        agent_name: job.agent_name.clone(),
        seq: snapshot.seq,
        stage: snapshot.stage,
        message: snapshot.message,
        percent: snapshot.percent,
        timestamp: snapshot.timestamp,
    }
}

/// Copies stderr into log.txt, keeping the last lines for error.log.
async fn read_stderr(
    pipe: Option<pipe::Receiver>,
    log: Arc<JobLog>,
    max_line: usize,
    control: Arc<Control>,
) -> (u64, Vec<String>) {
    let Some(pipe) = pipe else {
        return (0, Vec::new());
    };
    let mut reader = LineReader::new(pipe, max_line);
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    while let Ok(Some(line)) = reader.next_line().await {
        control.touch();
        let mut text = String::from_utf8_lossy(line.bytes).into_owned();
        if line.truncated {
            text.push_str(" [line truncated]");
        }
        log.line("stderr", &text).await;
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(text);
    }
    (reader.bytes_read(), tail.into())
}

/// The agent's whole environment: a few harmless variables of the sidecar's, the agent's own
/// `env`, and the `AGENT_*` contract. No secret of the sidecar's is passed.
fn agent_env(job: &JobRecord, agent: &AgentConfig, dir: &JobDir) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = PASSED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    // Python block-buffers a piped stdout; progress must stream.
    env.insert("PYTHONUNBUFFERED".into(), "1".into());
    env.extend(agent.env.clone());
    let params = job.request.params.clone().unwrap_or_default();
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    env.extend([
        ("AGENT_JOB_ID".to_owned(), job.job_id.to_string()),
        ("AGENT_NAME".to_owned(), job.agent_name.to_string()),
        ("AGENT_JOB_NAME".to_owned(), job.job_name.to_string()),
        ("AGENT_ATTEMPT".to_owned(), job.attempt.to_string()),
        ("AGENT_INPUT_DIR".to_owned(), path(dir.input())),
        ("AGENT_OUTPUT_DIR".to_owned(), path(dir.output())),
        ("AGENT_MANIFEST".to_owned(), path(dir.manifest())),
        (
            "AGENT_PARAMS".to_owned(),
            serde_json::Value::Object(params).to_string(),
        ),
        ("AGENT_TRACE_ID".to_owned(), job.trace_id.clone()),
        (
            "TRACEPARENT".to_owned(),
            crate::contract::trace::traceparent(&job.trace_id),
        ),
    ]);
    env
}
