//! One agent process: spawned in its own process group, waited on through a pidfd, reaped with
//! `wait4` so its peak memory is known, and signalled as a group so no descendant outlives it.
//!
//! The agent is started the way `posix_spawn` starts a process (`clone` with `CLONE_VM |
//! CLONE_VFORK`), not by `fork`: a fork copies the sidecar's page tables and then pays a
//! copy-on-write fault for every page it touches, which cost more CPU per job than everything
//! else the sidecar does. `std::process::Command` falls back to fork as soon as the child must
//! run code of ours (`prctl(PR_SET_PDEATHSIG)`), hence our own spawn.
//!
//! This is the only module of the runner with `unsafe`: the spawn, a few libc calls and the
//! pidfd registration, and the few calls the guardian is made of (see [`super::guardian`]:
//! `fork` before the runtime starts, a shared page, `poll`, the monotonic clock), each with
//! its reason.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

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
    /// Called once the group is killed, before the leader is reaped (its id is still taken).
    before_reap: Option<Box<dyn Fn() + Send + Sync>>,
    /// Set once the agent is reaped: a process dropped before that is killed (see `Drop`).
    reaped: std::sync::atomic::AtomicBool,
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
    /// Starts the agent in a new process group with a clean environment, stdin on /dev/null
    /// and stdout/stderr on pipes.
    pub fn spawn(spec: &Spawn<'_>) -> io::Result<Self> {
        let setup = ChildSetup::new(spec)?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let stdin = std::fs::File::open("/dev/null")?;
        let (pid, pidfd) = setup.spawn(
            stdin.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        )?;
        // The child holds its own copies now.
        drop((stdin, stdout_w, stderr_w));
        let watched = || -> io::Result<Self> {
            // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its
            // life.
            let pidfd =
                unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                    .map_err(|e| io::Error::other(e.to_string()))?;
            Ok(Self {
                pid,
                pidfd,
                stdout: Some(pipe::Receiver::from_owned_fd(stdout_r)?),
                stderr: Some(pipe::Receiver::from_owned_fd(stderr_r)?),
                before_reap: None,
                reaped: std::sync::atomic::AtomicBool::new(false),
            })
        };
        watched().inspect_err(|_| {
            // An agent we cannot watch must not run unseen.
            signal_group(pid, libc::SIGKILL);
            reap_now(pid);
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

    /// Kills the agent's group and reaps the agent now (an agent that must not run: it was
    /// started but cannot be guarded).
    pub fn kill_now(self) {
        drop(self);
    }

    /// Runs `hook` after the agent's group is killed and before the agent is reaped, while its
    /// group id cannot name another group (the guardian forgets the group then).
    pub fn before_reap(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.before_reap = Some(Box::new(hook));
    }

    /// Waits for the agent to exit and reaps it.
    /// Whatever the agent left behind in its group is killed with it (so the pipes close),
    /// while the agent is still unreaped and its group id cannot have been reused.
    pub async fn wait(&self) -> io::Result<Exit> {
        loop {
            let mut guard = self.pidfd.readable().await?;
            if exited(self.pidfd.get_ref())? {
                signal_group(self.pid, libc::SIGKILL);
                if let Some(hook) = &self.before_reap {
                    hook();
                }
                if let Some(exit) = try_reap(self.pid)? {
                    self.reaped
                        .store(true, std::sync::atomic::Ordering::Release);
                    return Ok(exit);
                }
            }
            guard.clear_ready();
        }
    }
}

/// An agent whose supervision ended before it was reaped (a panic, a dropped future) must not
/// run unseen: its group is killed and it is reaped here.
impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.reaped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        signal_group(self.pid, libc::SIGKILL);
        if let Some(hook) = &self.before_reap {
            hook();
        }
        reap_now(self.pid);
    }
}

/// The child's stack: the few calls it makes before `execve` need little.
const CHILD_STACK: usize = 64 * 1024;

/// Everything the child needs, prepared before the clone: the child shares our memory until
/// it execs, so it may only make system calls, never allocate or unwind.
struct ChildSetup {
    program: CString,
    cwd: CString,
    /// Owns the strings `argv` and `envp` point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    parent: libc::pid_t,
    fds: [libc::c_int; 3],
    /// Set by the child when a step fails: which step, and its errno.
    failed: AtomicI32,
    errno: AtomicI32,
}

/// The steps the child takes, in order; the one that failed is reported by the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    DeathSignal,
    ParentAlive,
    Group,
    Stdio,
    Folder,
    Exec,
}

impl Step {
    const ALL: [Self; 6] = [
        Self::DeathSignal,
        Self::ParentAlive,
        Self::Group,
        Self::Stdio,
        Self::Folder,
        Self::Exec,
    ];

    fn reason(self) -> &'static str {
        match self {
            Self::DeathSignal => "cannot ask for SIGKILL when the sidecar dies",
            Self::ParentAlive => "the sidecar exited while starting the agent",
            Self::Group => "cannot start a new process group",
            Self::Stdio => "cannot set the agent's stdio",
            Self::Folder => "cannot enter the job folder",
            Self::Exec => "cannot execute the agent",
        }
    }
}

/// Every signal, glibc's internal ones included (the libc wrappers leave those out).
const ALL_SIGNALS: u64 = !0;
/// The kernel's signal set size, for the raw calls.
const SIGSET_BYTES: usize = 8;

impl ChildSetup {
    fn new(spec: &Spawn<'_>) -> io::Result<Self> {
        let (program, _) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let program = resolve(program, spec.env.get("PATH").map(String::as_str))?;
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| c_string(a))
            .collect::<io::Result<_>>()?;
        let envp: Vec<CString> = spec
            .env
            .iter()
            .map(|(k, v)| c_string(&format!("{k}={v}")))
            .collect::<io::Result<_>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Self {
            argv: pointers(&argv),
            envp: pointers(&envp),
            _strings: argv.into_iter().chain(envp).collect(),
            program: c_string(&program.to_string_lossy())?,
            cwd: CString::new(spec.cwd.as_os_str().as_bytes()).map_err(|_| nul_byte())?,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            fds: [-1; 3],
            failed: AtomicI32::new(-1),
            errno: AtomicI32::new(0),
        })
    }

    /// Starts the child the way `posix_spawn` does (`clone` with `CLONE_VM | CLONE_VFORK`: no
    /// copy of our page tables, this thread waits until the child execs), which `std` cannot
    /// do once the child must call `prctl`. Returns its pid.
    /// Must run on a thread that lives as long as the sidecar (a runtime worker, never the
    /// blocking pool): the kernel sends `PR_SET_PDEATHSIG` when the spawning thread exits.
    fn spawn(mut self, stdin: RawFd, stdout: RawFd, stderr: RawFd) -> io::Result<(i32, OwnedFd)> {
        self.fds = [stdin, stdout, stderr];
        let mut pidfd: libc::c_int = -1;
        let (pid, errno) = STACK.with(|stack| -> io::Result<(i32, i32)> {
            let top = stack
                .as_ref()
                .map_err(|e| io::Error::new(e.kind(), e.to_string()))?
                .top;
            // SAFETY: the child runs on this thread's own stack area (guarded below, unused by
            // anyone else while this thread waits for the child to exec or exit). Every signal
            // is blocked around the clone with the raw call (glibc's wrapper would leave its
            // internal ones open), so no handler of ours runs in the child before it resets
            // them all. `self` and `pidfd` outlive the child for the same reason; the child
            // only reads `self` and writes its atomics, the kernel writes `pidfd`.
            unsafe {
                let mut old: u64 = 0;
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &ALL_SIGNALS,
                    &mut old,
                    SIGSET_BYTES,
                );
                let pid = libc::clone(
                    child_main,
                    top,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                    std::ptr::from_ref(&self).cast_mut().cast(),
                    &mut pidfd,
                );
                let errno = *libc::__errno_location();
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &old,
                    std::ptr::null_mut::<u64>(),
                    SIGSET_BYTES,
                );
                Ok((pid, errno))
            }
        })?;
        if pid < 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        // SAFETY: CLONE_PIDFD made the kernel return this fd to us; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let Some(step) = usize::try_from(self.failed.load(Ordering::Acquire))
            .ok()
            .and_then(|i| Step::ALL.get(i).copied())
        else {
            return Ok((pid, pidfd));
        };
        // The child exited without exec: reap it, say why.
        reap_now(pid);
        let error = io::Error::from_raw_os_error(self.errno.load(Ordering::Acquire));
        Err(if step == Step::Exec {
            error
        } else {
            io::Error::new(error.kind(), format!("{}: {error}", step.reason()))
        })
    }
}

/// The child, between clone and exec: system calls only (see [`ChildSetup`]).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildSetup`, alive and unchanged until this child execs
    // or exits; every call below is async-signal-safe and touches only that memory and our
    // own stack.
    unsafe {
        let setup = &*arg.cast::<ChildSetup>();
        let fail = |step: Step| -> libc::c_int {
            setup
                .errno
                .store(*libc::__errno_location(), Ordering::Release);
            setup.failed.store(step as i32, Ordering::Release);
            libc::_exit(127)
        };
        // Our signal handlers are the parent's code: every signal back to its default (the
        // kernel's sigaction for SIG_DFL is all zeros) before unblocking.
        let default = [0u64; 4];
        for signal in 1..=64 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                SIGSET_BYTES,
            );
        }
        let none: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut::<u64>(),
            SIGSET_BYTES,
        );
        // The agent gets SIGKILL when the sidecar dies, however it dies: a crashed node's
        // agents do not run on while another node takes their jobs over.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return fail(Step::DeathSignal);
        }
        if libc::getppid() != setup.parent {
            return fail(Step::ParentAlive);
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(Step::Group);
        }
        for (target, fd) in setup.fds.iter().enumerate() {
            let target = target as libc::c_int;
            let moved = if *fd == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(*fd, target)
            };
            if moved < 0 {
                return fail(Step::Stdio);
            }
        }
        if libc::chdir(setup.cwd.as_ptr()) != 0 {
            return fail(Step::Folder);
        }
        libc::execve(
            setup.program.as_ptr(),
            setup.argv.as_ptr(),
            setup.envp.as_ptr(),
        );
        fail(Step::Exec)
    }
}

/// Finds `program` the way `execvp` would: as given when it names a path, else in `PATH` (the
/// agent's, else ours). Relative `PATH` entries are skipped: they would be looked up here and
/// run from the job folder.
fn resolve(program: &str, path: Option<&str>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let ours = std::env::var("PATH").ok();
    let path = path
        .or(ours.as_deref())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

fn c_string(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| nul_byte())
}

fn nul_byte() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the command, its folder or its environment holds a NUL byte",
    )
}

/// A stack for the children this thread starts, with a guard page below it so an overflow
/// faults instead of writing over someone else's memory. Mapped once per thread.
struct ChildStack {
    top: *mut libc::c_void,
}

thread_local! {
    static STACK: io::Result<ChildStack> = ChildStack::map();
}

impl ChildStack {
    fn map() -> io::Result<Self> {
        let guard = 4096;
        // SAFETY: a fresh anonymous mapping that nothing else refers to; never unmapped, as
        // the thread keeps using it (the runtime's workers live as long as the sidecar).
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK + guard,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(base, guard, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self {
                top: base.cast::<u8>().add(CHILD_STACK + guard).cast(),
            })
        }
    }
}

/// Whether the process behind `pidfd` has exited (without reaping it).
fn exited(pidfd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain old data; zeroed is a valid value for it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is a live pidfd and `info` a live local for the duration of the call.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            libc::id_t::try_from(pidfd.as_raw_fd()).map_err(io::Error::other)?,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 while the process runs).
    Ok(unsafe { info.si_pid() } != 0)
}

/// A pipe whose ends are closed on exec (the child gets its copies by `dup2`).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned these fds to us; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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

/// Reaps a child known to have exited.
fn reap_now(pid: i32) {
    let mut status: libc::c_int = 0;
    // SAFETY: the pointer is to a live local for the duration of the call.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
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

/// Two zeroed words in a page shared with every process forked after this call (the guardian
/// reads the lease deadline the sidecar writes, and they agree on who moved it last).
/// Never unmapped: both processes use it until they exit.
pub fn shared_words() -> io::Result<&'static [AtomicU64; 2]> {
    // SAFETY: a fresh anonymous mapping that nothing else refers to. The kernel zeroes it, and
    // all-zero bytes are valid `AtomicU64`s; the page is aligned beyond what they need. It is
    // never unmapped, so the `'static` borrow stays valid.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<[AtomicU64; 2]>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(&*page.cast::<[AtomicU64; 2]>())
    }
}

/// Which side of a fork this is.
pub enum Forked {
    /// The original process; the child's pid.
    Parent(i32),
    /// The new process.
    Child,
}

/// `fork(2)`, refused unless this process has a single thread (a fork copies only the calling
/// thread: a lock another thread held would stay locked in the child forever).
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork with {threads} threads running (the guardian starts before the runtime)"
        )));
    }
    // SAFETY: the process has one thread (checked just above, and nothing here starts one),
    // so the child gets a consistent copy of every lock and allocator state.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Waits up to `timeout_ms` (`-1`: no limit) for `fd` to be readable or closed by its writer;
/// whether it is. An interrupted wait counts as a timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut entry, 1, timeout_ms) };
    match rc {
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok(false),
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Makes reads and writes on `fd` fail with `WouldBlock` instead of waiting.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a live fd we borrow, with integer arguments only.
    let rc = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling process (the guardian) deaf to the signals a terminal or a service
/// manager sends the whole group, and names it `name` in `ps`: it ends when the sidecar does.
pub fn detach_guardian(name: &std::ffi::CStr) -> io::Result<()> {
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: SIG_IGN is a valid disposition for these catchable signals; no handler code
        // of ours is involved.
        if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    for target in [0, 1] {
        // SAFETY: dup2 between two live fds; stdin and stdout are not used by the guardian,
        // and whoever reads the sidecar's stdout must not wait for the guardian to close it.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn owned(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    async fn run(argv: &[&str], env: &BTreeMap<String, String>, cwd: &Path) -> (String, Exit) {
        let argv = owned(argv);
        let mut agent = AgentProcess::spawn(&Spawn {
            argv: &argv,
            cwd,
            env,
        })
        .unwrap();
        let mut out = String::new();
        agent
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        (out, agent.wait().await.unwrap())
    }

    #[tokio::test]
    async fn the_agent_runs_in_its_own_group_in_the_job_folder_with_only_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let script =
            "echo pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat); pwd; env | sort; cat; exit 3";
        let env = env(&[("PATH", "/usr/bin:/bin"), ("ONLY", "this")]);
        let (out, exit) = run(&["sh", "-c", script], &env, dir.path()).await;
        let lines: Vec<&str> = out.lines().collect();
        let (pid, pgid) = lines[0].split_once(' ').unwrap();
        assert_eq!(pid["pid=".len()..], pgid["pgid=".len()..], "{out}");
        assert_eq!(
            lines[1],
            dir.path().canonicalize().unwrap().to_str().unwrap()
        );
        assert!(lines.contains(&"ONLY=this"), "{out}");
        assert!(
            !out.contains("HOME=") && !out.contains("CARGO"),
            "nothing of ours: {out}"
        );
        assert_eq!(exit.kind, ExitKind::Code(3), "stdin is empty, so cat ends");
    }

    #[tokio::test]
    async fn the_agent_starts_with_no_signal_blocked_or_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(&[("PATH", "/usr/bin:/bin")]);
        let (out, _) = run(
            &["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
            &env,
            dir.path(),
        )
        .await;
        assert_eq!(
            out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
            "SIGPIPE and glibc's internal signals included"
        );
    }

    #[tokio::test]
    async fn what_the_agent_leaves_in_its_group_dies_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(&[("PATH", "/usr/bin:/bin")]);
        let argv = owned(&["sh", "-c", "sleep 300 & echo $!"]);
        let mut agent = AgentProcess::spawn(&Spawn {
            argv: &argv,
            cwd: dir.path(),
            env: &env,
        })
        .unwrap();
        let mut stdout = agent.stdout.take().unwrap();
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            let mut byte = [0u8; 1];
            stdout.read_exact(&mut byte).await.unwrap();
            line.push(byte[0]);
        }
        let sleeper: i32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
        let pgid = agent.pid();
        agent.wait().await.unwrap();
        // The sleeper was killed before the leader was reaped, so the pipe it held closes
        // (it would hold it for 300 s) and it is a zombie or gone soon after.
        let mut rest = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            stdout.read_to_string(&mut rest),
        )
        .await
        .expect("the pipe closes")
        .unwrap();
        let dead = || {
            let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
            matches!(
                stat.rsplit(") ").next().and_then(|s| s.chars().next()),
                None | Some('Z')
            )
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dead() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(dead(), "sleep {sleeper} (group {pgid}) outlived its agent");
    }

    #[tokio::test]
    async fn the_agent_is_found_on_its_own_path_and_gets_its_arguments_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("only-here");
        std::fs::write(&tool, "#!/bin/sh\nprintf '%s|' \"$@\"\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A relative entry is skipped: it would be looked up here and run from the job folder.
        let path = format!("only-here:{}:/usr/bin:/bin", bin.display());
        let env = env(&[("PATH", &path)]);
        let (out, exit) = run(&["only-here", "a b", "", "$HOME"], &env, dir.path()).await;
        assert_eq!(out, "a b||$HOME|");
        assert_eq!(exit.kind, ExitKind::Code(0));
    }

    #[test]
    fn a_missing_program_a_bad_folder_and_a_nul_byte_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(&[("PATH", "/nonexistent")]);
        let spawn = |argv: &[&str], cwd: &Path| {
            let argv = owned(argv);
            AgentProcess::spawn(&Spawn {
                argv: &argv,
                cwd,
                env: &env,
            })
            .err()
            .unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert_eq!(
            spawn(&["no-such-agent"], dir.path()).kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            spawn(&["/bin/true"], &dir.path().join("gone")).to_string(),
            "cannot enter the job folder: No such file or directory (os error 2)"
        );
        assert_eq!(
            spawn(&["/bin/echo", "a\0b"], dir.path()).kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
