//! Job folders under `shared_root`: `<job_id>/input/` written by Rails, `<job_id>/output/`
//! written by the sidecar and the agent.
//!
//! A [`JobDir`] is a capability: an open descriptor of the job folder, and the only way the
//! sidecar touches anything in it. Every path is resolved beneath that descriptor by the kernel
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so no symlink anywhere on the way
//! is followed and nothing can lead outside the folder, however the folder changes meanwhile.
//! Files the sidecar reads into an output or appends to must also be regular files with a
//! single link (a hard link to a file outside would otherwise be read or written through), and
//! are opened with `O_NONBLOCK` so a FIFO put in their place cannot block the sidecar.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::contract::{FieldError, InputFile, JobId};

/// Why a job folder, or a path in it, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobDirError {
    /// A required folder or file does not exist.
    #[error("{0} does not exist")]
    Missing(String),
    /// A path is (or goes through) a symlink; links in a job folder are never followed.
    #[error("{0} is a symlink; the sidecar never follows links in a job folder")]
    Symlink(String),
    /// A file the sidecar would read or append to has other links (a hard link to a file that
    /// may be outside the folder).
    #[error(
        "{0} is a hard link (link count above 1); the sidecar never follows links in a job folder"
    )]
    HardLink(String),
    /// A path has the wrong type (a FIFO or device where a file belongs, a file for a folder).
    #[error("{path} is not a {expected}")]
    WrongType {
        /// Relative path.
        path: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// The path would resolve outside the job folder.
    #[error("{0} resolves outside the job folder")]
    Escapes(String),
    /// A file is larger than the caller reads.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// Relative path.
        path: String,
        /// The most read.
        limit: u64,
    },
    /// The filesystem refused.
    #[error("{path}: {source}")]
    Io {
        /// Relative path.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

impl JobDirError {
    /// Whether this is a refusal of what the folder holds (a link, a FIFO, a path out), as
    /// opposed to the filesystem failing: a refusal fails the job with its sentence.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::Missing(_) | Self::TooLarge { .. } | Self::Io { .. }
        )
    }
}

/// The modes the sidecar creates files and folders with (the umask still applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// Files: log.txt, events.jsonl, status.json, summary.json, metrics.json, error.log.
    pub file: u32,
    /// Folders: output/, output/artifacts/.
    pub dir: u32,
}

impl Default for Modes {
    fn default() -> Self {
        Self {
            file: 0o644,
            dir: 0o755,
        }
    }
}

/// Names the sidecar itself writes in `output/`; each must be a regular, singly linked file.
const OWNED_FILES: [&str; 6] = [
    "log.txt",
    "events.jsonl",
    "status.json",
    "summary.json",
    "metrics.json",
    "error.log",
];

/// What an entry of a listed folder is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symlink (never followed).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// A job's folder, opened beneath `shared_root`; see the module docs.
#[derive(Debug, Clone)]
pub struct JobDir {
    root: PathBuf,
    fd: Arc<OwnedFd>,
    modes: Modes,
}

impl JobDir {
    /// Opens `<shared_root>/<job_id>` and checks `input/manifest.json` is a regular file and
    /// `output/`, if present, a real folder. `shared_root` must already be canonical.
    pub fn open(shared_root: &Path, job_id: JobId, modes: Modes) -> Result<Self, JobDirError> {
        let id = job_id.to_string();
        let dir = Self::folder(shared_root, &id, modes)?;
        let shown = |rel: &str| format!("{id}/{rel}");
        dir.open_dir("input")
            .map_err(|e| e.shown_as(shown("input")))?;
        dir.open_regular("input/manifest.json", false)
            .map_err(|e| e.shown_as(shown("input/manifest.json")))?;
        match dir.open_dir("output") {
            Err(JobDirError::Missing(_)) | Ok(_) => Ok(dir),
            Err(e) => Err(e.shown_as(shown("output"))),
        }
    }

    /// Opens the folder `<shared_root>/<name>` alone (a folder trigger answers into one whose
    /// manifest may be missing).
    pub fn folder(shared_root: &Path, name: &str, modes: Modes) -> Result<Self, JobDirError> {
        let io = |source| JobDirError::Io {
            path: shared_root.display().to_string(),
            source,
        };
        let parent =
            rustix::fs::open(shared_root, dir_flags(), Mode::empty()).map_err(|e| io(e.into()))?;
        let fd = openat2(&parent, name, dir_flags(), Mode::empty())
            .map_err(|e| refusal(&parent, name, e))?;
        Ok(Self {
            root: shared_root.join(name),
            fd: Arc::new(fd),
            modes,
        })
    }

    /// The job folder itself (the agent's working directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `input/`.
    pub fn input(&self) -> PathBuf {
        self.root.join("input")
    }

    /// `input/manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.root.join("input/manifest.json")
    }

    /// `output/`.
    pub fn output(&self) -> PathBuf {
        self.root.join("output")
    }

    /// Reads `rel` (a regular file, not a link) whole, up to `limit` bytes; `Ok(None)` when it
    /// does not exist. A larger file is refused.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, JobDirError> {
        let (file, size) = match self.open_regular(rel, true) {
            Ok(opened) => opened,
            Err(JobDirError::Missing(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let too_large = || JobDirError::TooLarge {
            path: rel.to_owned(),
            limit,
        };
        if size > limit {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(rel, e))?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(Some(bytes))
    }

    /// Opens `rel` for appending, creating it with the file mode; refused unless it is a
    /// regular file with one link.
    pub fn append(&self, rel: &str) -> Result<std::fs::File, JobDirError> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK;
        let fd = openat2(&self.fd, rel, flags | OFlags::CLOEXEC, self.file_mode())
            .map_err(|e| refusal(&self.fd, rel, e))?;
        let (file, _) = single_regular(fd, rel)?;
        Ok(file)
    }

    /// Replaces `rel` atomically: a temp file in the same folder (file mode), fsync, then
    /// `renameat` within that folder's descriptor. A link in its place is replaced, not followed.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), JobDirError> {
        let (parent, name) = split(rel);
        let dir = self.open_dir(parent)?;
        let tmp = format!(".tmp-{name}-{:016x}", rand::random::<u64>());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let written = rustix::fs::openat(&dir, &tmp, flags | OFlags::CLOEXEC, self.file_mode())
            .map_err(io::Error::from)
            .and_then(|fd| {
                let mut file = std::fs::File::from(fd);
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| rustix::fs::renameat(&dir, &tmp, &dir, name).map_err(io::Error::from));
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            return Err(self.io(rel, e));
        }
        Ok(())
    }

    /// Removes the file `rel` if it exists (the link itself, when it is one).
    pub fn remove(&self, rel: &str) -> Result<(), JobDirError> {
        let (parent, name) = split(rel);
        let dir = self.open_dir(parent)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(rel, e.into())),
        }
    }

    /// Creates the folder `rel` with the folder mode unless it exists; refused if what is
    /// there is a link or not a folder. Its parent must exist.
    pub fn create_dir(&self, rel: &str) -> Result<(), JobDirError> {
        let (parent, name) = split(rel);
        let dir = self.open_dir(parent)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(self.modes.dir)) {
            Ok(()) | Err(Errno::EXIST) => self.open_dir(rel).map(drop),
            Err(e) => Err(self.io(rel, e.into())),
        }
    }

    /// Moves `output/` aside to `output.attempt-<attempt>/` (one `renameat` with
    /// `RENAME_NOREPLACE` on the folder's descriptor), so a re-run's outputs never mix with
    /// that attempt's. `false` when there is no `output/`; refused when `output/` is a link or
    /// not a folder, or when the place aside is taken.
    pub fn set_aside_output(&self, attempt: u32) -> Result<bool, JobDirError> {
        match self.open_dir("output") {
            Ok(_) => {}
            Err(JobDirError::Missing(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        let aside = format!("output.attempt-{attempt}");
        rustix::fs::renameat_with(
            &*self.fd,
            "output",
            &*self.fd,
            aside.as_str(),
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| self.io(&aside, e.into()))?;
        Ok(true)
    }

    /// Creates `output/` and `output/artifacts/` if missing.
    pub fn prepare_output(&self) -> Result<(), JobDirError> {
        self.create_dir("output")?;
        self.create_dir("output/artifacts")
    }

    /// Refuses an `output/` whose files the sidecar writes are links, FIFOs or devices, or
    /// whose `artifacts/` is not a real folder: checked before the agent starts and again
    /// before the outputs are finalised, so a link planted before or during the run fails the
    /// job with its reason.
    pub fn check_output(&self) -> Result<(), JobDirError> {
        for name in OWNED_FILES {
            let rel = format!("output/{name}");
            match openat2(
                &self.fd,
                &rel,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => drop(single_regular(fd, &rel)?),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(refusal(&self.fd, &rel, e)),
            }
        }
        match self.open_dir("output/artifacts") {
            Ok(_) | Err(JobDirError::Missing(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The length of the file `rel` (seen without following it), if it is there.
    pub fn file_len(&self, rel: &str) -> Option<u64> {
        let fd = openat2(&self.fd, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok()?;
        rustix::fs::fstat(&fd)
            .ok()
            .and_then(|st| u64::try_from(st.st_size).ok())
    }

    /// The entries of the folder `rel`, each seen without following it; `Ok(None)` when the
    /// folder does not exist.
    pub fn list(&self, rel: &str) -> Result<Option<Vec<(String, EntryKind)>>, JobDirError> {
        let dir = match self.open_dir(rel) {
            Ok(dir) => dir,
            Err(JobDirError::Missing(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| self.io(rel, e.into()))?;
        let mut listed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io(rel, e.into()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            // d_type can be unknown on some filesystems; lstat on the folder's fd never is.
            let stat = rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.io(&format!("{rel}/{name}"), e.into()))?;
            listed.push((name, kind_of(stat.st_mode)));
        }
        Ok(Some(listed))
    }

    /// Size and SHA-256 of the file `rel` (a regular file with one link, never a link).
    pub fn sha256(&self, rel: &str) -> Result<(u64, String), JobDirError> {
        let (file, _) = self.open_regular(rel, true)?;
        sha256_of(&file).map_err(|e| self.io(rel, e))
    }

    /// Opens `rel` to be served over HTTP: a regular file with one link, reached without a
    /// symlink and never blocking on a FIFO, as every file the sidecar copies out of the
    /// folder. Returns the file and its size.
    pub fn open_to_serve(&self, rel: &str) -> Result<(std::fs::File, u64), JobDirError> {
        self.open_regular(rel, true)
    }

    /// Checks every file a v2 manifest declares against what is on disk: present under `input/`
    /// without a symlink on the way, of the declared size (at most `max_bytes`, if set) and
    /// SHA-256. A file version `hashes` knows is not read again; any other is read whole, so
    /// this belongs off the async runtime.
    pub fn check_inputs(
        &self,
        files: &[InputFile],
        hashes: &InputHashes,
        max_bytes: Option<u64>,
    ) -> Vec<FieldError> {
        files
            .iter()
            .enumerate()
            .filter_map(|(i, file)| {
                self.check_input(file, hashes, max_bytes)
                    .err()
                    .map(|(field, detail)| FieldError::new(format!("/inputs/{i}{field}"), detail))
            })
            .collect()
    }

    fn check_input(
        &self,
        file: &InputFile,
        hashes: &InputHashes,
        max_bytes: Option<u64>,
    ) -> Result<(), (&'static str, String)> {
        if !Path::new(&file.path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            let detail = format!("{:?} is not a plain relative path", file.path);
            return Err(("/path", detail));
        }
        let rel = format!("input/{}", file.path);
        let other_size = |bytes: u64| {
            let detail = format!("{rel} has {bytes} bytes, the manifest says {}", file.bytes);
            ("/bytes", detail)
        };
        // Refused before the file is even opened: the cap is what keeps a trigger bounded.
        if let Some(max) = max_bytes.filter(|max| file.bytes > *max) {
            let detail = format!(
                "{rel} is declared with {} bytes, above server.max_input_bytes ({max})",
                file.bytes
            );
            return Err(("/bytes", detail));
        }
        let (handle, size) = self
            .open_regular(&rel, false)
            .map_err(|e| ("/path", e.to_string()))?;
        // A file of another size is refused before any byte of it is hashed.
        if size != file.bytes {
            return Err(other_size(size));
        }
        let (bytes, sha256) = hashes
            .sha256(handle)
            .map_err(|e| ("/path", format!("{rel} cannot be read: {e}")))?;
        if bytes != file.bytes {
            return Err(other_size(bytes));
        }
        if sha256 != file.sha256 {
            let detail = format!(
                "{rel} has SHA-256 {sha256}, the manifest says {}",
                file.sha256
            );
            return Err(("/sha256", detail));
        }
        Ok(())
    }

    /// Opens the folder `rel` ("" is the job folder itself).
    fn open_dir(&self, rel: &str) -> Result<OwnedFd, JobDirError> {
        let path = if rel.is_empty() { "." } else { rel };
        openat2(&self.fd, path, dir_flags(), Mode::empty()).map_err(|e| refusal(&self.fd, rel, e))
    }

    /// Opens `rel` for reading if it is a regular file (with one link when `single`, for what
    /// is copied into an output); never blocks on a FIFO. Returns the file and its size.
    fn open_regular(&self, rel: &str, single: bool) -> Result<(std::fs::File, u64), JobDirError> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd =
            openat2(&self.fd, rel, flags, Mode::empty()).map_err(|e| refusal(&self.fd, rel, e))?;
        if single {
            return single_regular(fd, rel);
        }
        let file = std::fs::File::from(fd);
        let md = file.metadata().map_err(|e| self.io(rel, e))?;
        if !md.is_file() {
            return Err(JobDirError::WrongType {
                path: rel.to_owned(),
                expected: "regular file",
            });
        }
        Ok((file, md.len()))
    }

    fn file_mode(&self) -> Mode {
        Mode::from_raw_mode(self.modes.file)
    }

    fn io(&self, rel: &str, source: io::Error) -> JobDirError {
        JobDirError::Io {
            path: rel.to_owned(),
            source,
        }
    }
}

impl JobDirError {
    /// The same error naming `shown` instead of its path.
    fn shown_as(self, shown: String) -> Self {
        match self {
            Self::Missing(_) => Self::Missing(shown),
            Self::Symlink(_) => Self::Symlink(shown),
            Self::HardLink(_) => Self::HardLink(shown),
            Self::WrongType { expected, .. } => Self::WrongType {
                path: shown,
                expected,
            },
            Self::Escapes(_) => Self::Escapes(shown),
            Self::TooLarge { limit, .. } => Self::TooLarge { path: shown, limit },
            Self::Io { source, .. } => Self::Io {
                path: shown,
                source,
            },
        }
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// `openat2` beneath `dir`, following no symlink at any step.
fn openat2(dir: &OwnedFd, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    loop {
        match rustix::fs::openat2(dir, rel, flags, mode, resolve) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// The error for a failed `openat2` of `rel`. A symlink is named precisely: the kernel only
/// says some component was one, so the components are looked at (without following) to say
/// which; the refusal itself was the kernel's.
fn refusal(dir: &OwnedFd, rel: &str, errno: Errno) -> JobDirError {
    match errno {
        Errno::NOENT => JobDirError::Missing(rel.to_owned()),
        Errno::XDEV => JobDirError::Escapes(rel.to_owned()),
        Errno::NOTDIR => JobDirError::WrongType {
            path: rel.to_owned(),
            expected: "directory",
        },
        Errno::LOOP => JobDirError::Symlink(first_symlink(dir, rel)),
        // A FIFO opened to write (non-blocking) with no reader, or a socket.
        Errno::NXIO => JobDirError::WrongType {
            path: rel.to_owned(),
            expected: "regular file",
        },
        e => JobDirError::Io {
            path: rel.to_owned(),
            source: e.into(),
        },
    }
}

/// The first prefix of `rel` that is a symlink, or `rel` itself.
fn first_symlink(dir: &OwnedFd, rel: &str) -> String {
    let mut prefix = String::new();
    for part in rel.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let is_link = rustix::fs::statat(dir, prefix.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| kind_of(st.st_mode) == EntryKind::Symlink);
        if is_link {
            return prefix;
        }
    }
    rel.to_owned()
}

/// `fd` as a file if it is a regular file with one link (checked on the open descriptor).
fn single_regular(fd: OwnedFd, rel: &str) -> Result<(std::fs::File, u64), JobDirError> {
    let file = std::fs::File::from(fd);
    let md = file.metadata().map_err(|source| JobDirError::Io {
        path: rel.to_owned(),
        source,
    })?;
    if !md.is_file() {
        return Err(JobDirError::WrongType {
            path: rel.to_owned(),
            expected: "regular file",
        });
    }
    if md.nlink() > 1 {
        return Err(JobDirError::HardLink(rel.to_owned()));
    }
    Ok((file, md.len()))
}

fn kind_of(st_mode: u32) -> EntryKind {
    match rustix::fs::FileType::from_raw_mode(st_mode) {
        rustix::fs::FileType::RegularFile => EntryKind::File,
        rustix::fs::FileType::Directory => EntryKind::Dir,
        rustix::fs::FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

/// `("output", "summary.json")` of `"output/summary.json"`; `("", name)` for a top-level name.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

fn sha256_of(mut file: &std::fs::File) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

/// What names one version of a file: a write changes its size, mtime or ctime (ctime cannot be
/// set back by a user), a replacement its device or inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileVersion {
    fn of(file: &std::fs::File) -> io::Result<Self> {
        let md = file.metadata()?;
        let ns = |secs: i64, nsecs: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsecs);
        Ok(Self {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        })
    }
}

/// The SHA-256 of input files, remembered per file version (device, inode, size, mtime,
/// ctime), so a file is hashed once however many triggers (or retries of one) name it.
/// Bounded: past `capacity` versions the oldest remembered is forgotten.
#[derive(Debug)]
pub struct InputHashes {
    capacity: usize,
    known: std::sync::Mutex<Remembered>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Remembered {
    sha256: std::collections::HashMap<FileVersion, String>,
    order: std::collections::VecDeque<FileVersion>,
}

impl InputHashes {
    /// Versions remembered by default: a few hundred bytes each.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// An empty cache of at most `capacity` file versions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            known: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// Checks answered from memory, and files read whole, so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Size and SHA-256 of `file`, read whole unless this version of it is remembered. A
    /// version is remembered only if it was the same before and after the read, so a file
    /// written meanwhile is never remembered with a hash of bytes it no longer holds.
    fn sha256(&self, file: std::fs::File) -> io::Result<(u64, String)> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = FileVersion::of(&file)?;
        if let Some(sha256) = self.lock().sha256.get(&before) {
            self.hits.fetch_add(1, Relaxed);
            crate::telemetry::input_hash(true);
            return Ok((before.size, sha256.clone()));
        }
        self.misses.fetch_add(1, Relaxed);
        crate::telemetry::input_hash(false);
        let (bytes, sha256) = sha256_of(&file)?;
        if FileVersion::of(&file)? == before && bytes == before.size {
            self.remember(before, sha256.clone());
        }
        Ok((bytes, sha256))
    }

    fn remember(&self, version: FileVersion, sha256: String) {
        let mut known = self.lock();
        if known.sha256.insert(version, sha256).is_none() {
            known.order.push_back(version);
        }
        while known.order.len() > self.capacity {
            if let Some(oldest) = known.order.pop_front() {
                known.sha256.remove(&oldest);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Lowercase hex SHA-256 of the first `len` bytes of `file`, read at their offsets (the file's
/// own position is left where it was); short if the file shrank meanwhile.
pub fn sha256_of_first(file: &std::fs::File, len: u64) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from(len - at).map_or(buf.len(), |left| left.min(buf.len()));
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `output_uri` of a job: `<prefix><job_id>/output/`, or a `file://` URI under `shared_root`.
pub fn output_uri(prefix: &Option<String>, shared_root: &Path, job_id: JobId) -> String {
    match prefix {
        Some(prefix) => format!("{prefix}{job_id}/output/"),
        None => format!("file://{}/{job_id}/output/", shared_root.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn job() -> JobId {
        "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap()
    }

    /// A scratch `shared_root` with one job folder holding a manifest; the root and the handle.
    fn opened() -> (tempfile::TempDir, PathBuf, JobDir) {
        let root = tempfile::tempdir().unwrap();
        let canonical = root.path().canonicalize().unwrap();
        let folder = canonical.join(job().to_string());
        std::fs::create_dir_all(folder.join("input")).unwrap();
        std::fs::write(folder.join("input/manifest.json"), "{}").unwrap();
        let dir = JobDir::open(&canonical, job(), Modes::default()).unwrap();
        (root, folder, dir)
    }

    #[test]
    fn a_job_folder_that_is_a_symlink_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(elsewhere.path().join("input")).unwrap();
        std::fs::write(elsewhere.path().join("input/manifest.json"), "{}").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join(job().to_string())).unwrap();
        let canonical = root.path().canonicalize().unwrap();
        let err = JobDir::open(&canonical, job(), Modes::default()).unwrap_err();
        assert!(matches!(err, JobDirError::Symlink(_)), "{err}");
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(job().to_string()).join("input")).unwrap();
        let canonical = root.path().canonicalize().unwrap();
        let err = JobDir::open(&canonical, job(), Modes::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/input/manifest.json does not exist", job())
        );
    }

    #[test]
    fn atomic_writes_replace_the_whole_file_with_the_file_mode() {
        let (_root, folder, dir) = opened();
        dir.prepare_output().unwrap();
        dir.write_atomic("output/summary.json", b"first").unwrap();
        dir.write_atomic("output/summary.json", b"second").unwrap();
        let path = folder.join("output/summary.json");
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // 0644 under the test's umask (022 or stricter), never tempfile's 0600.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044 & !umask(), "{mode:o}");
        let names: Vec<_> = std::fs::read_dir(folder.join("output")).unwrap().collect();
        assert_eq!(names.len(), 2, "summary.json and artifacts/ only");
    }

    /// The process umask, read from /proc (setting it to read it would race other tests).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).unwrap()
    }

    #[test]
    fn an_append_through_a_symlinked_output_is_refused_and_names_the_link() {
        let (root, folder, dir) = opened();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, folder.join("output")).unwrap();
        let err = dir.append("output/log.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "output is a symlink; the sidecar never follows links in a job folder"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_hard_linked_file_is_neither_appended_to_nor_read() {
        let (root, folder, dir) = opened();
        dir.prepare_output().unwrap();
        let outside = root.path().join("outside.txt");
        std::fs::write(&outside, "secret").unwrap();
        std::fs::hard_link(&outside, folder.join("output/log.txt")).unwrap();
        assert!(matches!(
            dir.append("output/log.txt"),
            Err(JobDirError::HardLink(_))
        ));
        assert!(matches!(
            dir.read("output/log.txt", 100),
            Err(JobDirError::HardLink(_))
        ));
        assert!(matches!(dir.check_output(), Err(JobDirError::HardLink(_))));
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (_root, folder, dir) = opened();
        dir.prepare_output().unwrap();
        let fifo = folder.join("output/summary.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = dir.read("output/summary.json", 100).unwrap_err();
        assert_eq!(err.to_string(), "output/summary.json is not a regular file");
        assert!(dir.append("output/summary.json").is_err());
        assert!(dir.check_output().is_err());
    }

    #[test]
    fn a_path_out_of_the_folder_is_refused() {
        let (_root, _folder, dir) = opened();
        let err = dir.read("../escape", 100).unwrap_err();
        assert!(matches!(err, JobDirError::Escapes(_)), "{err}");
    }
}
