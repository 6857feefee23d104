//! One agent process: spawned in its own process group, waited on through a pidfd, reaped with
//! `wait4` so its peak memory is known, and signalled as a group so no descendant outlives it.
//!
//! The agent is started the way `posix_spawn` starts a process (`clone` with `CLONE_VM |
//! CLONE_VFORK`), not by `fork`: a fork copies the sidecar's page tables and then pays a
//! copy-on-write fault for every page it touches, which cost more CPU per job than everything
//! else the sidecar does. `std::process::Command` falls back to fork as soon as the child must
//! run code of ours (`prctl(PR_SET_PDEATHSIG)`), hence our own spawn.
//!
//! This is the only module with `unsafe`: the spawn, a few libc calls and the pidfd
//! registration, each with its reason.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

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
    /// Starts the agent in a new process group with a clean environment, stdin on /dev/null
    /// and stdout/stderr on pipes.
    pub fn spawn(spec: &Spawn<'_>) -> io::Result<Self> {
        let setup = ChildSetup::new(spec)?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let stdin = std::fs::File::open("/dev/null")?;
        let pid = setup.spawn(
            stdin.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        )?;
        // The child holds its own copies now.
        drop((stdin, stdout_w, stderr_w));
        let fd = pidfd_open(pid)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its life.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            pid,
            pidfd,
            stdout: Some(pipe::Receiver::from_owned_fd(stdout_r)?),
            stderr: Some(pipe::Receiver::from_owned_fd(stderr_r)?),
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

/// The steps the child takes, for the error the parent reports.
const STEPS: [&str; 5] = [
    "the sidecar exited while starting the agent",
    "cannot start a new process group",
    "cannot set the agent's stdio",
    "cannot enter the job folder",
    "cannot execute the agent",
];

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
            cwd: c_string(&spec.cwd.to_string_lossy())?,
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
    fn spawn(mut self, stdin: RawFd, stdout: RawFd, stderr: RawFd) -> io::Result<i32> {
        self.fds = [stdin, stdout, stderr];
        let mut stack = vec![0u128; CHILD_STACK / 16];
        // SAFETY: the stack grows down from the end of a live, 16-byte aligned allocation
        // that outlives the child's use of it (this thread waits until the child execs or
        // exits). Every signal is blocked around the clone so no handler of ours runs on the
        // child's stack; the child resets them before unblocking. `self` outlives the child
        // for the same reason, and the child only reads it and writes its atomics.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(stack.len()).cast::<libc::c_void>();
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&self).cast_mut().cast(),
            );
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            pid
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let step = self.failed.load(Ordering::Acquire);
        if step < 0 {
            return Ok(pid);
        }
        // The child exited without exec: reap it, say why.
        reap_now(pid);
        let errno = self.errno.load(Ordering::Acquire);
        let reason = STEPS[usize::try_from(step).unwrap_or(0).min(STEPS.len() - 1)];
        let error = io::Error::from_raw_os_error(errno);
        Err(if step == 4 {
            error
        } else {
            io::Error::new(error.kind(), format!("{reason}: {error}"))
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
        let fail = |step: i32| -> libc::c_int {
            setup
                .errno
                .store(*libc::__errno_location(), Ordering::Release);
            setup.failed.store(step, Ordering::Release);
            libc::_exit(127)
        };
        // Our signal handlers are the parent's code: back to the defaults before unblocking.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..65 {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // The agent gets SIGKILL when the sidecar dies, however it dies: a crashed node's
        // agents do not run on while another node takes their jobs over. (The kernel ties this
        // to the spawning thread; the runtime's worker threads live as long as the sidecar.)
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
            || libc::getppid() != setup.parent
        {
            return fail(0);
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(1);
        }
        for (target, fd) in setup.fds.iter().enumerate() {
            let target = target as libc::c_int;
            let moved = if *fd == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(*fd, target)
            };
            if moved < 0 {
                return fail(2);
            }
        }
        if libc::chdir(setup.cwd.as_ptr()) != 0 {
            return fail(3);
        }
        libc::execve(
            setup.program.as_ptr(),
            setup.argv.as_ptr(),
            setup.envp.as_ptr(),
        );
        fail(4)
    }
}

/// Finds `program` the way `execvp` would: as given when it names a path, else in `PATH` (the
/// agent's, else ours).
fn resolve(program: &str, path: Option<&str>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let ours = std::env::var("PATH").ok();
    let path = path
        .or(ours.as_deref())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

fn c_string(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the command or environment holds a NUL byte",
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    async fn run(argv: &[&str], env: &BTreeMap<String, String>, cwd: &Path) -> (String, Exit) {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
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
        let script = "echo pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat); pwd; env | sort; \
                      grep -E '^Sig(Blk|Ign)' /proc/$$/status; cat; exit 3";
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
        assert!(
            lines.contains(&"SigBlk:\t0000000000000000"),
            "no signal blocked: {out}"
        );
        let ignored = lines
            .iter()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .map(|mask| u64::from_str_radix(mask, 16).unwrap())
            .unwrap();
        // glibc keeps its internal signals (32, 33) as they were inherited.
        assert_eq!(
            ignored & 0x7fff_ffff,
            0,
            "no standard signal ignored, SIGPIPE included: {out}"
        );
        assert_eq!(exit.kind, ExitKind::Code(3), "stdin is empty, so cat ends");
    }

    #[tokio::test]
    async fn the_agent_is_found_on_its_own_path_and_gets_its_arguments_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("only-here");
        std::fs::write(&tool, "#!/bin/sh\nprintf '%s|' \"$@\"\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
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
            let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
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
