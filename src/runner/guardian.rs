//! The guardian: a small process forked by `main` before the runtime starts (while the
//! sidecar is one thread and a few megabytes), which ends every agent the sidecar can no longer
//! answer for.
//!
//! - The sidecar tells it each agent's process group as the agent starts and before it is
//!   reaped (a pipe; one 16-byte record each, written without blocking).
//! - When the pipe closes (the sidecar died, however: SIGKILL, a crash), it SIGKILLs every group
//!   still registered, waits until none of their processes is alive, and exits. `PR_SET_PDEATHSIG`
//!   only reaches an agent's direct child; this reaches the whole group, grandchildren that
//!   ignore SIGTERM included.
//! - When the lease deadline in the page it shares with the sidecar passes without a renewal
//!   (the sidecar is stopped or wedged, or cannot reach the store), it declares the lease lapsed
//!   and SIGKILLs every group, before another node may take the jobs over (see
//!   [`crate::fence::deadline`] for the arithmetic). An agent registered under a lapsed epoch
//!   is killed as soon as it is registered.
//! - Handoff: the guardian holds an abstract Unix socket named after the node and the store
//!   until it has killed everything. A new sidecar binds that name before it recovers any job,
//!   so the next attempt of a job never starts while a process of the previous one lives.
//!
//! The guardian never kills anything on a clean shutdown: the drain stopped and unregistered
//! every agent, so the closed pipe finds no group left. It ignores SIGINT, SIGTERM, SIGHUP and
//! SIGQUIT (sent to a whole terminal group, they are the sidecar's to handle) and exits when the
//! sidecar does.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use super::process::{
    Forked, detach_guardian, fork_single_threaded, group_alive, poll_readable, set_nonblocking,
    signal_group,
};
use crate::config::{StoreBackend, StoreConfig};
use crate::fence::{Lease, monotonic_ms};

/// How long a new sidecar waits for the previous one's guardian to finish.
const HANDOFF_WAIT: Duration = Duration::from_secs(30);
/// How long the guardian waits for killed groups to be gone before it lets the next sidecar
/// start anyway (a process stuck in uninterruptible sleep cannot be hurried).
const GONE_WAIT: Duration = Duration::from_secs(10);
/// One record on the pipe: kind, pad, process group, epoch.
const RECORD: usize = 16;

const WATCH: u8 = 1;
const UNWATCH: u8 = 2;
const WAKE: u8 = 3;

/// The sidecar's end of its guardian.
pub struct Guardian {
    pipe: io::PipeWriter,
    words: &'static [AtomicU64; 2],
    pid: i32,
    /// Held as long as the sidecar lives too, so a second sidecar of this node and store
    /// cannot start beside this one.
    _handoff: UnixDatagram,
}

impl Guardian {
    /// Waits for any previous guardian of this node and store to finish its kills, then forks
    /// this sidecar's guardian. Call before any thread starts.
    pub fn start(store: &StoreConfig) -> io::Result<Self> {
        let name = handoff_name(store);
        let handoff = take_handoff(&name)?;
        let words = super::process::shared_words()?;
        let (reader, writer) = io::pipe()?;
        match fork_single_threaded()? {
            Forked::Child => {
                drop(writer);
                let code = match watch(reader, Lease::shared(words)) {
                    Ok(()) => 0,
                    Err(e) => {
                        error!(error = %e, "guardian failed; agents of this sidecar are no longer guarded");
                        1
                    }
                };
                drop(handoff);
                std::process::exit(code);
            }
            Forked::Parent(pid) => {
                drop(reader);
                set_nonblocking(writer.as_fd())?;
                info!(pid, "guardian started");
                Ok(Self {
                    pipe: writer,
                    words,
                    pid,
                    _handoff: handoff,
                })
            }
        }
    }

    /// The lease deadline shared with the guardian.
    pub fn lease(&self) -> Lease {
        Lease::shared(self.words)
    }

    /// The guardian's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Registers an agent's process group, started under lease `epoch`. An error means the
    /// guardian is gone: the agent must not run unguarded.
    pub fn watch(&self, pgid: i32, epoch: u64) -> io::Result<()> {
        self.send(WATCH, pgid, epoch)
    }

    /// Unregisters a group whose leader is about to be reaped (after which its id may be
    /// reused).
    pub fn unwatch(&self, pgid: i32) {
        if let Err(e) = self.send(UNWATCH, pgid, 0) {
            warn!(error = %e, pgid, "cannot tell the guardian an agent ended");
        }
    }

    /// Makes the guardian re-read the deadline (it was brought forward, or re-armed).
    pub fn wake(&self) {
        if let Err(e) = self.send(WAKE, 0, 0) {
            warn!(error = %e, "cannot wake the guardian");
        }
    }

    fn send(&self, kind: u8, pgid: i32, epoch: u64) -> io::Result<()> {
        let mut record = [0u8; RECORD];
        record[0] = kind;
        record[4..8].copy_from_slice(&pgid.to_le_bytes());
        record[8..16].copy_from_slice(&epoch.to_le_bytes());
        // One write below PIPE_BUF is atomic: records from several threads never interleave.
        match (&self.pipe).write(&record) {
            Ok(RECORD) => Ok(()),
            Ok(_) => Err(io::Error::other("short write to the guardian")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::other(
                "the guardian is not reading (stopped?); its pipe is full",
            )),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("the guardian is gone: {e}"),
            )),
        }
    }
}

/// The abstract socket name of a node on a store: the same for every process of that node, and
/// not revealing the store's URL (which may hold a password).
fn handoff_name(store: &StoreConfig) -> String {
    let mut hash = Sha256::new();
    hash.update(store.node_id.as_bytes());
    hash.update([0]);
    match &store.backend {
        StoreBackend::Sqlite(path) => hash.update(path.as_os_str().as_encoded_bytes()),
        StoreBackend::Postgres(url) => hash.update(url.0.as_bytes()),
    }
    let digest = hash.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("agent-sidecar/guardian/{hex}")
}

/// Binds the handoff name, waiting while the previous guardian (or a live sidecar of the same
/// node and store) holds it.
fn take_handoff(name: &str) -> io::Result<UnixDatagram> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let started = Instant::now();
    let mut said = false;
    loop {
        match UnixDatagram::bind_addr(&addr) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if started.elapsed() > HANDOFF_WAIT {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "another agent-sidecar of this node_id and store is running, or its guardian \
                             is still stopping the previous run's agents (abstract socket @{name}, waited {}s)",
                            HANDOFF_WAIT.as_secs()
                        ),
                    ));
                }
                if !said {
                    info!(
                        "waiting for the previous sidecar's guardian to end its agents before recovering jobs"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The guardian's loop: registered groups, killed when the pipe closes or the lease lapses.
fn watch(mut pipe: io::PipeReader, lease: Lease) -> io::Result<()> {
    detach_guardian(c"sidecar-guard")?;
    set_nonblocking(pipe.as_fd())?;
    let mut groups = BTreeSet::new();
    let mut lapsed: Option<u64> = None;
    loop {
        let timeout = lease.pending_deadline().map_or(-1, |until| {
            i32::try_from(until.saturating_sub(monotonic_ms())).unwrap_or(i32::MAX)
        });
        let open = poll_readable(pipe.as_fd(), timeout)
            .and_then(|_| read_records(&mut pipe, &mut groups, lapsed));
        match open {
            Ok(true) => {}
            Ok(false) => {
                kill_all(&groups, "the sidecar is gone");
                wait_gone(&groups);
                return Ok(());
            }
            Err(e) => {
                // Unable to hear the sidecar, the guardian cannot tell when to act: it acts now.
                kill_all(&groups, "the guardian cannot read its pipe");
                return Err(e);
            }
        }
        if let Some(epoch) = lease.lapse_if_due() {
            kill_all(
                &groups,
                "the sidecar's lease lapsed (it is stopped or cannot renew it)",
            );
            groups.clear();
            lapsed = Some(epoch);
        }
    }
}

/// Applies every record waiting on the pipe; `false` once the sidecar closed it.
fn read_records(
    pipe: &mut io::PipeReader,
    groups: &mut BTreeSet<i32>,
    lapsed: Option<u64>,
) -> io::Result<bool> {
    let mut record = [0u8; RECORD];
    loop {
        match pipe.read_exact(&mut record) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let pgid = i32::from_le_bytes([record[4], record[5], record[6], record[7]]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&record[8..16]);
        let epoch = u64::from_le_bytes(epoch);
        match record[0] {
            WATCH if lapsed.is_some_and(|l| epoch <= l) => {
                warn!(pgid, "an agent started under a lapsed lease: killed");
                signal_group(pgid, libc::SIGKILL);
            }
            WATCH if pgid > 1 => {
                groups.insert(pgid);
            }
            UNWATCH => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
}

fn kill_all(groups: &BTreeSet<i32>, why: &str) {
    if groups.is_empty() {
        return;
    }
    let list: Vec<String> = groups.iter().map(i32::to_string).collect();
    warn!(
        groups = %list.join(" "),
        "guardian: {why}; SIGKILL to the process group of every agent it ran"
    );
    for pgid in groups {
        signal_group(*pgid, libc::SIGKILL);
    }
}

/// Waits (bounded) until no live process is left in `groups`: zombies are dead (they only wait
/// to be reaped by whoever inherited them).
fn wait_gone(groups: &BTreeSet<i32>) {
    let started = Instant::now();
    while groups.iter().any(|pgid| group_has_live(*pgid)) {
        if started.elapsed() > GONE_WAIT {
            error!("guardian: killed agents still alive after {GONE_WAIT:?}; exiting anyway");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether any process of group `pgid` is alive and not a zombie.
fn group_has_live(pgid: i32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let mut fields = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .split(' ');
        let state = fields.next().unwrap_or("Z");
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && !matches!(state, "Z" | "X")
    })
}
