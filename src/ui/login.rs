//! The dashboard's login: `GET /ui/login?token=<JWT>` or the login form verifies a token
//! exactly as the API verifies it and answers with the session cookie (`session`), or the
//! login page again with the reason.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use maud::html;

use super::Dashboard;
use super::pages::layout;
use super::session::{COOKIE, SESSION_MAX, Session, Sessions, now};
use crate::api::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/login", get(login_with_query).post(login_with_form))
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn login_with_query(
    State(app): State<AppState>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    login(&app, &dashboard.sessions, query.token.as_deref()).await
}

async fn login_with_form(
    State(app): State<AppState>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    body: axum::body::Bytes,
) -> Response {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let token = fields
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str());
    login(&app, &dashboard.sessions, Some(token.unwrap_or(""))).await
}

/// Verifies `token` as the API would and answers with the session cookie, or the login page.
async fn login(app: &AppState, sessions: &Sessions, token: Option<&str>) -> Response {
    let auth = app.inner.gate.current();
    if !auth.required() {
        return Redirect::to("/ui").into_response();
    }
    let Some(token) = token else {
        return login_page(None).into_response();
    };
    let principal = match auth.verify(token.trim()) {
        Ok(principal) => principal,
        Err(refusal) => {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                login_page(Some(refusal.sentence())),
            )
                .into_response();
        }
    };
    let now = now();
    let expires_at = principal
        .expires_at
        .unwrap_or(u64::MAX)
        .min(now + SESSION_MAX.as_secs());
    let session = Session {
        role: principal.role,
        subject: principal.subject,
        expires_at,
    };
    tracing::info!(subject = %session.subject, role = session.role.as_str(), "dashboard session opened");
    let secure = if app.inner.config.server.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        sessions.seal(&session),
        expires_at.saturating_sub(now)
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn login_page(error: Option<&str>) -> maud::Markup {
    let content = html! {
        @if let Some(error) = error {
            p.notice role="alert" { "Not logged in: " (error) }
        }
        p { "Paste a token minted with "
            code { "agent-sidecar token mint --config <file> --role operator" }
            " (or " code { "--role viewer" } " to only look)." }
        form method="post" action="/ui/login" {
            label { "Token " input type="password" name="token" autocomplete="off" required; }
            " "
            button type="submit" { "Log in" }
        }
    };
    layout("Log in", None, None, None, content)
}
