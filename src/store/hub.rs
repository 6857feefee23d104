//! The store's change feed. Every change a store records is told here: it wakes the job's
//! watchers (who read the events themselves, so a wake-up carries nothing and a slow watcher
//! holds nothing here) and the one observer of every job (the job-folder mirror, see
//! [`crate::mirror`]), which learns from it alone what to write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use super::AttemptOutcome;
use crate::contract::{DeliveryAttempt, DeliveryId, JobId};

/// A change the store recorded, or heard of from another node.
#[derive(Debug, Clone)]
pub enum Change {
    /// This process accepted a new job.
    Accepted(JobId),
    /// This process claimed the job to run it.
    Claimed(JobId),
    /// This process recorded progress of a job it runs.
    Progress(JobId),
    /// This process ended the job or put it back in the queue.
    Moved(JobId),
    /// Another node recorded events of the job (a fleet's notification).
    Heard(JobId),
    /// This process recorded an attempt to deliver the job's completion.
    Attempt(Box<AttemptRecorded>),
    /// Any job may have new events (notifications may have been missed).
    All,
}

impl Change {
    /// The job whose history may have grown, if the change is about one.
    fn job(&self) -> Option<JobId> {
        match self {
            Self::Accepted(id)
            | Self::Claimed(id)
            | Self::Progress(id)
            | Self::Moved(id)
            | Self::Heard(id) => Some(*id),
            Self::Attempt(_) | Self::All => None,
        }
    }
}

/// A completion attempt as the store recorded it.
#[derive(Debug, Clone)]
pub struct AttemptRecorded {
    /// The job whose completion it is.
    pub job_id: JobId,
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// Its number, from 1.
    pub number: u32,
    /// What happened.
    pub attempt: DeliveryAttempt,
    /// What becomes of the delivery.
    pub outcome: AttemptOutcome,
}

/// Hears every change of every job, watched or not (the job-folder mirror).
pub type Tap = Arc<dyn Fn(Change) + Send + Sync>;

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

    /// Tells the job's watchers (every watcher, for [`Change::All`]) and the tap.
    pub fn tell(&self, change: Change) {
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            match change.job() {
                Some(job_id) => {
                    if let Some(tx) = jobs.get(&job_id) {
                        tx.send_replace(());
                    }
                }
                None if matches!(change, Change::All) => {
                    for tx in jobs.values() {
                        tx.send_replace(());
                    }
                }
                None => {}
            }
        }
        if let Some(tap) = self.tap.get() {
            tap(change);
        }
    }
}
