//! Wakes a job's watchers when its history grows. Watchers read the events themselves from the
//! store, so a wake-up carries nothing and a slow watcher holds nothing here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use crate::contract::JobId;

/// What a [`Tap`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    /// This job has new events.
    Job(JobId),
    /// Any job may have new events (notifications may have been missed).
    All,
}

/// Hears of every job's new events, watched or not (the job-folder mirror).
pub type Tap = Arc<dyn Fn(Touched) + Send + Sync>;

/// One wake-up channel per watched job, and one tap for all of them.
#[derive(Default)]
pub struct Hub {
    jobs: Mutex<HashMap<JobId, watch::Sender<()>>>,
    tap: OnceLock<Tap>,
}

impl Hub {
    /// A receiver that changes whenever `job_id` gets new events.
    pub fn subscribe(&self, job_id: JobId) -> watch::Receiver<()> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        // Jobs whose watchers all left are forgotten here, so the map stays as small as the
        // set of watched jobs.
        jobs.retain(|_, tx| tx.receiver_count() > 0);
        jobs.entry(job_id)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Sets the tap; a hub has at most one (a second is ignored).
    pub fn set_tap(&self, tap: Tap) {
        let _ = self.tap.set(tap);
    }

    /// Tells every watcher to look again (notifications may have been missed).
    pub fn touch_all(&self) {
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            for tx in jobs.values() {
                tx.send_replace(());
            }
        }
        self.tell(Touched::All);
    }

    /// Tells `job_id`'s watchers, if any, that it has new events.
    pub fn touch(&self, job_id: JobId) {
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = jobs.get(&job_id) {
                tx.send_replace(());
            }
        }
        self.tell(Touched::Job(job_id));
    }

    fn tell(&self, touched: Touched) {
        if let Some(tap) = self.tap.get() {
            tap(touched);
        }
    }
}
