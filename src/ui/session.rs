//! Who is looking at the dashboard, and what they may do.
//!
//! With `[server.auth]` a browser logs in once with a token the API would accept
//! (`GET /ui/login?token=<JWT>` or the login form), verified exactly as the API verifies it.
//! The answer is the cookie `sidecar_ui`: role, subject and expiry (the token's, at most
//! [`SESSION_MAX`]), signed with HMAC-SHA256 under a key derived from the inbound secret (or
//! drawn at start when there is none, so sessions end with the process). Every page but the
//! login page and the assets needs a valid cookie (else it redirects to the login page); a
//! client certificate the listener verified counts as an operator, as it does for the API.
//!
//! Every POST form carries a CSRF token, the HMAC of the session cookie (or, without auth, of a
//! fixed word: the dashboard is then on loopback, where any local web page could still post to
//! it). [`guard`] refuses (403) a POST whose token is missing or wrong, and any POST of a
//! viewer: a viewer is also shown no buttons. Without auth the dashboard acts as an operator.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;

use super::Dashboard;
use crate::api::AppState;
use crate::api::auth::Role;
use crate::api::listener::PeerInfo;
use crate::config::AuthConfig;
use crate::contract::FieldError;
use crate::error::{ApiError, ErrorSource};

/// The session cookie's name.
pub const COOKIE: &str = "sidecar_ui";

/// The longest a session lasts, whatever its token's expiry.
pub const SESSION_MAX: Duration = Duration::from_secs(8 * 3600);

/// The form field that carries the CSRF token.
pub(super) const CSRF_FIELD: &str = "csrf";

/// What the CSRF token of a dashboard without auth is the HMAC of.
const ANONYMOUS: &str = "anonymous";

/// Signs and checks session cookies and CSRF tokens.
pub(super) struct Sessions {
    key: hmac::Key,
}

impl Sessions {
    /// The signer: its key derived from `[server.auth] secret`, else random for this process.
    pub fn new(auth: Option<&AuthConfig>) -> Self {
        let key = match auth.and_then(|a| a.secret.as_ref()) {
            // A derived key, not the secret itself: a cookie's MAC says nothing about tokens.
            Some(secret) => {
                let root = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
                let derived = hmac::sign(&root, b"agent-sidecar ui session v1");
                hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
            }
            None => hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .unwrap_or_else(|_| {
                    // Only when the OS has no randomness: sessions cannot be trusted at all.
                    panic!("no randomness for the dashboard's session key")
                }),
        };
        Self { key }
    }

    /// A cookie value for `session`: `<role>.<expires>.<subject, base64url>.<mac, base64url>`.
    pub(super) fn seal(&self, session: &Session) -> String {
        let body = format!(
            "{}.{}.{}",
            session.role.as_str(),
            session.expires_at,
            B64.encode(session.subject.as_bytes())
        );
        let mac = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", B64.encode(mac.as_ref()))
    }

    /// The session a cookie value holds, if its MAC is right and it has not expired at `now`.
    fn open(&self, value: &str, now: u64) -> Option<Session> {
        let (body, mac) = value.rsplit_once('.')?;
        hmac::verify(&self.key, body.as_bytes(), &B64.decode(mac).ok()?).ok()?;
        let mut parts = body.splitn(3, '.');
        let role = Role::parse(parts.next()?)?;
        let expires_at: u64 = parts.next()?.parse().ok()?;
        let subject = String::from_utf8(B64.decode(parts.next()?).ok()?).ok()?;
        (expires_at > now).then_some(Session {
            role,
            subject,
            expires_at,
        })
    }

    /// The CSRF token of the session whose cookie value is `basis`.
    fn csrf(&self, basis: &str) -> String {
        let mac = hmac::sign(&self.key, format!("csrf {basis}").as_bytes());
        B64.encode(mac.as_ref())
    }

    /// Whether `token` is the CSRF token of `basis` (compared in constant time).
    fn csrf_holds(&self, basis: &str, token: &str) -> bool {
        B64.decode(token).is_ok_and(|tag| {
            hmac::verify(&self.key, format!("csrf {basis}").as_bytes(), &tag).is_ok()
        })
    }
}

/// A logged-in browser.
pub(super) struct Session {
    pub(super) role: Role,
    pub(super) subject: String,
    /// Unix seconds.
    pub(super) expires_at: u64,
}

/// What a page knows of its viewer: whether to offer actions, and the token its forms carry.
#[derive(Clone)]
pub(super) struct Viewer {
    /// An operator: action buttons are shown and POSTs taken.
    pub can_act: bool,
    /// The CSRF token for this viewer's forms.
    pub csrf: String,
    /// Who is logged in, when anyone is.
    pub subject: Option<(String, Role)>,
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The session cookie's value among a request's cookies.
fn cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The middleware in front of every dashboard route: finds the viewer, sends a browser without
/// a session to the login page, refuses POSTs of viewers and POSTs without the right CSRF
/// token.
pub(super) async fn guard(
    State(app): State<AppState>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path().to_owned(), |u| u.path().to_owned());
    if path == "/ui/login" || path.starts_with("/ui/assets/") {
        return next.run(request).await;
    }
    let sessions = &dashboard.sessions;
    let certified = request
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .is_some_and(|c| c.0.client_certified);
    let viewer = if !app.inner.gate.current().required() || certified {
        Viewer {
            can_act: true,
            csrf: sessions.csrf(ANONYMOUS),
            subject: None,
        }
    } else {
        let opened = cookie(request.headers())
            .and_then(|value| sessions.open(&value, now()).map(|s| (value, s)));
        match opened {
            Some((value, session)) => Viewer {
                can_act: session.role == Role::Operator,
                csrf: sessions.csrf(&value),
                subject: Some((session.subject, session.role)),
            },
            None if request.method() == Method::GET => {
                return Redirect::to("/ui/login").into_response();
            }
            None => return refused("/session", "no valid session; log in again"),
        }
    };
    let mut request = if request.method() == Method::POST {
        if !viewer.can_act {
            return refused("/role", "a viewer cannot act; log in as an operator");
        }
        let (parts, body) = request.into_parts();
        let limit = app.inner.config.server.max_body_bytes;
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return ApiError::too_large(limit).into_response();
        };
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let token = fields
            .iter()
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.as_str());
        let basis = match &viewer.subject {
            Some(_) => cookie(&parts.headers).unwrap_or_default(),
            None => ANONYMOUS.to_owned(),
        };
        if !token.is_some_and(|t| sessions.csrf_holds(&basis, t)) {
            return refused(
                "/csrf",
                "the form's CSRF token is missing or wrong; reload the page",
            );
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    request.extensions_mut().insert(viewer);
    next.run(request).await
}

fn refused(pointer: &str, detail: &str) -> Response {
    ApiError::forbidden(ErrorSource::Request, FieldError::new(pointer, detail)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, b"test key"),
        }
    }

    #[test]
    fn a_sealed_session_opens_until_it_expires_and_not_once_altered() {
        let s = sessions();
        let sealed = s.seal(&Session {
            role: Role::Viewer,
            subject: "ops.team".into(),
            expires_at: 1_000,
        });
        let opened = s.open(&sealed, 999).unwrap();
        assert_eq!(
            (opened.role, opened.subject.as_str()),
            (Role::Viewer, "ops.team")
        );
        assert!(s.open(&sealed, 1_000).is_none(), "expired");
        let forged = sealed.replacen("viewer", "operator", 1);
        assert!(s.open(&forged, 999).is_none(), "the MAC covers the role");
        let csrf = s.csrf(&sealed);
        assert!(s.csrf_holds(&sealed, &csrf));
        assert!(!s.csrf_holds(&forged, &csrf));
        assert!(!s.csrf_holds(&sealed, "nope"));
    }
}
