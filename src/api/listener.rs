//! The API's listener: every accepted connection gets a bounded kernel send buffer and a write
//! timeout, so a client that stops reading (a stalled watcher) is disconnected instead of
//! holding memory or the shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

/// A TCP listener whose connections time out on stalled writes.
pub struct GuardedListener {
    inner: TcpListener,
    write_timeout: Duration,
}

impl GuardedListener {
    /// Wraps `inner`; accepted sockets inherit its `send_buffer_bytes` (Linux copies the
    /// listener's buffer size to each accepted socket).
    pub fn new(
        inner: TcpListener,
        write_timeout: Duration,
        send_buffer_bytes: usize,
    ) -> std::io::Result<Self> {
        socket2::SockRef::from(&inner).set_send_buffer_size(send_buffer_bytes)?;
        Ok(Self {
            inner,
            write_timeout,
        })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(self.write_timeout));
        (Box::pin(io), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
