//! The systemd notify protocol against a fake `NOTIFY_SOCKET`.

use std::time::Duration;

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
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start_with_process_env(
        &receiver,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .await;
    let ready = next_message(&socket).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let (status, _) = sidecar.get("/health").await;
    assert_eq!(status, 200, "READY=1 is sent once the API answers");
    for _ in 0..2 {
        let ping = next_message(&socket).await;
        assert_eq!(ping.trim(), "WATCHDOG=1");
    }
    let pid = sidecar.pid();
    let stopped = tokio::task::spawn_blocking(move || sidecar.terminate())
        .await
        .unwrap();
    assert_eq!(stopped.code(), Some(0), "pid {pid}");
    let mut seen = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), async {
        let mut buf = vec![0u8; 4096];
        socket
            .recv(&mut buf)
            .await
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
    {
        seen.push(n);
    }
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{seen:?}"
    );
}
