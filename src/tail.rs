//! `agent-sidecar jobs tail ID`: prints a job's `output/events.jsonl` and follows it as the
//! sidecar appends, woken by `notify` (inotify), until the completion is delivered or dead.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Prints the file and follows it until the job's story is over.
pub async fn follow(path: &Path) -> anyhow::Result<()> {
    let output = path.parent().context("events.jsonl has no folder")?;
    let job_dir = output.parent().context("output/ has no job folder")?;
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })?;
    // The job folder (for output/ to appear), then output/ itself: read-only, nothing created.
    watcher
        .watch(job_dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("no job folder at {}", job_dir.display()))?;
    let mut watching_output = false;
    let mut offset = 0u64;
    let mut partial = String::new();
    let mut out = std::io::stdout().lock();
    loop {
        if !watching_output && output.is_dir() {
            watching_output = watcher.watch(output, RecursiveMode::NonRecursive).is_ok();
        }
        for line in read_new(path, &mut offset, &mut partial)? {
            writeln!(out, "{line}")?;
            out.flush()?;
            if is_last(&line) {
                return Ok(());
            }
        }
        if rx.recv().await.is_none() {
            return Ok(());
        }
    }
}

/// Complete lines appended since `offset`.
fn read_new(path: &Path, offset: &mut u64, partial: &mut String) -> anyhow::Result<Vec<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    file.seek(SeekFrom::Start(*offset))?;
    let mut text = String::new();
    *offset += file.read_to_string(&mut text)? as u64;
    partial.push_str(&text);
    let mut lines = Vec::new();
    while let Some(end) = partial.find('\n') {
        lines.push(partial[..end].to_owned());
        partial.drain(..=end);
    }
    Ok(lines)
}

/// The completion's final outcome ends the story.
fn is_last(line: &str) -> bool {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    value["type"] == "delivery" && (value["outcome"] == "delivered" || value["outcome"] == "dead")
}
