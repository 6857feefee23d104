//! Issue 20, mission control: the dashboard's pages rendered over plain HTTP with real jobs in
//! them, their security headers and assets, and its form actions driving real agents.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// A client that does not follow redirects, so a 303 and its `Location` can be checked.
fn browser() -> reqwest::Client {
    agent_sidecar::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET path`: the status, the response's headers and the body as text.
async fn page(sidecar: &Sidecar, path: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = browser()
        .get(format!("{}{path}", sidecar.base))
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// Asserts an HTML page answered 200 under the CSP, with no inline style or script.
fn assert_html_page(
    path: &str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) {
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    assert_eq!(headers["content-security-policy"], CSP, "{path}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{path}"
    );
    assert!(!body.contains("style="), "{path} has an inline style");
    assert!(
        body.matches("<script").count() == body.matches("<script src=\"/ui/assets/").count(),
        "{path} has an inline script"
    );
}

/// POSTs a form to `path`; returns the status and the `Location` it redirects to.
async fn submit(sidecar: &Sidecar, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
    submit_as(sidecar, None, path, fields).await
}

/// POSTs a form to `path` with the session `cookie`, if any.
async fn submit_as(
    sidecar: &Sidecar,
    cookie: Option<&str>,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = browser()
        .post(format!("{}{path}", sidecar.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(fields).unwrap());
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("sidecar_ui={cookie}"));
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location)
}

/// The CSRF token a page's forms carry.
fn csrf_in(body: &str) -> String {
    let needle = "name=\"csrf\" value=\"";
    let start = body
        .find(needle)
        .unwrap_or_else(|| panic!("no CSRF field in {body}"))
        + needle.len();
    let end = start + body[start..].find('"').unwrap();
    body[start..end].to_owned()
}

/// The quoted value after `attribute="` that starts with `prefix`.
fn attribute_starting(body: &str, attribute: &str, prefix: &str) -> String {
    let needle = format!("{attribute}=\"{prefix}");
    let start = body.find(&needle).unwrap_or_else(|| panic!("no {needle}")) + attribute.len() + 2;
    let end = start + body[start..].find('"').unwrap();
    body[start..end].to_owned()
}

#[tokio::test]
async fn every_page_renders_a_real_job_under_the_csp_with_its_secrets_redacted() {
    // Arrange: a job that failed, with a secret among its params.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "failing_agent");
    body["params"] = json!({"api_token": "hunter2-secret", "title": "Quarterly"});
    run_job(&sidecar, &receiver, &body).await;
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let delivery = eventually("the delivery to be delivered", || async {
        let job = job(&sidecar, &job_id).await;
        (job["delivery"]["state"] == "delivered").then(|| job["delivery"].clone())
    })
    .await;
    let delivery_id = delivery["delivery_id"].as_str().unwrap();

    // Act
    let (overview_status, overview_headers, overview) = page(&sidecar, "/ui").await;
    let (jobs_status, jobs_headers, jobs) = page(
        &sidecar,
        "/ui/jobs?state=failed&agent=&job_name=ReportCompileJob",
    )
    .await;
    let (job_status, job_headers, job_page) = page(&sidecar, &format!("/ui/jobs/{job_id}")).await;
    let (deliveries_status, deliveries_headers, deliveries) =
        page(&sidecar, "/ui/deliveries?state=&job_name=ReportCompileJob").await;

    // Assert
    assert_html_page("/ui", overview_status, &overview_headers, &overview);
    assert!(overview.contains("failing_agent"), "{overview}");
    assert!(
        overview.contains("<svg"),
        "the buckets are charted: {overview}"
    );
    assert_html_page("/ui/jobs", jobs_status, &jobs_headers, &jobs);
    assert!(
        jobs.contains(&format!("href=\"/ui/jobs/{job_id}\"")),
        "{jobs}"
    );
    assert!(
        jobs.contains(&format!("name=\"job_id\" value=\"{job_id}\"")),
        "a checkbox for the bulk actions: {jobs}"
    );
    assert_html_page("/ui/jobs/{id}", job_status, &job_headers, &job_page);
    assert!(job_page.contains("state-failed"), "{job_page}");
    assert!(job_page.contains(delivery_id), "{job_page}");
    assert!(
        job_page.contains(&format!("action=\"/ui/jobs/{job_id}/rerun\"")),
        "an ended job offers a re-run: {job_page}"
    );
    assert!(!job_page.contains("hunter2-secret"), "{job_page}");
    assert!(job_page.contains("[redacted]"), "{job_page}");
    assert!(job_page.contains("Quarterly"), "{job_page}");
    let log = attribute_starting(&job_page, "href", &format!("/ui/jobs/{job_id}/output/"));
    let (log_status, log_headers, _) = page(&sidecar, &log).await;
    assert_eq!(log_status, StatusCode::OK, "{log}");
    assert_eq!(log_headers["content-security-policy"], CSP, "{log}");
    assert_html_page(
        "/ui/deliveries",
        deliveries_status,
        &deliveries_headers,
        &deliveries,
    );
    assert!(deliveries.contains(delivery_id), "{deliveries}");
    let (bad_status, _, _) = page(&sidecar, "/ui/jobs?state=sideways").await;
    assert_eq!(bad_status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_assets_are_served_at_content_hashed_paths_cached_as_immutable() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (_, _, overview) = page(&sidecar, "/ui").await;
    for (attribute, mime) in [("href", "text/css"), ("src", "text/javascript")] {
        let path = attribute_starting(&overview, attribute, "/ui/assets/app.");
        let (status, headers, body) = page(&sidecar, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty());
        assert!(headers["content-type"].to_str().unwrap().starts_with(mime));
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(headers["content-security-policy"], CSP);
    }
    let (status, _, _) = page(&sidecar, "/ui/assets/app.0000000000000000.css").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an old hash is not served");
}

#[tokio::test]
async fn cancelling_a_running_job_from_its_page_stops_its_agent_and_bulk_rerun_queues_it_again() {
    // Arrange: a job whose agent sleeps.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({})).await;
    wait_state(&sidecar, &job_id, "in_progress").await;
    let here = format!("/ui/jobs/{job_id}");
    let (_, _, before) = page(&sidecar, &here).await;
    let cancel = format!("/ui/jobs/{job_id}/cancel");
    assert!(before.contains(&format!("action=\"{cancel}\"")), "{before}");
    assert!(
        before.contains(&format!("data-job-feed=\"/ui/jobs/{job_id}/feed\"")),
        "a running job's page follows its feed: {before}"
    );

    // Act: the page's cancel form.
    let csrf = csrf_in(&before);
    let (status, location) = submit(&sidecar, &cancel, &[("back", &here), ("csrf", &csrf)]).await;

    // Assert
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with(&format!("{here}?notice=")),
        "{location}"
    );
    wait_state(&sidecar, &job_id, "canceled").await;
    let (_, _, after) = page(&sidecar, &location).await;
    assert!(
        after.contains("Cancel requested"),
        "the notice is shown: {after}"
    );
    assert!(!after.contains(&format!("action=\"{cancel}\"")), "{after}");

    // Act: the jobs list's bulk re-run, then a refused bulk cancel of a job that is gone.
    let (status, location) = submit(
        &sidecar,
        "/ui/jobs/bulk",
        &[
            ("back", "/ui/jobs?agent=napper"),
            ("csrf", &csrf),
            ("action", "rerun"),
            ("job_id", &job_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with("/ui/jobs?agent=napper&notice=Re-run%3A+1+done"),
        "{location}"
    );
    wait_state(&sidecar, &job_id, "in_progress").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let (_, location) = submit(
        &sidecar,
        "/ui/jobs/bulk",
        &[
            ("back", "https://elsewhere.example/"),
            ("csrf", &csrf),
            ("action", "cancel"),
            ("job_id", &job_id),
            ("job_id", &unknown),
        ],
    )
    .await;
    assert!(
        location.starts_with("/ui/jobs?notice=Cancel%3A+1+done%2C+1+refused"),
        "a back outside /ui is not followed: {location}"
    );
    wait_state(&sidecar, &job_id, "canceled").await;
}

#[tokio::test]
async fn redrive_all_matching_from_the_deliveries_page_delivers_the_dead_letters() {
    // Arrange: a completion dead-lettered by a 422, then a receiver that accepts.
    let receiver = Receiver::answering(StatusCode::UNPROCESSABLE_ENTITY).await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, &receiver, &body).await;
    let dead = eventually("the delivery to be dead", || async {
        let job = job(&sidecar, &job_id).await;
        (job["delivery"]["state"] == "dead").then(|| job["delivery"].clone())
    })
    .await;
    let delivery_id = dead["delivery_id"].as_str().unwrap().to_owned();
    let (_, _, listed) = page(&sidecar, "/ui/deliveries?state=dead&status_code=422").await;
    assert!(
        listed.contains(&format!("action=\"/ui/deliveries/{delivery_id}/redrive\"")),
        "{listed}"
    );
    receiver.set_completion_status(StatusCode::OK);

    // Act
    let (status, location) = submit(
        &sidecar,
        "/ui/deliveries/redrive",
        &[
            ("back", "/ui/deliveries?state=dead"),
            ("csrf", &csrf_in(&listed)),
            ("job_name", "ReportCompileJob"),
            ("status_code", "422"),
            ("since", ""),
        ],
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with("/ui/deliveries?state=dead&notice=1+dead"),
        "{location}"
    );
    receiver
        .wait_until("the redriven completion", |hits| {
            hits.iter().filter(|h| h.path == "/completion").count() >= 2
        })
        .await;
    let delivered = eventually("the delivery to be delivered", || async {
        let job = job(&sidecar, &job_id).await;
        (job["delivery"]["state"] == "delivered").then(|| job["delivery"].clone())
    })
    .await;
    assert_eq!(delivered["delivery_id"], delivery_id.as_str());
}

// ---------------------------------------------------------------------------------------------
// Sessions and roles

/// A token the API accepts, with `role` as its `sidecar_role` (none when `None`).
fn token(role: Option<&str>) -> String {
    let mut claims = crate::auth::claims();
    if let Some(role) = role {
        claims["sidecar_role"] = json!(role);
    }
    crate::auth::hs256(&claims, crate::auth::INBOUND_SECRET)
}

/// Logs in with `token`; returns the cookie's value and its whole `Set-Cookie` line.
async fn login(sidecar: &Sidecar, token: &str) -> (String, String) {
    let response = browser()
        .get(format!("{}/ui/login?token={token}", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/ui");
    let line = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let value = line
        .strip_prefix("sidecar_ui=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    (value, line)
}

/// `GET path` with the session `cookie`.
async fn page_as(
    sidecar: &Sidecar,
    cookie: &str,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = browser()
        .get(format!("{}{path}", sidecar.base))
        .header("cookie", format!("other=1; sidecar_ui={cookie}"))
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// A cookie signed as the sidecar signs them (key derived from the inbound secret).
fn sealed(role: &str, expires_at: i64, subject: &str) -> String {
    use base64::Engine;
    use ring::hmac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let root = hmac::Key::new(hmac::HMAC_SHA256, crate::auth::INBOUND_SECRET.as_bytes());
    let derived = hmac::sign(&root, b"agent-sidecar ui session v1");
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    let body = format!("{role}.{expires_at}.{}", b64.encode(subject));
    format!("{body}.{}", b64.encode(hmac::sign(&key, body.as_bytes())))
}

#[tokio::test]
async fn a_login_sets_a_strict_session_cookie_and_pages_without_a_valid_one_send_to_the_login_page()
{
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &crate::auth::auth_toml("")).await;

    // No session: every page but the login page and the assets redirects there.
    let (status, headers, _) = page(&sidecar, "/ui/jobs").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/login");
    let (status, headers, login_page) = page(&sidecar, "/ui/login").await;
    assert_html_page("/ui/login", status, &headers, &login_page);
    let css = attribute_starting(&login_page, "href", "/ui/assets/app.");
    assert_eq!(page(&sidecar, &css).await.0, StatusCode::OK);
    let (status, _, refused) = page(&sidecar, "/ui/login?token=not.a.token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(refused.contains("Not logged in"), "{refused}");

    // Act
    let (cookie, line) = login(&sidecar, &token(Some("operator"))).await;

    // Assert: the cookie's attributes, and what it opens.
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(line.contains(attribute), "{line}");
    }
    assert!(!line.contains("Secure"), "plain HTTP: {line}");
    let max_age: u64 = line
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age <= 300, "no longer than the token: {line}");
    let (status, _, overview) = page_as(&sidecar, &cookie, "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(overview.contains("rails-app (operator)"), "{overview}");

    // A forged, an expired and a tampered cookie open nothing.
    let past = crate::auth::now() - 10;
    let future = crate::auth::now() + 300;
    let (mac_start, _) = cookie.rsplit_once('.').unwrap();
    for bad in [
        sealed("operator", past, "rails-app"),
        format!("{mac_start}.AAAA"),
        sealed("operator", future, "rails-app").replacen("operator", "viewer", 1),
    ] {
        let (status, headers, _) = page_as(&sidecar, &bad, "/ui/jobs").await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{bad}");
        assert_eq!(headers["location"], "/ui/login");
    }
    assert_eq!(
        page_as(&sidecar, &sealed("operator", future, "rails-app"), "/ui")
            .await
            .0,
        StatusCode::OK,
        "a cookie signed with the derived key is the sidecar's own"
    );
}

#[tokio::test]
async fn a_viewer_sees_no_buttons_and_its_posts_and_posts_without_the_csrf_token_are_403() {
    // Arrange: an ended job, a viewer and an operator.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &crate::auth::auth_toml("")).await;
    let body = trigger(&receiver, "failing_agent");
    sidecar.write_job(&body);
    let answer = client()
        .post(format!("{}/agents/trigger", sidecar.base))
        .bearer_auth(token(None))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    receiver.completion(&job_id).await;
    let (viewer, _) = login(&sidecar, &token(None)).await;
    let (operator, _) = login(&sidecar, &token(Some("operator"))).await;
    let here = format!("/ui/jobs/{job_id}");
    let rerun = format!("/ui/jobs/{job_id}/rerun");

    // Act
    let (_, _, seen_by_viewer) = page_as(&sidecar, &viewer, &here).await;
    let (_, _, seen_by_operator) = page_as(&sidecar, &operator, &here).await;
    let operator_csrf = csrf_in(&seen_by_operator);
    let viewer_post = submit_as(&sidecar, Some(&viewer), &rerun, &[("csrf", &operator_csrf)]).await;
    let no_csrf = submit_as(&sidecar, Some(&operator), &rerun, &[("back", &here)]).await;
    let wrong_csrf = submit_as(&sidecar, Some(&operator), &rerun, &[("csrf", "AAAA")]).await;
    let no_session = submit_as(&sidecar, None, &rerun, &[("csrf", &operator_csrf)]).await;
    let (_, _, viewer_jobs) = page_as(&sidecar, &viewer, "/ui/jobs").await;
    let right = submit_as(
        &sidecar,
        Some(&operator),
        &rerun,
        &[("csrf", &operator_csrf), ("back", &here)],
    )
    .await;

    // Assert
    assert!(
        seen_by_viewer.contains("rails-app (viewer)"),
        "{seen_by_viewer}"
    );
    let error_log = format!("/ui/jobs/{job_id}/output/log.txt");
    // Through to the artifacts handler with the session (200, or 404 for a file not written).
    let through = page_as(&sidecar, &viewer, &error_log).await.0;
    assert!(
        [StatusCode::OK, StatusCode::NOT_FOUND].contains(&through),
        "{through}"
    );
    assert_eq!(
        page(&sidecar, &error_log).await.0,
        StatusCode::SEE_OTHER,
        "no session"
    );
    for page in [&seen_by_viewer, &viewer_jobs] {
        assert!(!page.contains(">Re-run"), "{page}");
        assert!(!page.contains(">Cancel"), "{page}");
        assert!(!page.contains("method=\"post\""), "{page}");
        assert!(!page.contains("name=\"csrf\""), "{page}");
    }
    assert!(
        seen_by_operator.contains(&format!("action=\"{rerun}\"")),
        "{seen_by_operator}"
    );
    for (what, (status, _)) in [
        ("a viewer's post", viewer_post),
        ("a post without the token", no_csrf),
        ("a post with a wrong token", wrong_csrf),
        ("a post without a session", no_session),
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    }
    assert_eq!(right.0, StatusCode::SEE_OTHER);
    assert!(
        right.1.starts_with(&format!("{here}?notice=Job")),
        "{}",
        right.1
    );
}

// ---------------------------------------------------------------------------------------------
// Live parts

/// Reads an event stream until `done` holds for what arrived; returns it.
async fn read_stream_until(
    response: &mut reqwest::Response,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    let read = async {
        while !done(&text) {
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the stream ended early");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("timed out; the stream so far: {text}"));
    text
}

/// The `id:` of each event in `text`.
fn event_ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_job_feed_streams_progress_to_the_end_and_resumes_after_last_event_id() {
    // Arrange: an agent that reports five ticks.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(
        &sidecar,
        &receiver,
        "ticker",
        json!({"count": 5, "interval": 0.05}),
    )
    .await;
    let feed = format!("/ui/jobs/{job_id}/feed");

    // Act: the whole stream, then again after its second event.
    let mut response = browser()
        .get(format!("{}{feed}", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let whole = read_stream_until(&mut response, |t| t.contains("\"state\":\"completed\"")).await;
    let ids = event_ids(&whole);
    let mut resumed = browser()
        .get(format!("{}{feed}", sidecar.base))
        .header("last-event-id", ids[1].to_string())
        .send()
        .await
        .unwrap();
    let rest = read_stream_until(&mut resumed, |t| t.contains("\"state\":\"completed\"")).await;

    // Assert
    assert!(whole.contains("event: progress"), "{whole}");
    assert!(whole.contains("tick 4"), "{whole}");
    assert_eq!(
        event_ids(&rest),
        ids[2..],
        "exactly what followed, in order"
    );
    let ended = browser()
        .get(format!("{}{feed}", sidecar.base))
        .header("last-event-id", ids.last().unwrap().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        ended.status().as_u16(),
        204,
        "an ended feed tells the browser to stop"
    );
}

#[tokio::test]
async fn the_shared_feed_sends_the_overview_and_jobs_list_and_again_when_a_job_arrives() {
    // Arrange: an open feed, and the pages that follow it.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (_, _, jobs) = page(&sidecar, "/ui/jobs").await;
    let (_, _, filtered) = page(&sidecar, "/ui/jobs?state=failed").await;
    let (_, _, overview) = page(&sidecar, "/ui").await;
    let mut feed = browser()
        .get(format!("{}/ui/feed", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status().as_u16(), 200);
    assert!(
        feed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = read_stream_until(&mut feed, |t| {
        t.contains("event: jobs") && t.contains("event: overview")
    })
    .await;

    // Act: a job arrives.
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, &receiver, &body).await;
    let later = read_stream_until(&mut feed, |t| t.contains(&format!("/ui/jobs/{job_id}"))).await;

    // Assert
    assert!(jobs.contains("data-live=\"jobs\""), "{jobs}");
    assert!(
        !filtered.contains("data-live"),
        "a filtered list is not the shared one"
    );
    assert!(overview.contains("data-live=\"overview\""), "{overview}");
    assert!(first.contains("No jobs match."), "{first}");
    assert!(later.contains("event: jobs"), "{later}");
}
