//! The checks a node can make of its configuration without a running daemon: `shared_root` is
//! readable and writable, every agent's program resolves and is executable, and every key,
//! certificate and schema file the config names loads. `GET /ready` runs the filesystem ones
//! (with the store and drain checks only the daemon can make); `check-config` runs all of them,
//! so a config it passes is one `/ready` does not fail for what the file says.

use std::path::{Path, PathBuf};

use crate::config::{Config, Registry};

/// One named check's verdict.
#[derive(Debug)]
pub struct Verdict {
    /// What was checked, as `/ready` names it.
    pub name: &'static str,
    /// Why it failed.
    pub outcome: Result<(), String>,
}

/// An agent's program, as its spawn will look for it.
#[derive(Debug, Clone)]
pub struct Program {
    agent: String,
    program: String,
    /// The agent's own `PATH`, if its `env` sets one.
    path: Option<String>,
}

/// The programs of every agent in `registry`.
pub fn programs(registry: &Registry) -> Vec<Program> {
    registry
        .iter()
        .map(|(name, agent)| Program {
            agent: name.to_string(),
            program: agent.command[0].clone(),
            path: agent.env.get("PATH").cloned(),
        })
        .collect()
}

/// Every check `check-config` makes of `config`.
pub fn offline(config: &Config) -> Vec<Verdict> {
    vec![
        Verdict {
            name: "shared_root",
            outcome: shared_root(&config.storage.shared_root),
        },
        Verdict {
            name: "agent_commands",
            outcome: agent_commands(&programs(&config.agents.snapshot())),
        },
        Verdict {
            name: "callback_keys",
            outcome: loads(crate::delivery::Transport::build(&config.callbacks)),
        },
        Verdict {
            name: "api_auth_keys",
            outcome: loads(crate::api::auth::Authenticator::load(config)),
        },
        Verdict {
            name: "listener_tls",
            outcome: loads(crate::api::listener::TlsSettings::prepare(config)),
        },
    ]
}

fn loads<T, E: std::fmt::Display>(built: Result<T, E>) -> Result<(), String> {
    built.map(drop).map_err(|e| e.to_string())
}

/// `shared_root` can be listed and written (a file is created and removed).
pub fn shared_root(root: &Path) -> Result<(), String> {
    std::fs::read_dir(root).map_err(|e| format!("{}: cannot read: {e}", root.display()))?;
    tempfile::Builder::new()
        .prefix(".ready-")
        .tempfile_in(root)
        .map(drop)
        .map_err(|e| format!("{}: cannot write: {e}", root.display()))
}

/// Every agent's program exists and is executable: an absolute path as written, a bare name on
/// the `PATH` the agent gets. A relative path is relative to each job's folder, so it is not
/// checked here.
pub fn agent_commands(programs: &[Program]) -> Result<(), String> {
    let missing: Vec<String> = programs
        .iter()
        .filter(|c| !c.program.contains('/') || c.program.starts_with('/'))
        .filter(|c| resolve(&c.program, c.path.as_deref()).is_none())
        .map(|c| format!("{}: {} not found or not executable", c.agent, c.program))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

fn resolve(program: &str, agent_path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    let paths = agent_path
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}
