//! Running agents: the scheduler ([`Runner`]) that claims queued jobs within the concurrency
//! limits, the supervisor of each attempt (`attempt.rs`), and the controls that stop a run
//! early (cancel, sweeper, lapse, shutdown).
//!
//! The queue lives in the store; the runner only keeps what it is running. It claims when
//! woken (a trigger arrived, a job ended) and, as a fallback, on a slow timer.

#[forbid(unsafe_code)]
mod attempt;

#[forbid(unsafe_code)]
pub mod guardian;
#[forbid(unsafe_code)]
pub mod lines;
#[forbid(unsafe_code)]
pub mod outputs;
pub mod process;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{Config, OnRestart};
use crate::contract::{AgentName, ErrorReason, JobId, JobState, Timestamp};
use crate::delivery::Deliveries;
use crate::fence::{self, Armed, Fence};
use crate::store::{JobRecord, Slot, Store, StoreError, StoreResult};
use crate::telemetry;
use attempt::Supervisor;
use guardian::Guardian;

/// How often the queue is looked at when nothing wakes the runner.
const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// After a failed promotion of due scheduled jobs, the wait before the next try.
const SCHEDULE_RETRY: Duration = Duration::from_secs(1);
/// When the due scheduled jobs are being promoted by another node, the wait before looking again.
const SCHEDULE_CONTENDED: Duration = Duration::from_millis(50);
/// After the drain timeout, how long stopped agents get to go (beyond their kill grace).
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// Why a run is stopped before its agent exits by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Someone canceled the job: it ends `canceled`.
    Cancel,
    /// The agent printed nothing for longer than its `stale_after`: `timed_out`.
    Stale,
    /// The agent ran past its `timeout`: `timed_out`.
    Timeout,
    /// The sidecar is stopping: the job stays `in_progress` for the next start.
    Interrupt,
    /// This node lost the attempt's lease (another node took the job over): it writes nothing.
    Lost,
}

/// The handle on one running attempt.
pub struct Control {
    /// The run's limits, as defined when it started (a reload does not change them).
    timeout: Duration,
    stale_after: Option<Duration>,
    span: tracing::Span,
    attempt: u32,
    started: Timestamp,
    stop: CancellationToken,
    reason: OnceLock<StopReason>,
    last_output_ms: AtomicI64,
    /// The lease epoch the run started in, and its own lease deadline (see [`fence`]).
    epoch: u64,
    until: AtomicU64,
    fence: Arc<Fence>,
}

impl Control {
    fn new(
        agent: Option<&crate::config::AgentConfig>,
        span: tracing::Span,
        (attempt, started): (u32, Timestamp),
        fence: &Arc<Fence>,
        until: u64,
    ) -> Self {
        fence.lease.lower_to(until);
        Self {
            epoch: fence.lease.epoch(),
            until: AtomicU64::new(until),
            fence: Arc::clone(fence),
            timeout: agent.map_or(Duration::MAX, |a| a.timeout),
            stale_after: agent.and_then(|a| a.stale_after),
            span,
            attempt,
            started,
            stop: CancellationToken::new(),
            reason: OnceLock::new(),
            last_output_ms: AtomicI64::new(started.unix_ms()),
        }
    }

    /// Stops the run; the first reason given is the one that counts.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }

    fn reason(&self) -> StopReason {
        self.reason.get().copied().unwrap_or(StopReason::Interrupt)
    }

    /// Whether this run may still write into its job folder: its lease epoch holds and it was
    /// not found lost. Checked right before every write (log.txt, outputs).
    fn may_write(&self) -> bool {
        self.reason.get() != Some(&StopReason::Lost) && self.fence.lease.valid_in(self.epoch)
    }

    /// Records that the agent printed a line (it is alive).
    fn touch(&self) {
        self.last_output_ms
            .store(Timestamp::now().unix_ms(), Ordering::Relaxed);
    }

    fn last_output(&self) -> Timestamp {
        Timestamp::from_unix_ms(self.last_output_ms.load(Ordering::Relaxed))
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now `canceled`.
    Canceled,
    /// The job is running; its agent is being stopped and the job ends `canceled`.
    Stopping,
}

/// Why a cancel was not done.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such job.
    #[error("no job {0}")]
    NotFound(JobId),
    /// The job has already ended.
    #[error("job {job_id} has already ended: {state}")]
    Ended {
        /// The job.
        job_id: JobId,
        /// Its terminal state.
        state: JobState,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The scheduler of agent runs: claims what fits within the limits, hands each claim to the
/// supervisor (`attempt.rs`), keeps the runs' leases, stops runs (cancel, sweeper, lapse, drain) and
/// recovers what a previous process left.
pub struct Runner {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    supervisor: Arc<Supervisor>,
    fence: Arc<Fence>,
    guardian: Option<Arc<Guardian>>,
    wake: Notify,
    idle: Notify,
    running: Mutex<Running>,
    draining: CancellationToken,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Running {
    total: usize,
    per_agent: HashMap<AgentName, usize>,
    jobs: HashMap<JobId, Arc<Control>>,
    /// Stops asked for between a claim and its registration here, by (job, attempt).
    early: HashMap<(JobId, u32), StopReason>,
}

/// How the runner's agents are guarded: the fence on folder writes, and the guardian process
/// (none when the sidecar runs in-process, e.g. in tests and the demo).
pub struct Guard {
    /// The lease fence shared with the mirror.
    pub fence: Arc<Fence>,
    /// The guardian, if `main` started one.
    pub guardian: Option<Arc<Guardian>>,
}

impl Runner {
    /// A runner over `shared_root` (already canonical), whose completions link artifacts under
    /// `public_url`.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        deliveries: Arc<Deliveries>,
        (shared_root, public_url, guard): (PathBuf, String, Guard),
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let supervisor = Arc::new(Supervisor {
            store: Arc::clone(&store),
            config: Arc::clone(&config),
            deliveries,
            shared_root,
            public_url,
            fence: Arc::clone(&guard.fence),
            guardian: guard.guardian.clone(),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
        });
        Arc::new(Self {
            store,
            config,
            supervisor,
            fence: guard.fence,
            guardian: guard.guardian,
            wake: Notify::new(),
            idle: Notify::new(),
            running: Mutex::new(Running::default()),
            draining: CancellationToken::new(),
            tracker,
            cancel,
        })
    }

    /// Tells the scheduler to look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether the sidecar is shutting down (no new triggers, no new runs).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Handles the jobs a previous process left `in_progress` (their agent died with it), per
    /// their agent's `on_restart`: requeued while attempts remain, else ended `failed`
    /// (`sidecar_restarted`) with an explicit completion. A job whose cancel was accepted ends
    /// `canceled`. Returns how many were handled.
    pub async fn recover(self: &Arc<Self>) -> StoreResult<usize> {
        let orphans = self.store.orphans(Timestamp::now()).await?;
        let count = orphans.len();
        for job in orphans {
            let span = job_span(&job);
            self.recover_one(job).instrument(span).await?;
        }
        Ok(count)
    }

    async fn recover_one(&self, job: JobRecord) -> StoreResult<()> {
        let agent = self.config.agents.get(&job.agent_name);
        if job.cancel_requested {
            info!("job was being canceled when the sidecar stopped; ending it canceled");
            let message = "canceled by request; the sidecar stopped before the agent did";
            return ignore_stale(
                self.end_unrun(job, JobState::Canceled, ErrorReason::Canceled, message)
                    .await,
            );
        }
        let (requeue, max) = match agent {
            Some(a) => (a.on_restart == OnRestart::Requeue, a.max_attempts),
            None => (false, 0),
        };
        if requeue && job.attempt < max {
            info!(
                attempt = job.attempt,
                max_attempts = max,
                "the process running the job is gone (stopped, or its lease ran out); requeued"
            );
            return ignore_stale(
                self.store
                    .requeue(job.job_id, job.attempt, Timestamp::now())
                    .await,
            );
        }
        let message = if requeue {
            format!("the sidecar stopped while the agent ran, and all {max} attempts are used")
        } else {
            "the sidecar stopped while the agent ran".to_owned()
        };
        info!("the process running the job is gone (stopped, or its lease ran out); failing it");
        ignore_stale(
            self.end_unrun(
                job,
                JobState::Failed,
                ErrorReason::SidecarRestarted,
                &message,
            )
            .await,
        )
    }

    /// Cancels a job: a queued one ends `canceled` at once, a running one is stopped (SIGTERM,
    /// grace, SIGKILL) and then ends `canceled`.
    pub async fn cancel(&self, job_id: JobId) -> Result<CancelOutcome, CancelError> {
        // A job moves at most queued -> in_progress -> terminal, so two retries cover every race.
        for _ in 0..3 {
            let job = self
                .store
                .job(job_id)
                .await?
                .ok_or(CancelError::NotFound(job_id))?;
            match job.state {
                state if state.is_terminal() => {
                    return Err(CancelError::Ended { job_id, state });
                }
                JobState::InProgress => {
                    match self
                        .store
                        .request_cancel(job_id, job.attempt, Timestamp::now())
                        .await
                    {
                        Ok(()) => {
                            job_span(&job)
                                .in_scope(|| info!("cancel requested; stopping the agent"));
                            self.stop(job_id, job.attempt, StopReason::Cancel);
                            return Ok(CancelOutcome::Stopping);
                        }
                        Err(StoreError::Stale { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                _ => {
                    let span = job_span(&job);
                    let message = "canceled by request before it started";
                    match self
                        .end_unrun(job, JobState::Canceled, ErrorReason::Canceled, message)
                        .instrument(span)
                        .await
                    {
                        Ok(()) => return Ok(CancelOutcome::Canceled),
                        Err(StoreError::Stale { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let state = self
            .store
            .job(job_id)
            .await?
            .map_or(JobState::InProgress, |j| j.state);
        Err(CancelError::Ended { job_id, state })
    }

    /// Stops `attempt` of a job: the run of this process, or the run about to be registered.
    pub fn stop(&self, job_id: JobId, attempt: u32, reason: StopReason) {
        if reason == StopReason::Lost {
            self.fence.forfeit(job_id);
        }
        let mut running = self.lock();
        match running.jobs.get(&job_id) {
            Some(control) if control.attempt == attempt => control.stop(reason),
            Some(_) => {}
            None => {
                running.early.insert((job_id, attempt), reason);
            }
        }
    }

    /// Stops runs that went silent past their agent's `stale_after` or ran past its
    /// `timeout`; returns the jobs stopped, with why.
    pub fn stop_overdue(&self, now: Timestamp) -> Vec<(JobId, StopReason)> {
        let running = self.lock();
        let mut stopped = Vec::new();
        for (job_id, control) in &running.jobs {
            if control.stop.is_cancelled() {
                continue;
            }
            let silent = Duration::from_millis(now.millis_since(control.last_output()));
            let ran = Duration::from_millis(now.millis_since(control.started));
            let reason = if ran > control.timeout {
                StopReason::Timeout
            } else if control.stale_after.is_some_and(|limit| silent > limit) {
                StopReason::Stale
            } else {
                continue;
            };
            control
                .span
                .in_scope(|| info!(?reason, "sweeper: stopping the agent"));
            control.stop(reason);
            stopped.push((*job_id, reason));
        }
        stopped
    }

    /// Renews the leases of this node's runs every third of the lease, until cancelled; a run
    /// whose lease was lost is stopped without writing, one asked to cancel (on any node) is
    /// canceled.
    pub async fn keep_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.store.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.cancel.cancelled() => return,
            }
            if let Err(e) = self.beat().await {
                warn!(error = %e, "heartbeat failed; retrying");
            }
        }
    }

    /// One heartbeat: this node's agents and runs, recorded; lost and canceled runs stopped.
    pub async fn beat(&self) -> StoreResult<()> {
        let running: Vec<(JobId, u32)> = {
            let running = self.lock();
            running
                .jobs
                .iter()
                .map(|(id, c)| (*id, c.attempt))
                .collect()
        };
        let started = fence::monotonic_ms();
        let beat = crate::store::Beat {
            agents: self.config.agents.snapshot().keys().cloned().collect(),
            running: running.clone(),
            max_concurrent: self.config.jobs.max_concurrent,
            at: Timestamp::now(),
        };
        let answer = self.store.heartbeat(beat).await?;
        for (job_id, attempt) in &answer.lost {
            self.stop(*job_id, *attempt, StopReason::Lost);
        }
        let renewed: Vec<(JobId, u32)> = running
            .into_iter()
            .filter(|run| !answer.lost.contains(run))
            .collect();
        self.renew(started, &renewed);
        for (job_id, attempt) in answer.cancel {
            self.stop(job_id, attempt, StopReason::Cancel);
        }
        Ok(())
    }

    /// Moves the local lease deadline after a heartbeat that began at `started` (monotonic
    /// ms) renewed `renewed`: to the earliest deadline of any run (one claimed after the
    /// heartbeat's snapshot keeps its claim's). If the deadline had passed, every run of the
    /// lapsed epoch is forfeited: killed now (the guardian may have done it already) and
    /// nothing more written for it.
    fn renew(&self, started: u64, renewed: &[(JobId, u32)]) {
        let until = fence::deadline(started, self.config.store.lease);
        let earliest = {
            let running = self.lock();
            for (job_id, attempt) in renewed {
                if let Some(control) = running.jobs.get(job_id).filter(|c| c.attempt == *attempt) {
                    control.until.fetch_max(until, Ordering::AcqRel);
                }
            }
            // A run being stopped as lost is not renewed and must not pull the deadline of
            // every other run into the past.
            running
                .jobs
                .values()
                .filter(|c| c.reason.get() != Some(&StopReason::Lost))
                .map(|c| c.until.load(Ordering::Acquire))
                .fold(until, u64::min)
        };
        let (armed, reopened) = self.fence.renew(earliest);
        if let Armed::AfterLapse { epoch } = armed {
            let lapsed: Vec<(JobId, u32)> = self
                .lock()
                .jobs
                .iter()
                .filter(|(_, c)| c.epoch <= epoch)
                .map(|(id, c)| (*id, c.attempt))
                .collect();
            warn!(
                runs = lapsed.len(),
                "this node's lease lapsed before it could renew it (paused, or the store was unreachable): \
                 its runs are no longer this node's"
            );
            for (job_id, attempt) in lapsed {
                self.stop(job_id, attempt, StopReason::Lost);
            }
        }
        if let Some(guardian) = &self.guardian {
            guardian.wake();
        }
        if reopened {
            // The claims waited for the lease (the folders' marks are woken by the fence).
            self.wake();
        }
    }

    /// Acts on what other nodes did: a job queued wakes the scheduler, a cancel accepted
    /// elsewhere for a run of this node stops it.
    pub async fn follow_signals(self: Arc<Self>) {
        let mut signals = self.store.signals();
        loop {
            let signal = tokio::select! {
                s = signals.recv() => s,
                () = self.cancel.cancelled() => return,
            };
            match signal {
                Ok(crate::store::Signal::Queued) => self.wake(),
                Ok(crate::store::Signal::Cancel(job_id, attempt)) => {
                    self.stop(job_id, attempt, StopReason::Cancel);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.wake(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Whether this process runs `job_id`'s `attempt` right now.
    pub fn runs(&self, job_id: JobId, attempt: u32) -> bool {
        self.lock()
            .jobs
            .get(&job_id)
            .is_some_and(|c| c.attempt == attempt)
    }

    /// Ends a job no agent of this process runs (queued, or left `in_progress` by a process
    /// that is gone): outputs finalised with what exists, completion callback written.
    /// `StoreError::Stale` if the job moved meanwhile (nothing was changed).
    pub async fn end_unrun(
        &self,
        job: JobRecord,
        state: JobState,
        reason: ErrorReason,
        message: &str,
    ) -> StoreResult<()> {
        self.supervisor
            .conclude_without_run(job, state, reason, message.to_owned())
            .await
    }

    /// Stops claiming new jobs and refuses new triggers; running jobs go on.
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Drains: no new runs; running jobs get up to `timeout` to finish, then are stopped and
    /// left `in_progress` for the next start to handle per `on_restart`.
    pub async fn drain(&self, timeout: Duration) {
        self.begin_drain();
        let running = self.lock().total;
        if running > 0 {
            info!(running, timeout = ?timeout, "draining: waiting for running jobs");
        }
        if tokio::time::timeout(timeout, self.wait_idle())
            .await
            .is_ok()
        {
            return;
        }
        let controls: Vec<Arc<Control>> = self.lock().jobs.values().cloned().collect();
        warn!(
            count = controls.len(),
            "drain timeout reached: stopping the remaining agents; their jobs resume on the next start"
        );
        for control in controls {
            control.stop(StopReason::Interrupt);
        }
        let bound = self.config.jobs.kill_grace + STOP_MARGIN;
        if tokio::time::timeout(bound, self.wait_idle()).await.is_err() {
            error!("agents did not stop in time; leaving them to the next start");
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().total == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The scheduling loop; returns when draining or cancelled. It sleeps until it is woken,
    /// the earliest scheduled job is due, or the fallback poll.
    pub async fn run(self: Arc<Self>) {
        loop {
            telemetry::heartbeat();
            let next_due = self.promote_due().await;
            self.start_what_fits().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(next_due) => {}
                () = self.draining.cancelled() => return,
                () = self.cancel.cancelled() => return,
            }
        }
    }

    /// Moves the scheduled jobs that are due (of any node) to the queue; answers how long
    /// until the next one is due, at most the fallback poll. Nothing is written while none is
    /// due: one read of the earliest `run_at`.
    async fn promote_due(&self) -> Duration {
        let next = match self.store.next_run_at().await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "cannot read the schedule; looking again later");
                return FALLBACK_POLL;
            }
        };
        let now = Timestamp::now();
        match next {
            Some(at) if at <= now => {
                match self.store.promote_due(now).await {
                    // More may be due than one batch held; the next turn of the loop looks.
                    Ok(n) if n > 0 => Duration::ZERO,
                    // Another node is promoting them (their rows were locked).
                    Ok(_) => SCHEDULE_CONTENDED,
                    Err(e) => {
                        warn!(error = %e, "cannot queue the scheduled jobs that are due; retrying");
                        SCHEDULE_RETRY
                    }
                }
            }
            Some(at) => Duration::from_millis(at.millis_since(now)).min(FALLBACK_POLL),
            None => FALLBACK_POLL,
        }
    }

    async fn start_what_fits(self: &Arc<Self>) {
        while !self.cancel.is_cancelled() && !self.is_draining() {
            let (slots, free) = self.free_slots();
            if free == 0 || slots.is_empty() {
                return;
            }
            if !self.fence.lease.valid() {
                // A node that could not renew its lease takes no new work until it does.
                return;
            }
            let claimed_at = fence::monotonic_ms();
            match self.store.claim(slots, free, Timestamp::now()).await {
                Ok(jobs) if jobs.is_empty() => return,
                Ok(jobs) => jobs.into_iter().for_each(|job| self.start(job, claimed_at)),
                Err(e) => {
                    error!(error = %e, "cannot claim jobs");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free slots per agent (agents with none left are omitted), with each agent's per-key
    /// limit, and free slots overall.
    fn free_slots(&self) -> (Vec<Slot>, usize) {
        let running = self.lock();
        let free = self
            .config
            .jobs
            .max_concurrent
            .saturating_sub(running.total);
        let slots = self
            .config
            .agents
            .snapshot()
            .iter()
            .map(|(name, agent)| {
                let busy = running.per_agent.get(name).copied().unwrap_or(0);
                Slot {
                    agent: name.clone(),
                    free: agent.max_concurrent.saturating_sub(busy),
                    max_per_key: agent.max_per_key,
                }
            })
            .filter(|s| s.free > 0)
            .collect();
        (slots, free)
    }

    fn start(self: &Arc<Self>, job: JobRecord, claimed_at: u64) {
        let span = job_span(&job);
        // The definition in force now is the one this run keeps, whatever a reload does.
        let agent = self.config.agents.get(&job.agent_name);
        self.fence.reclaim(job.job_id);
        let control = Arc::new(Control::new(
            agent.as_deref(),
            span.clone(),
            (job.attempt, job.started_at.unwrap_or_else(Timestamp::now)),
            &self.fence,
            fence::deadline(claimed_at, self.config.store.lease),
        ));
        {
            let mut running = self.lock();
            running.total += 1;
            *running.per_agent.entry(job.agent_name.clone()).or_default() += 1;
            running.jobs.insert(job.job_id, Arc::clone(&control));
            telemetry::job_started(&job.agent_name, job.queued_at, control.started);
            if let Some(reason) = running.early.remove(&(job.job_id, job.attempt)) {
                control.stop(reason);
            }
        }
        let this = Arc::clone(self);
        self.tracker.spawn(
            async move {
                let name = job.agent_name.clone();
                let job_id = job.job_id;
                // The attempt's boundary: a panic below ends the attempt instead of leaving
                // its slot taken and its lease renewed until a restart.
                let supervised = AssertUnwindSafe(this.supervisor.supervise(
                    job.clone(),
                    Arc::clone(&control),
                    agent,
                ))
                .catch_unwind()
                .await;
                if let Err(panic) = supervised {
                    let what = panic_message(panic.as_ref()).to_owned();
                    this.end_after_panic(job, &control, &what).await;
                }
                this.release(job_id, &name);
            }
            .instrument(span),
        );
    }

    /// Ends an attempt whose supervision panicked (its agent was killed as the supervision
    /// unwound): `failed` with reason `internal`, unless the run is no longer this node's.
    async fn end_after_panic(&self, job: JobRecord, control: &Control, what: &str) {
        error!(attempt = job.attempt, panic = %what, "the attempt's supervision failed; ending it failed (internal)");
        if !control.may_write() {
            return;
        }
        let message = format!(
            "the sidecar failed while supervising attempt {}: {what}",
            job.attempt
        );
        ignore_stale(
            self.supervisor
                .conclude_without_run(job, JobState::Failed, ErrorReason::Internal, message)
                .await,
        )
        .unwrap_or_else(
            |e| error!(error = %e, "cannot record the end of the job; it is recovered on restart"),
        );
    }

    fn release(&self, job_id: JobId, agent: &AgentName) {
        {
            let mut running = self.lock();
            running.total = running.total.saturating_sub(1);
            if let Some(n) = running.per_agent.get_mut(agent) {
                *n = n.saturating_sub(1);
            }
            running.jobs.remove(&job_id);
            // A stop that arrived after this attempt ended is moot.
            running.early.retain(|(id, _), _| *id != job_id);
        }
        telemetry::job_released(agent);
        self.idle.notify_waiters();
        self.wake();
    }
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// A write refused because the job moved on is not an error for recovery: someone else ended
/// or requeued it.
fn ignore_stale(result: StoreResult<()>) -> StoreResult<()> {
    match result {
        Err(StoreError::Stale { .. }) => Ok(()),
        other => other,
    }
}

/// The tracing span every line about a job is logged in.
pub fn job_span(job: &JobRecord) -> tracing::Span {
    info_span!("job", job_id = %job.job_id, job_name = %job.job_name, agent_name = %job.agent_name, trace_id = %job.trace_id)
}
