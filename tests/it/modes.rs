//! Issue 18: every file and folder the sidecar writes honours `[storage] file_mode` and
//! `dir_mode`, so the Rails user (another user, often sharing a group) can read the outputs.
//! The tests run as root; `setpriv` reads as an unprivileged user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::helpers::*;

/// `nobody`: neither the sidecar's user nor in its group.
const OTHER: u32 = 65534;
/// A group shared by the sidecar and Rails in the group test.
const SHARED_GID: u32 = 4242;
/// What the sidecar writes in `output/` for a completed job.
const WRITTEN: [&str; 5] = [
    "summary.json",
    "metrics.json",
    "status.json",
    "log.txt",
    "events.jsonl",
];

/// Whether uid 65534 with only group `gid` can `cat` the file, and what it read.
fn cat_as(gid: u32, path: &Path) -> Option<Vec<u8>> {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={OTHER}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "cat".into(),
        ])
        .arg(path)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Lets others walk down to the job folders (a tempdir is 0700).
fn open_the_way(sidecar: &Sidecar) {
    for dir in [sidecar.dir.path(), sidecar.shared_root.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Runs a summarizer job to its end; the job's `output/` once status.json says it completed.
async fn completed_output(
    sidecar: &Sidecar,
    receiver: &Receiver,
    prepare: impl Fn(&Path),
) -> std::path::PathBuf {
    let body = trigger(receiver, "summarizer_v2");
    let job_dir = sidecar.write_job(&body);
    prepare(&job_dir);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    let job_id = body["job_id"].as_str().unwrap();
    assert_eq!(
        receiver.completion(job_id).await.json()["status"],
        "completed"
    );
    let output = job_dir.join("output");
    eventually("status.json to say completed", || async {
        let text = std::fs::read_to_string(output.join("status.json")).ok()?;
        text.contains("\"completed\"").then_some(())
    })
    .await;
    output
}

#[tokio::test]
async fn by_default_every_output_file_is_0644_and_readable_by_another_user() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    open_the_way(&sidecar);
    let output = completed_output(&sidecar, &receiver, |_| {}).await;
    // The tests run under umask 022, so the default modes arrive unchanged.
    assert_eq!(mode(&output), 0o755, "output/ is created by the sidecar");
    assert_eq!(mode(&output.join("artifacts")), 0o755);
    for name in WRITTEN {
        let path = output.join(name);
        assert_eq!(mode(&path), 0o644, "{name}");
        let read =
            cat_as(OTHER, &path).unwrap_or_else(|| panic!("another user cannot read {name}"));
        assert_eq!(read, std::fs::read(&path).unwrap(), "{name}");
    }
}

#[tokio::test]
async fn with_0640_files_the_shared_group_reads_the_outputs_and_others_do_not() {
    let receiver = Receiver::start().await;
    let modes = [
        ("STORAGE__FILE_MODE", "0640"),
        ("STORAGE__DIR_MODE", "0750"),
    ];
    let sidecar = Sidecar::start_with_env(&receiver, &modes).await;
    open_the_way(&sidecar);
    // Rails makes the job folder group-owned and setgid, so what is created in it is too.
    let shared_group = |job_dir: &Path| {
        std::os::unix::fs::chown(job_dir, None, Some(SHARED_GID)).unwrap();
        std::fs::set_permissions(job_dir, std::fs::Permissions::from_mode(0o2755)).unwrap();
    };
    let output = completed_output(&sidecar, &receiver, shared_group).await;
    assert_eq!(mode(&output) & 0o777, 0o750);
    for name in WRITTEN {
        let path = output.join(name);
        assert_eq!(mode(&path), 0o640, "{name}");
        let read =
            cat_as(SHARED_GID, &path).unwrap_or_else(|| panic!("the group cannot read {name}"));
        assert_eq!(read, std::fs::read(&path).unwrap(), "{name}");
        assert_eq!(cat_as(OTHER, &path), None, "others read {name}");
    }
}
