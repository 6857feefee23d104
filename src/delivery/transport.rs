//! What a callback attempt needs that a reload replaces: the HTTP client (its mTLS identity,
//! its trusted CAs, its guarded resolver) and the signing keys. Built from files, so rotating a
//! certificate or key is replacing files and sending SIGHUP.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use super::sign::{KeyError, Signer};
use crate::config::CallbacksConfig;

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Signing keys.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A TLS file is missing or not PEM of the right kind.
    #[error("callbacks.tls.{key}: {reason}")]
    Tls {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client refused the settings.
    #[error("cannot build the callback HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Where callbacks may go, the client and the keys they are sent with: replaced together on a
/// reload, so an origin removed from the allowlist is refused from then on, even for a
/// completion accepted before.
pub struct Transport {
    /// The one HTTP client for callbacks.
    pub client: reqwest::Client,
    /// The signing keys.
    pub signer: Signer,
    /// `callbacks.allowed_origins`, as `scheme://host:port`.
    allowed_origins: BTreeSet<String>,
}

impl Transport {
    /// Reads every key and certificate file now and builds the client.
    pub fn build(cfg: &CallbacksConfig) -> Result<Self, TransportError> {
        Ok(Self {
            signer: Signer::load(&cfg.jwt, &cfg.standard_webhooks)?,
            client: http_client(cfg)?,
            allowed_origins: cfg.allowed_origins.clone(),
        })
    }

    /// Whether `url`'s origin is one the config allows. Checked at trigger time and again
    /// before every post, so the sidecar never calls anywhere the config does not name.
    pub fn allows(&self, url: &Url) -> bool {
        self.allowed_origins
            .contains(&url.origin().ascii_serialization())
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::Tls {
        key,
        reason: format!("{}: {e}", path.display()),
    })
}

/// The HTTP client: no redirects, no proxies, bounded time, mTLS when configured, and a
/// resolver that refuses private addresses the config did not allow.
pub fn http_client(cfg: &CallbacksConfig) -> Result<reqwest::Client, TransportError> {
    client_resolving_with(cfg, Arc::new(system_lookup))
}

/// The addresses a host name has, as the system resolver answers.
fn system_lookup(host: String) -> Answer {
    Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
}

/// What a [`Lookup`] answers.
type Answer = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks a host name up: the system resolver, or a test's that answers differently each time.
type Lookup = Arc<dyn Fn(String) -> Answer + Send + Sync>;

/// [`http_client`] with `lookup` behind the guarded resolver.
fn client_resolving_with(
    cfg: &CallbacksConfig,
    lookup: Lookup,
) -> Result<reqwest::Client, TransportError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .no_proxy()
        .user_agent(concat!("agent-sidecar/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(GuardedResolver {
            allowed: cfg.allowed_networks.clone(),
            lookup,
        })
        .tls_backend_rustls();
    if let Some(ca) = &cfg.tls.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read("ca_file", ca)?).map_err(|e| {
            TransportError::Tls {
                key: "ca_file",
                reason: format!("{}: {e}", ca.display()),
            }
        })?;
        if certs.is_empty() {
            return Err(TransportError::Tls {
                key: "ca_file",
                reason: format!("{} holds no certificate", ca.display()),
            });
        }
        builder = builder.tls_certs_only(certs);
    }
    match (&cfg.tls.client_cert_file, &cfg.tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read("client_cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("client_key_file", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| TransportError::Tls {
                key: "client_key_file",
                reason: format!("{} / {}: {e}", cert.display(), key.display()),
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(TransportError::Tls {
                key: "client_cert_file",
                reason: "client_cert_file and client_key_file go together".into(),
            });
        }
    }
    Ok(builder.build()?)
}

/// Resolves callback hosts, dropping addresses that are private, loopback, link-local or
/// otherwise special unless `callbacks.allowed_networks` covers them. This is the only lookup
/// of a callback host: the client connects to exactly the addresses checked here, with no
/// second resolution a rebinding DNS server could answer differently. Origins written as IP
/// literals are never resolved: the allowlist named them explicitly.
struct GuardedResolver {
    allowed: Vec<IpNet>,
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        let lookup = (self.lookup)(name.as_str().to_owned());
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = lookup.await?;
            let usable: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| permitted(a.ip(), &allowed))
                .collect();
            if usable.is_empty() {
                return Err(Box::new(PrivateAddress { host }) as Box<_>);
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

/// A callback host resolved only to addresses the sidecar may not call. Permanent: no retry
/// makes the address public, so the delivery is dead-lettered at once with this reason.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to private, loopback or link-local addresses outside callbacks.allowed_networks"
)]
pub struct PrivateAddress {
    host: String,
}

impl PrivateAddress {
    /// The refusal somewhere in `error`'s cause chain (the client wraps the resolver's error).
    pub fn in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(found) = e.downcast_ref::<Self>() {
                return Some(found);
            }
            cause = e.source();
        }
        None
    }
}

/// Whether a resolved address may be called.
pub fn permitted(ip: IpAddr, allowed: &[IpNet]) -> bool {
    !is_special(ip) || allowed.iter().any(|net| net.contains(&ip))
}

fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_special(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers `body` to every request, then closes the connection, so the client's next
    /// request opens (and resolves for) a new one.
    fn serve(listener: tokio::net::TcpListener, body: &'static str) -> tokio::task::JoinHandle<()> {
        let app = axum::Router::new()
            .fallback(move || async move { ([(axum::http::header::CONNECTION, "close")], body) });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    #[tokio::test]
    async fn a_host_name_that_resolves_differently_between_check_and_connect_cannot_slip_through() {
        // Two real servers on one port: the allowed one on 127.0.0.1 and a forbidden one on
        // 127.0.0.2 (outside `allowed_networks`), where a second resolution would lead.
        let forbidden = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = forbidden.local_addr().unwrap().port();
        let allowed = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let servers = [serve(allowed, "checked"), serve(forbidden, "rebound")];
        // A rebinding DNS server: an allowed address first, the forbidden one ever after.
        let lookups = Arc::new(AtomicUsize::new(0));
        let lookup: Lookup = {
            let lookups = Arc::clone(&lookups);
            Arc::new(move |_host| {
                let n = lookups.fetch_add(1, Ordering::SeqCst);
                let ip = if n == 0 {
                    [127, 0, 0, 1]
                } else {
                    [127, 0, 0, 2]
                };
                Box::pin(async move { Ok(vec![SocketAddr::from((ip, 0))]) })
            })
        };
        crate::install_crypto_provider();
        let mut cfg = crate::delivery::sign::tests::config(&[]);
        cfg.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
        let client = client_resolving_with(&cfg, lookup).unwrap();
        let url = format!("http://rebind.invalid:{port}/");

        let first = client.get(&url).send().await.unwrap();
        assert_eq!(
            (
                first.text().await.unwrap().as_str(),
                lookups.load(Ordering::SeqCst)
            ),
            ("checked", 1),
            "one lookup, and the connection went to the address it checked"
        );
        // The next connection resolves again, gets the forbidden address, and is refused
        // before connecting: the check holds for every answer, not just the first.
        let second = client.get(&url).send().await.unwrap_err();
        assert!(PrivateAddress::in_chain(&second).is_some(), "{second:?}");
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        servers.iter().for_each(tokio::task::JoinHandle::abort);
    }

    #[test]
    fn private_loopback_and_link_local_addresses_are_refused_unless_allowed() {
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(!permitted(ip.parse().unwrap(), &[]), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(permitted(ip.parse().unwrap(), &[]), "{ip}");
        }
        let allowed: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(permitted("10.1.2.3".parse().unwrap(), &allowed));
        assert!(!permitted("192.168.0.1".parse().unwrap(), &allowed));
    }
}
