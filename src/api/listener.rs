//! The API's listener. Every accepted connection gets a bounded kernel send buffer and a write
//! timeout, so a client that stops reading (a stalled watcher) is disconnected instead of
//! holding memory or the shutdown. With `[server.tls]` it serves HTTPS (rustls), optionally
//! verifying client certificates; TLS handshakes run off the accept loop, each with a time
//! limit, so a slow client cannot hold up the others. Certificates reload on SIGHUP.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, ServerTlsConfig};

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted (and handshaken) but not yet taken by the server.
const BACKLOG: usize = 128;
/// TLS handshakes in progress at once: clients that connect and stall cannot use up the
/// process's file descriptors (each holds one for at most `HANDSHAKE_TIMEOUT`).
const MAX_HANDSHAKES: usize = 256;

type Timed = Pin<Box<TimeoutStream<TcpStream>>>;

/// One accepted connection, plain or TLS.
pub enum Conn {
    /// Plain HTTP.
    Plain(Timed),
    /// HTTPS.
    Tls(Box<TlsStream<Timed>>),
}

impl Conn {
    /// Whether the client presented a certificate the configured CA verified.
    pub fn client_certified(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty()),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => io.as_mut().poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => io.as_mut().poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => io.as_mut().poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => io.as_mut().poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What handlers learn about the connection (`ConnectInfo<PeerInfo>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether it presented a verified client certificate.
    pub client_certified: bool,
}

impl Connected<IncomingStream<'_, GuardedListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            client_certified: stream.io().client_certified(),
        }
    }
}

/// Why the listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("server.tls.{key}: {reason}")]
pub struct TlsSetupError {
    key: &'static str,
    reason: String,
}

/// The TLS configuration in force (none for plain HTTP), replaced whole on reload.
pub struct TlsSettings {
    current: RwLock<Option<Arc<rustls::ServerConfig>>>,
}

impl TlsSettings {
    /// Loads the certificate, key and client CA `config` names.
    pub fn load(config: &Config) -> Result<Self, TlsSetupError> {
        Ok(Self {
            current: RwLock::new(config.server.tls.as_ref().map(build).transpose()?),
        })
    }

    /// Builds the TLS configuration `config` names, without installing it.
    pub fn prepare(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
        config.server.tls.as_ref().map(build).transpose()
    }

    /// Switches to a prepared configuration (the caller checked plain stays plain).
    pub fn install(&self, fresh: Option<Arc<rustls::ServerConfig>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(TlsAcceptor::from)
    }
}

fn build(tls: &ServerTlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let fail = |key, reason: String| TlsSetupError { key, reason };
    let certs = read_certs(&tls.cert_file).map_err(|e| fail("cert_file", e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| fail("key_file", format!("{}: {e}", tls.key_file.display())))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca).map_err(|e| fail("client_ca_file", e))? {
                roots
                    .add(cert)
                    .map_err(|e| fail("client_ca_file", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if tls.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| fail("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| fail("cert_file", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// A TCP listener whose connections time out on stalled writes, optionally behind TLS.
pub struct GuardedListener {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl GuardedListener {
    /// Wraps `inner`; accepted sockets inherit its `send_buffer_bytes` (Linux copies the
    /// listener's buffer size to each accepted socket).
    pub fn new(
        inner: TcpListener,
        write_timeout: Duration,
        send_buffer_bytes: usize,
        tls: Arc<TlsSettings>,
    ) -> io::Result<Self> {
        socket2::SockRef::from(&inner).set_send_buffer_size(send_buffer_bytes)?;
        let local = inner.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let acceptor = tokio::spawn(accept_loop(inner, write_timeout, tls, tx));
        Ok(Self {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for GuardedListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Accepts connections until the listener is dropped; handshakes run in their own tasks.
async fn accept_loop(
    inner: TcpListener,
    write_timeout: Duration,
    tls: Arc<TlsSettings>,
    ready: mpsc::Sender<(Conn, SocketAddr)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        // Accept only with a handshake slot free, so stalled handshakes hold back new
        // connections in the kernel's backlog rather than in open descriptors.
        let Ok(slot) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let (stream, addr) = tokio::select! {
            accepted = accept_tcp(&inner) => accepted,
            () = ready.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(write_timeout));
        let io = Box::pin(io);
        match tls.acceptor() {
            None => {
                drop(slot);
                if ready.send((Conn::Plain(io), addr)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let ready = ready.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((Conn::Tls(Box::new(tls)), addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

async fn accept_tcp(inner: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match inner.accept().await {
            Ok(accepted) => return accepted,
            // Out of file descriptors and the like: wait, as axum's own listener does.
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop is gone (it only ends when this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
