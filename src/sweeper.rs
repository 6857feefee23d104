//! The sweeper: a background task that ends stuck jobs and prunes old ones, on an interval.
//!
//! Each pass, in order:
//! 1. runs of this process that went silent past their agent's `stale_after`, or ran past its
//!    `timeout`, are stopped (they end `timed_out` with a completion);
//! 2. jobs whose lease ran out (their node died) are taken over per their agent's `on_restart`;
//!
//! and then, only on the fleet's leader (one node at a time, see [`Store::lead`]):
//! 3. `in_progress` jobs no agent of this process runs, past their timeout, end `timed_out`;
//! 4. jobs queued longer than `max_queue_age` end `timed_out` (`queue_timeout`);
//! 5. terminal jobs older than the retention, whose completion is no longer pending, are
//!    deleted with their history, and (only if configured) their folders.
//!
//! Every end goes through the store's compare-and-set on `(state, attempt)`: a job that moved
//! while the sweeper decided keeps the state it moved to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::config::Config;
use crate::contract::{ErrorReason, JobState, Timestamp};
use crate::runner::{Runner, StopReason, job_span};
use crate::store::{Pruned, Store, StoreResult};
use crate::telemetry;

/// Jobs handled per kind and pass, so one pass stays short.
const BATCH: usize = 500;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Runs stopped as stale or over their timeout.
    pub stopped: usize,
    /// Jobs of dead nodes taken over (requeued or ended per `on_restart`).
    pub reclaimed: usize,
    /// Unsupervised runs ended `timed_out`.
    pub abandoned: usize,
    /// Queued jobs ended `timed_out` (`queue_timeout`).
    pub expired: usize,
    /// Terminal jobs deleted.
    pub pruned: usize,
}

/// The sweeper task.
pub struct Sweeper {
    store: Arc<dyn Store>,
    runner: Arc<Runner>,
    config: Arc<Config>,
    shared_root: PathBuf,
}

impl Sweeper {
    /// A sweeper over the running parts.
    pub fn new(
        store: Arc<dyn Store>,
        runner: Arc<Runner>,
        config: Arc<Config>,
        shared_root: PathBuf,
    ) -> Self {
        Self {
            store,
            runner,
            config,
            shared_root,
        }
    }

    /// Sweeps every `sweeper.interval` until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.sweeper.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            if let Err(e) = self.sweep(Timestamp::now()).await {
                error!(error = %e, "sweep failed; retrying next interval");
            }
        }
    }

    /// One pass at `now`.
    pub async fn sweep(&self, now: Timestamp) -> StoreResult<Swept> {
        telemetry::heartbeat();
        let mut swept = Swept::default();
        for (_, reason) in self.runner.stop_overdue(now) {
            let action = match reason {
                StopReason::Stale => "stale",
                _ => "timeout",
            };
            telemetry::sweeper_action(action, 1);
            swept.stopped += 1;
        }
        // Every node takes over jobs whose lease ran out (fenced: one takeover counts), so a
        // paused leader cannot hold them up.
        swept.reclaimed = self.runner.recover().await?;
        telemetry::sweeper_action("reclaimed", swept.reclaimed);
        if !self.store.lead().await? {
            return Ok(swept);
        }
        swept.abandoned = self.end_abandoned(now).await?;
        telemetry::sweeper_action("abandoned", swept.abandoned);
        swept.expired = self.expire_queued(now).await?;
        telemetry::sweeper_action("queue_timeout", swept.expired);
        swept.pruned = self.prune(now).await?;
        telemetry::sweeper_action("pruned", swept.pruned);
        Ok(swept)
    }

    async fn end_abandoned(&self, now: Timestamp) -> StoreResult<usize> {
        let mut ended = 0;
        for job in self.store.in_progress().await? {
            if self.runner.runs(job.job_id, job.attempt) {
                continue;
            }
            let Some(agent) = self.config.agents.get(&job.agent_name) else {
                continue;
            };
            let deadline = job
                .started_at
                .unwrap_or(job.created_at)
                .plus(agent.timeout + self.config.jobs.kill_grace);
            if now <= deadline {
                continue;
            }
            let span = job_span(&job);
            // A cancel was accepted for it: end it as the caller was told it would end.
            let (state, reason, message) = if job.cancel_requested {
                (
                    JobState::Canceled,
                    ErrorReason::Canceled,
                    "canceled by request; no agent was running it".to_owned(),
                )
            } else {
                (
                    JobState::TimedOut,
                    ErrorReason::Timeout,
                    format!(
                        "no agent ran the job past its timeout of {}",
                        humantime::format_duration(agent.timeout)
                    ),
                )
            };
            let result = self
                .runner
                .end_unrun(job, state, reason, &message)
                .instrument(span.clone())
                .await;
            if ended_here(result)? {
                span.in_scope(|| warn!("sweeper: ended an unsupervised run past its timeout"));
                ended += 1;
            }
        }
        Ok(ended)
    }

    async fn expire_queued(&self, now: Timestamp) -> StoreResult<usize> {
        let Some(max_age) = self.config.jobs.max_queue_age else {
            return Ok(0);
        };
        let before = Timestamp::from_unix_ms(
            now.unix_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
        );
        let message = format!(
            "waited in the queue longer than max_queue_age of {}",
            humantime::format_duration(max_age)
        );
        let mut ended = 0;
        for job in self.store.queued_before(before, BATCH).await? {
            let span = job_span(&job);
            let result = self
                .runner
                .end_unrun(job, JobState::TimedOut, ErrorReason::QueueTimeout, &message)
                .instrument(span.clone())
                .await;
            if ended_here(result)? {
                span.in_scope(|| info!("sweeper: queue timeout"));
                ended += 1;
            }
        }
        Ok(ended)
    }

    async fn prune(&self, now: Timestamp) -> StoreResult<usize> {
        let retention =
            i64::try_from(self.config.sweeper.retention.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::from_unix_ms(now.unix_ms().saturating_sub(retention));
        let pruned = self.store.prune(before, BATCH).await?;
        for job in &pruned {
            pruned_span(job).in_scope(|| info!("sweeper: pruned from the store"));
        }
        if self.config.sweeper.prune_folders && !pruned.is_empty() {
            let root = self.shared_root.clone();
            let count = pruned.len();
            let _ = tokio::task::spawn_blocking(move || remove_folders(&root, &pruned)).await;
            return Ok(count);
        }
        Ok(pruned.len())
    }
}

fn pruned_span(job: &Pruned) -> tracing::Span {
    tracing::info_span!("job", job_id = %job.job_id, job_name = %job.job_name, agent_name = %job.agent_name, trace_id = %job.trace_id)
}

/// Whether the sweeper's end was recorded; a job that moved meanwhile keeps what it moved to.
fn ended_here(result: StoreResult<()>) -> StoreResult<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(crate::store::StoreError::Stale { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `<root>/<job_id>` of each job; a symlink in its place is removed, never followed.
fn remove_folders(root: &Path, jobs: &[Pruned]) {
    for job in jobs {
        let _span = pruned_span(job).entered();
        let path = root.join(job.job_id.to_string());
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => info!("sweeper: job folder deleted"),
            Err(e) => warn!(error = %e, "sweeper: cannot delete the job folder"),
        }
    }
}
