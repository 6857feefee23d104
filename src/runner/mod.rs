//! Running agents: the scheduler that claims queued jobs within the concurrency limits, and the
//! supervision of each run (see [`job`]).
//!
//! The queue lives in the store; the runner only keeps counts of what it is running. It claims
//! when woken (a trigger arrived, a job ended) and, as a fallback, on a slow timer.

mod job;

pub use job::output_uri;
pub mod lines;
pub mod outputs;
pub mod process;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span};

use crate::config::Config;
use crate::contract::{AgentName, Timestamp};
use crate::delivery::Deliveries;
use crate::store::{JobRecord, Store, StoreResult};

/// How often the queue is looked at when nothing wakes the runner.
const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// The scheduler and supervisor of agent runs.
pub struct Runner {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    deliveries: Arc<Deliveries>,
    shared_root: PathBuf,
    wake: Notify,
    running: Mutex<Running>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Running {
    total: usize,
    per_agent: HashMap<AgentName, usize>,
}

impl Runner {
    /// A runner over `shared_root` (already canonical).
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        deliveries: Arc<Deliveries>,
        shared_root: PathBuf,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            config,
            deliveries,
            shared_root,
            wake: Notify::new(),
            running: Mutex::new(Running::default()),
            tracker,
            cancel,
        })
    }

    /// Tells the scheduler to look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Ends the jobs a previous process left `in_progress` (their agent died with it): each is
    /// finalised with what its folder holds and ends `failed` with reason `sidecar_restarted`,
    /// with an explicit completion callback.
    pub async fn recover(self: &Arc<Self>) -> StoreResult<usize> {
        let orphans = self.store.in_progress().await?;
        let count = orphans.len();
        for job in orphans {
            let span = info_span!("job", job.id = %job.job_id, job.name = %job.job_name, agent = %job.agent_name, trace_id = %job.trace_id);
            async {
                info!(
                    "job {} was running when the sidecar stopped; failing it",
                    job.job_id
                );
                self.conclude_orphan(job).await;
            }
            .instrument(span)
            .await;
        }
        Ok(count)
    }

    /// The scheduling loop; returns when cancelled.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.start_what_fits().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(FALLBACK_POLL) => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }

    async fn start_what_fits(self: &Arc<Self>) {
        while !self.cancel.is_cancelled() {
            let (slots, free) = self.free_slots();
            if free == 0 || slots.is_empty() {
                return;
            }
            match self.store.claim(slots, free, Timestamp::now()).await {
                Ok(jobs) if jobs.is_empty() => return,
                Ok(jobs) => jobs.into_iter().for_each(|job| self.start(job)),
                Err(e) => {
                    error!(error = %e, "cannot claim jobs");
                    return;
                }
            }
        }
    }

    /// Free slots per agent (agents with none left are omitted) and free slots overall.
    fn free_slots(&self) -> (Vec<(AgentName, usize)>, usize) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let free = self
            .config
            .jobs
            .max_concurrent
            .saturating_sub(running.total);
        let slots = self
            .config
            .agents
            .iter()
            .map(|(name, agent)| {
                let busy = running.per_agent.get(name).copied().unwrap_or(0);
                (name.clone(), agent.max_concurrent.saturating_sub(busy))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        (slots, free)
    }

    fn start(self: &Arc<Self>, job: JobRecord) {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.total += 1;
            *running.per_agent.entry(job.agent_name.clone()).or_default() += 1;
        }
        let span = info_span!("job", job.id = %job.job_id, job.name = %job.job_name, agent = %job.agent_name, trace_id = %job.trace_id);
        let this = Arc::clone(self);
        self.tracker.spawn(
            async move {
                let agent = job.agent_name.clone();
                this.supervise(job).await;
                this.release(&agent);
            }
            .instrument(span),
        );
    }

    fn release(&self, agent: &AgentName) {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.total = running.total.saturating_sub(1);
            if let Some(n) = running.per_agent.get_mut(agent) {
                *n = n.saturating_sub(1);
            }
        }
        self.wake();
    }
}
