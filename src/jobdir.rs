//! Job folders under `shared_root`: `<job_id>/input/` written by Rails, `<job_id>/output/`
//! written by the sidecar and the agent. Folders are resolved without following symlinks, so
//! nothing a job folder contains can point the sidecar outside `shared_root`.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::contract::{FieldError, InputFile, JobId};

/// Why a job folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobDirError {
    /// A required folder or file does not exist.
    #[error("{0} does not exist")]
    Missing(String),
    /// A path is a symlink; job folders are never followed out of `shared_root`.
    #[error("{0} is a symlink, which is not allowed in a job folder")]
    Symlink(String),
    /// A path has the wrong type.
    #[error("{path} is not a {expected}")]
    WrongType {
        /// Relative path.
        path: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// The folder resolves outside `shared_root`.
    #[error("{0} resolves outside shared_root")]
    Escapes(String),
    /// The filesystem refused.
    #[error("{path}: {source}")]
    Io {
        /// Relative path.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// A job's folder, checked to be a real directory inside `shared_root`.
#[derive(Debug, Clone)]
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    /// Resolves `<shared_root>/<job_id>` and checks `input/manifest.json` is a regular file.
    /// `shared_root` must already be canonical.
    pub fn open(shared_root: &Path, job_id: JobId) -> Result<Self, JobDirError> {
        let id = job_id.to_string();
        let root = shared_root.join(&id);
        expect_kind(&root, &id, Kind::Dir)?;
        expect_kind(&root.join("input"), &format!("{id}/input"), Kind::Dir)?;
        expect_kind(
            &root.join("input/manifest.json"),
            &format!("{id}/input/manifest.json"),
            Kind::File,
        )?;
        let output = root.join("output");
        match std::fs::symlink_metadata(&output) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(JobDirError::Symlink(format!("{id}/output")));
            }
            _ => {}
        }
        let canonical = root.canonicalize().map_err(|source| JobDirError::Io {
            path: id.clone(),
            source,
        })?;
        if !canonical.starts_with(shared_root) {
            return Err(JobDirError::Escapes(id));
        }
        Ok(Self { root: canonical })
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

    /// Checks every file a v2 manifest declares against what is on disk: present under `input/`
    /// without a symlink on the way, of the declared size and SHA-256. Reads every byte, so it
    /// belongs off the async runtime.
    pub fn check_inputs(&self, files: &[InputFile]) -> Vec<FieldError> {
        files
            .iter()
            .enumerate()
            .filter_map(|(i, file)| {
                self.check_input(file)
                    .err()
                    .map(|(field, detail)| FieldError::new(format!("/inputs/{i}{field}"), detail))
            })
            .collect()
    }

    fn check_input(&self, file: &InputFile) -> Result<(), (&'static str, String)> {
        let path = self.input_file(&file.path).map_err(|e| ("/path", e))?;
        let unreadable =
            |e: io::Error| ("/path", format!("input/{} cannot be read: {e}", file.path));
        let other_size = |bytes: u64| {
            let detail = format!(
                "input/{} has {bytes} bytes, the manifest says {}",
                file.path, file.bytes
            );
            ("/bytes", detail)
        };
        let (handle, size) = open_regular(&path).map_err(unreadable)?;
        // A file of another size is refused before any byte of it is hashed.
        if size != file.bytes {
            return Err(other_size(size));
        }
        let (bytes, sha256) = sha256_of(handle).map_err(unreadable)?;
        if bytes != file.bytes {
            return Err(other_size(bytes));
        }
        if sha256 != file.sha256 {
            let detail = format!(
                "input/{} has SHA-256 {sha256}, the manifest says {}",
                file.path, file.sha256
            );
            return Err(("/sha256", detail));
        }
        Ok(())
    }

    /// `input/<relative>`, walked one component at a time so no symlink is followed.
    fn input_file(&self, relative: &str) -> Result<PathBuf, String> {
        let mut path = self.input();
        for part in Path::new(relative).components() {
            let Component::Normal(name) = part else {
                return Err(format!("{relative:?} is not a plain relative path"));
            };
            path.push(name);
            let md = std::fs::symlink_metadata(&path)
                .map_err(|_| format!("input/{relative} does not exist"))?;
            if md.file_type().is_symlink() {
                return Err(format!("input/{relative} goes through a symlink"));
            }
        }
        // Whether it is a regular file is checked on the opened handle.
        Ok(path)
    }

    /// Creates `output/` and `output/artifacts/` if missing.
    pub fn prepare_output(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.output().join("artifacts"))
    }
}

/// Opens `path` only if it is a regular file, without following a symlink swapped in since it
/// was checked and without blocking on a FIFO or device put there.
/// Returns the open file and its size.
fn open_regular(path: &Path) -> io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if metadata.is_file() {
        Ok((file, metadata.len()))
    } else {
        Err(io::Error::other("not a regular file"))
    }
}

/// Size and lower-case hex SHA-256 of a file, read in 64 KiB blocks.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    sha256_of(std::fs::File::open(path)?)
}

fn sha256_of(mut file: std::fs::File) -> io::Result<(u64, String)> {
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

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum Kind {
    Dir,
    File,
}

fn expect_kind(path: &Path, shown: &str, kind: Kind) -> Result<(), JobDirError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => JobDirError::Missing(shown.to_owned()),
        _ => JobDirError::Io {
            path: shown.to_owned(),
            source,
        },
    })?;
    if md.file_type().is_symlink() {
        return Err(JobDirError::Symlink(shown.to_owned()));
    }
    let (ok, expected) = match kind {
        Kind::Dir => (md.is_dir(), "directory"),
        Kind::File => (md.is_file(), "regular file"),
    };
    if ok {
        Ok(())
    } else {
        Err(JobDirError::WrongType {
            path: shown.to_owned(),
            expected,
        })
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap()
    }

    #[test]
    fn a_job_folder_that_is_a_symlink_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(elsewhere.path().join("input")).unwrap();
        std::fs::write(elsewhere.path().join("input/manifest.json"), "{}").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join(job().to_string())).unwrap();
        let err = JobDir::open(&root.path().canonicalize().unwrap(), job()).unwrap_err();
        assert!(matches!(err, JobDirError::Symlink(_)), "{err}");
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(job().to_string()).join("input")).unwrap();
        let err = JobDir::open(&root.path().canonicalize().unwrap(), job()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/input/manifest.json does not exist", job())
        );
    }

    #[test]
    fn atomic_writes_replace_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
