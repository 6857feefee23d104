//! The systemd notify protocol against a fake `NOTIFY_SOCKET`.

use crate::helpers::*;

async fn next_message(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, socket.recv(&mut buf))
        .await
        .expect("a notify message")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_daemon_notifies_ready_pings_the_watchdog_and_notifies_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start_with_process_env_observing(
        &receiver,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
        |stdout| {
            let mut buf = vec![0u8; 4096];
            let n = socket.recv(&mut buf).expect("READY=1 on the notify socket");
            let ready = String::from_utf8_lossy(&buf[..n]);
            assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
            // The address line is printed once the listener is bound and interrupted work is
            // recovered, before READY=1: by now it waits in the pipe, unread.
            let printed = rustix::io::ioctl_fionread(stdout).unwrap();
            assert!(
                printed > 0,
                "READY=1 came before the sidecar was listening and recovered"
            );
        },
    );
    // One request, no retry: a sidecar that said READY=1 answers it.
    let (status, ready) = sidecar.get("/ready").await;
    assert_eq!(status, 200, "READY=1 is sent once the API answers: {ready}");

    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::UnixDatagram::from_std(socket).unwrap();
    for _ in 0..2 {
        let ping = next_message(&socket).await;
        assert_eq!(ping.trim(), "WATCHDOG=1");
    }
    let pid = sidecar.pid();
    let stopped = tokio::task::spawn_blocking(move || sidecar.terminate())
        .await
        .unwrap();
    assert_eq!(stopped.code(), Some(0), "pid {pid}");
    // The process has exited: everything it sent is queued on the socket.
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.try_recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{seen:?}"
    );
}
