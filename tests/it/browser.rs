//! Issue 20, mission control in a real browser: Debian's `chromium`, headless, driven through
//! `chromedriver` by `fantoccini`. Skipped with a notice when chromedriver is absent, unless
//! `AGENT_SIDECAR_REQUIRE_BROWSER=1` (CI sets it), which makes its absence a failure. Every
//! page visited must leave no console error and no failed request, and is saved as a
//! screenshot under `target/ui-screenshots/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use axum::http::{Method, StatusCode};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port; killed by its pid when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver, or says why not: `None` means skip.
    fn start() -> Option<Self> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var("AGENT_SIDECAR_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "AGENT_SIDECAR_REQUIRE_BROWSER=1 but {CHROMEDRIVER} or {CHROMIUM} is missing"
            );
            eprintln!(
                "skipped: no {CHROMEDRIVER} or {CHROMIUM} (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        // chromedriver takes no port 0: a port the kernel just handed out and released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(CHROMEDRIVER)
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Ready once it says so.
        loop {
            let line = lines.next().expect("chromedriver said it started").unwrap();
            if line.contains("started successfully") {
                break;
            }
        }
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    async fn browser(&self) -> Client {
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    /// Ends chromedriver by its pid; it ends the browsers of the sessions it still holds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// chromedriver's log endpoint (not in the W3C protocol, so not in fantoccini).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// Fails on any console error since the last check, and on any request of the page that failed.
async fn assert_clean(browser: &Client, page: &str) {
    let log = browser.issue_cmd(BrowserLog).await.unwrap();
    let errors: Vec<&Value> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "{page}: console errors {errors:?}");
    let failed = browser
        .execute(
            "return performance.getEntriesByType('resource')
                .filter(e => e.responseStatus >= 400 || (e.responseStatus === 0 && e.initiatorType !== 'other'))
                .map(e => e.name + ' ' + e.responseStatus);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(failed, json!([]), "{page}: failed requests");
}

/// Saves a screenshot of what the browser shows as `target/ui-screenshots/<name>.png`.
async fn screenshot(browser: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Opens `path`, checks it loaded cleanly, and saves its screenshot.
async fn visit(browser: &Client, sidecar: &Sidecar, path: &str, name: &str) {
    browser
        .goto(&format!("{}{path}", sidecar.base))
        .await
        .unwrap();
    assert_clean(browser, path).await;
    screenshot(browser, name).await;
}

fn wait(browser: &Client) -> fantoccini::wait::Wait<'_> {
    browser.wait().at_most(PATIENCE)
}

async fn number(browser: &Client, script: &str) -> f64 {
    browser
        .execute(script, vec![])
        .await
        .unwrap()
        .as_f64()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_dashboard_lives_in_a_real_browser_and_its_buttons_act() {
    let Some(driver) = Driver::start() else {
        return;
    };
    // Arrange: completions are refused at first, so they dead-letter.
    let receiver = Receiver::answering(StatusCode::UNPROCESSABLE_ENTITY).await;
    let sidecar = Sidecar::start(&receiver).await;
    let browser = driver.browser().await;

    // A job triggered while the list is open appears in it without a reload.
    visit(&browser, &sidecar, "/ui/jobs", "jobs-empty").await;
    let napper = start_job(&sidecar, &receiver, "napper", json!({})).await;
    wait(&browser)
        .for_element(Locator::Css(&format!("a[href='/ui/jobs/{napper}']")))
        .await
        .expect("the new job in the list, live");

    // A running job's progress bar moves and its messages arrive while the agent runs.
    let ticker = start_job(
        &sidecar,
        &receiver,
        "ticker",
        json!({"count": 100, "interval": 0.05}),
    )
    .await;
    wait_state(&sidecar, &ticker, "in_progress").await;
    visit(
        &browser,
        &sidecar,
        &format!("/ui/jobs/{ticker}"),
        "job-running",
    )
    .await;
    wait(&browser)
        .for_element(Locator::Css("[data-live-log] li"))
        .await
        .expect("a progress message, live");
    let first = number(&browser, "return document.querySelector('progress').value;").await;
    let lines = number(
        &browser,
        "return document.querySelectorAll('[data-live-log] li').length;",
    )
    .await;
    wait(&browser)
        .for_element(Locator::Css(&format!(
            "[data-live-log] li:nth-child({})",
            lines as u64 + 2
        )))
        .await
        .expect("more messages");
    let later = number(&browser, "return document.querySelector('progress').value;").await;
    assert!(later > first, "the bar moved: {first} -> {later}");
    screenshot(&browser, "job-running").await;

    // Cancel from the page stops the agent.
    visit(&browser, &sidecar, &format!("/ui/jobs/{napper}"), "job").await;
    browser
        .find(Locator::Css(&format!(
            "form[action='/ui/jobs/{napper}/cancel'] button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_state(&sidecar, &napper, "canceled").await;
    wait(&browser)
        .for_element(Locator::Css(".notice"))
        .await
        .expect("the notice after the redirect");
    assert_clean(&browser, "after cancel").await;

    // The overview, charts and all.
    visit(&browser, &sidecar, "/ui", "overview").await;

    // Redrive from the deliveries page delivers to the real receiver.
    let dead = eventually("the canceled job's completion to be dead", || async {
        let job = job(&sidecar, &napper).await;
        (job["delivery"]["state"] == "dead").then(|| job["delivery"]["delivery_id"].clone())
    })
    .await;
    let dead = dead.as_str().unwrap().to_owned();
    receiver.set_completion_status(StatusCode::OK);
    visit(
        &browser,
        &sidecar,
        "/ui/deliveries?state=dead",
        "deliveries",
    )
    .await;
    browser
        .find(Locator::Css(&format!(
            "form[action='/ui/deliveries/{dead}/redrive'] button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the redriven delivery to be delivered", || async {
        let job = job(&sidecar, &napper).await;
        (job["delivery"]["state"] == "delivered").then_some(())
    })
    .await;
    assert!(
        receiver
            .hits("/completion")
            .iter()
            .any(|h| h.json()["job_id"] == napper.as_str()),
        "the receiver got the redriven completion"
    );
    assert_clean(&browser, "after redrive").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_viewer_session_in_a_real_browser_is_offered_no_buttons() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &crate::auth::auth_toml("")).await;
    let token = crate::auth::hs256(&crate::auth::claims(), crate::auth::INBOUND_SECRET);
    let browser = driver.browser().await;
    visit(&browser, &sidecar, "/ui/jobs", "login").await;
    assert!(
        browser.current_url().await.unwrap().path() == "/ui/login",
        "no session: the login page"
    );
    browser
        .find(Locator::Css("input[name='token']"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    browser
        .find(Locator::Css("form[action='/ui/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_path(&browser, "/ui").await;
    visit(&browser, &sidecar, "/ui/jobs", "jobs-viewer").await;
    let posts = browser
        .find_all(Locator::Css("form[method='post']"))
        .await
        .unwrap();
    assert!(posts.is_empty(), "a viewer is offered no action");
    browser.close().await.unwrap();
}

async fn wait_for_path(browser: &Client, path: &str) {
    let mut url = browser.current_url().await.unwrap();
    url.set_path(path);
    url.set_query(None);
    browser
        .wait()
        .at_most(PATIENCE)
        .for_url(&url)
        .await
        .expect("the redirect");
}
