//! One agent process: spawned in its own process group, waited on through a pidfd, reaped with
//! `wait4` so its peak memory is known, and signalled as a group so no descendant outlives it.
//!
//! This is the only module with `unsafe`: a few libc calls and the pidfd registration, each
//! with its reason.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// The agent's end, with what the kernel measured.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Code or signal.
    pub kind: ExitKind,
    /// Peak resident set size, in KiB.
    pub max_rss_kb: u64,
}

/// A running agent.
pub struct AgentProcess {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    /// The agent's stdout (progress protocol).
    pub stdout: Option<pipe::Receiver>,
    /// The agent's stderr (goes to log.txt).
    pub stderr: Option<pipe::Receiver>,
}

/// What to run and how.
pub struct Spawn<'a> {
    /// argv.
    pub argv: &'a [String],
    /// Working directory.
    pub cwd: &'a Path,
    /// The complete environment: nothing of the sidecar's own is inherited.
    pub env: &'a BTreeMap<String, String>,
}

impl AgentProcess {
    /// Starts the agent in a new process group with a clean environment.
    pub fn spawn(spec: &Spawn<'_>) -> io::Result<Self> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let parent = std::process::id();
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(spec.cwd)
            .env_clear()
            .envs(spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: between fork and exec, only async-signal-safe calls (prctl, getppid).
        unsafe {
            command.pre_exec(move || die_with_parent(parent));
        }
        let mut child = command.spawn()?;
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        let fd = pidfd_open(pid)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its life.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .map(|s| pipe::Receiver::from_owned_fd(s.into()))
            .transpose()?;
        let stderr = child
            .stderr
            .take()
            .map(|s| pipe::Receiver::from_owned_fd(s.into()))
            .transpose()?;
        // `child` is dropped without waiting: std never reaps on drop, and we reap with wait4.
        Ok(Self {
            pid,
            pidfd,
            stdout,
            stderr,
        })
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the agent's whole process group; a group already gone is fine.
    pub fn signal_group(&self, signal: i32) {
        signal_group(self.pid, signal);
    }

    /// Waits for the agent to exit and reaps it.
    pub async fn wait(&self) -> io::Result<Exit> {
        loop {
            let mut guard = self.pidfd.readable().await?;
            if let Some(exit) = try_reap(self.pid)? {
                return Ok(exit);
            }
            guard.clear_ready();
        }
    }
}

/// The agent gets SIGKILL when the sidecar dies, however it dies: a crashed node's agents do
/// not run on while another node takes their jobs over. (The kernel ties this to the spawning
/// thread; the runtime's worker threads live as long as the sidecar.)
fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The sidecar may have died before the prctl took effect.
    // SAFETY: getppid has no preconditions.
    if u32::try_from(unsafe { libc::getppid() }).ok() != Some(parent) {
        return Err(io::Error::other(
            "the sidecar exited while starting the agent",
        ));
    }
    Ok(())
}

/// Sends `signal` to process group `pgid`.
pub fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. A negative pid names
    // the process group; ESRCH (no such group) is the expected result once everything exited.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission; no memory is involved.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn try_reap(pid: i32) -> io::Result<Option<Exit>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live, properly aligned locals for the duration of the call.
    let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    match rc {
        0 => Ok(None),
        r if r == pid => {
            let kind = if libc::WIFSIGNALED(status) {
                ExitKind::Signal(libc::WTERMSIG(status))
            } else {
                ExitKind::Code(libc::WEXITSTATUS(status))
            };
            Ok(Some(Exit {
                kind,
                max_rss_kb: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            }))
        }
        _ => Err(io::Error::last_os_error()),
    }
}
