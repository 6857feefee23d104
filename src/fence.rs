//! The fence on this node's writes to job folders: what the store's `(state, attempt)` check is
//! for its rows, this is for `output/`.
//!
//! A node may write a job's folder only while it holds the job's lease. The store cannot tell
//! a paused process that its lease ran out, so the node keeps its own deadline: every
//! successful heartbeat that began at `s` moves it to `s + 5/6 × lease` (see [`deadline`]),
//! and every write to a folder checks it first. Past the deadline, the runs of that lease are
//! forfeited: their agents are killed (by the guardian if the sidecar is stopped, see
//! [`crate::runner::guardian`]), nothing more is written for them, and their jobs are left to the
//! takeover. The deadline lives in a page shared with the guardian, and both sides move it
//! with compare-and-swap, so exactly one of them declares a lapse and both agree on which runs
//! it ended (they carry the lease's `epoch`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::contract::JobId;

/// The deadline word before the first heartbeat: nothing to enforce yet.
const UNARMED: u64 = 0;
/// The deadline word once a lapse was declared; the next renewal starts a new epoch.
const LAPSED: u64 = u64::MAX;

/// The node's local lease deadline, in `CLOCK_MONOTONIC` milliseconds: `start + 5/6 × lease`.
///
/// The arithmetic: heartbeats run every `lease / 3`, and a renewal that began at `s` makes the
/// store's `lease_until = s + lease` (the node's wall clock at `s`). Another node takes the job
/// over only once its clock passes `lease_until`. The deadline is `lease / 6` earlier, which
/// covers the guardian waking up and SIGKILL taking effect (milliseconds) and the clock skew
/// between nodes (NTP keeps it to milliseconds; `lease / 6` is at least 166 ms). A healthy node
/// still gets two more heartbeats (at `s + lease/3` and `s + 2 × lease/3`) before it. The
/// guardian SIGKILLs without a grace period: a grace (`jobs.kill_grace`) would have to come out
/// of either the node's renewal window or the takeover's wait.
pub fn deadline(start_ms: u64, lease: Duration) -> u64 {
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX / 2);
    start_ms.saturating_add(lease_ms / 6 * 5)
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Armed {
    /// The lease was still valid; it now runs to the new deadline.
    Renewed,
    /// The lease had lapsed (the deadline passed before the renewal came): every run of
    /// `epoch` is forfeited. A new epoch runs to the new deadline.
    AfterLapse {
        /// The epoch that lapsed.
        epoch: u64,
    },
}

/// The lease deadline and its epoch, shared with the guardian (or this process's own when
/// there is none).
pub struct Lease {
    words: Words,
}

enum Words {
    Shared(&'static [AtomicU64; 2]),
    Own(Box<[AtomicU64; 2]>),
}

impl Lease {
    /// A lease no other process watches (a sidecar run in-process: tests, the demo).
    pub fn local() -> Self {
        Self {
            words: Words::Own(Box::new([AtomicU64::new(UNARMED), AtomicU64::new(0)])),
        }
    }

    /// A lease in a page shared with the guardian.
    pub fn shared(words: &'static [AtomicU64; 2]) -> Self {
        Self {
            words: Words::Shared(words),
        }
    }

    fn words(&self) -> &[AtomicU64; 2] {
        match &self.words {
            Words::Shared(words) => words,
            Words::Own(words) => words,
        }
    }

    fn deadline_word(&self) -> &AtomicU64 {
        &self.words()[0]
    }

    /// The current epoch: runs started now belong to it.
    pub fn epoch(&self) -> u64 {
        self.words()[1].load(Ordering::Acquire)
    }

    /// Whether the lease is valid now (armed and not past its deadline, or not yet armed).
    pub fn valid(&self) -> bool {
        match self.deadline_word().load(Ordering::Acquire) {
            UNARMED => true,
            LAPSED => false,
            until => monotonic_ms() < until,
        }
    }

    /// Whether a run of `epoch` may still write.
    pub fn valid_in(&self, epoch: u64) -> bool {
        self.valid() && self.epoch() == epoch
    }

    /// Moves the deadline to `until` after a successful heartbeat; a lease found past its
    /// deadline is declared lapsed first (if the guardian did not already), so its runs end.
    pub fn arm(&self, until: u64) -> Armed {
        let word = self.deadline_word();
        let mut current = word.load(Ordering::Acquire);
        loop {
            if current == LAPSED {
                let epoch = self.words()[1].fetch_add(1, Ordering::AcqRel);
                word.store(until, Ordering::Release);
                return Armed::AfterLapse { epoch };
            }
            let next = if current != UNARMED && monotonic_ms() >= current {
                LAPSED
            } else {
                until
            };
            match word.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next == until => return Armed::Renewed,
                Ok(_) => current = LAPSED,
                Err(now) => current = now,
            }
        }
    }

    /// Brings the deadline forward to `until` if it is later (a run whose claim is older than
    /// the last renewal). A lapsed lease stays lapsed.
    pub fn lower_to(&self, until: u64) {
        let word = self.deadline_word();
        let mut current = word.load(Ordering::Acquire);
        while current == UNARMED || (current != LAPSED && current > until) {
            match word.compare_exchange(current, until, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// The deadline to wait for, if one is armed and has not lapsed.
    pub fn pending_deadline(&self) -> Option<u64> {
        match self.deadline_word().load(Ordering::Acquire) {
            UNARMED | LAPSED => None,
            until => Some(until),
        }
    }

    /// Declares the lease lapsed if its deadline has passed; the epoch that lapsed, when this
    /// call is the one that declared it (the guardian then kills that epoch's agents).
    pub fn lapse_if_due(&self) -> Option<u64> {
        let until = self.pending_deadline()?;
        if monotonic_ms() < until {
            return None;
        }
        self.deadline_word()
            .compare_exchange(until, LAPSED, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| self.epoch())
    }
}

/// The lease plus the jobs whose runs this node forfeited: what the runner and the mirror ask
/// before they write into a job folder.
pub struct Fence {
    /// The node's lease.
    pub lease: Lease,
    forfeited: Mutex<HashSet<JobId>>,
    settled: AtomicBool,
    reopened: Notify,
}

impl Fence {
    /// A fence over `lease`.
    pub fn new(lease: Lease) -> Self {
        Self {
            lease,
            forfeited: Mutex::new(HashSet::new()),
            settled: AtomicBool::new(false),
            reopened: Notify::new(),
        }
    }

    fn forfeited(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        self.forfeited.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether folders may be written at all now: the lease is valid, or every run has ended
    /// (the last writes of a shutdown, after the heartbeat stopped).
    pub fn open(&self) -> bool {
        self.settled.load(Ordering::Acquire) || self.lease.valid()
    }

    /// Moves the lease's deadline to `until` after a heartbeat (see [`Lease::arm`]); when
    /// that reopens the fence, the folder writer waiting for it ([`Fence::reopened`]) is woken
    /// and the caller is told (the scheduler's claims waited too).
    pub fn renew(&self, until: u64) -> (Armed, bool) {
        let reopened = !self.lease.valid();
        let armed = self.lease.arm(until);
        if reopened {
            self.reopened.notify_one();
        }
        (armed, reopened)
    }

    /// Resolves once a renewal reopened the fence after a lapse (or before the first
    /// heartbeat armed it), for the one writer that waits for it.
    pub async fn reopened(&self) {
        self.reopened.notified().await;
    }

    /// Whether `job_id`'s folder may be written now.
    pub fn allows(&self, job_id: JobId) -> bool {
        self.open() && !self.forfeited().contains(&job_id)
    }

    /// Whether this node lost `job_id`'s run (and does not run it again).
    pub fn forfeits(&self, job_id: JobId) -> bool {
        self.forfeited().contains(&job_id)
    }

    /// This node lost `job_id`'s run: nothing more is written into its folder from here (until
    /// this node runs it again).
    pub fn forfeit(&self, job_id: JobId) {
        self.forfeited().insert(job_id);
    }

    /// This node starts running `job_id` (again).
    pub fn reclaim(&self, job_id: JobId) {
        self.forfeited().remove(&job_id);
    }

    /// Every run has ended (shutdown): what is left to write no longer depends on the lease.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
    }
}

/// `CLOCK_MONOTONIC` in milliseconds: the clock the sidecar and its guardian share (it runs on
/// while a process is stopped, unlike the process's own CPU clocks).
pub fn monotonic_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    secs * 1000 + millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_before_the_deadline_keeps_the_epoch_and_one_after_it_starts_a_new_one() {
        let lease = Lease::local();
        assert!(lease.valid(), "unarmed until the first heartbeat");
        let now = monotonic_ms();
        assert_eq!(lease.arm(now + 60_000), Armed::Renewed);
        assert!(lease.valid_in(0));
        lease.lower_to(now.saturating_sub(1));
        assert!(
            !lease.valid(),
            "a run claimed long ago brought the deadline forward"
        );
        assert_eq!(lease.arm(now + 60_000), Armed::AfterLapse { epoch: 0 });
        assert!(lease.valid_in(1) && !lease.valid_in(0));
    }

    #[test]
    fn only_one_side_declares_a_lapse() {
        let lease = Lease::local();
        lease.arm(monotonic_ms() + 60_000);
        assert_eq!(lease.lapse_if_due(), None, "not due yet");
        lease.lower_to(1);
        assert_eq!(lease.lapse_if_due(), Some(0));
        assert_eq!(lease.lapse_if_due(), None, "already declared");
        assert!(matches!(
            lease.arm(monotonic_ms() + 60_000),
            Armed::AfterLapse { epoch: 0 }
        ));
    }

    #[test]
    fn the_deadline_leaves_a_sixth_of_the_lease_before_the_takeover() {
        assert_eq!(deadline(1_000, Duration::from_secs(6)), 6_000);
        assert_eq!(deadline(0, Duration::from_secs(2)), 1_665);
    }
}
