//! `agent-sidecar contract verify-consumer`: sends the golden callbacks of
//! `contract-tests/fixtures/` to a Rails app, signed the way the sidecar signs them (and
//! deliberately wrong), and reports per case whether the app answered as the contract says
//! (seed 000: 401 on bad auth, 400 without `job_name`, 422 for an unknown one, 200 for a benign
//! duplicate).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::config::{CallbacksConfig, JwtConfig, Secret, StandardWebhooksConfig};
use crate::contract::{DeliveryId, JobId, JobName, JobState};
use crate::delivery::TransportError;
use crate::delivery::sign::{CallbackEvent, KeyError, Signer, TokenFor};
use crate::delivery::transport::http_client;

const PROGRESS: &str =
    include_str!("../../contract-tests/fixtures/v1/progress-callback/valid/staged.json");
const COMPLETION: &str =
    include_str!("../../contract-tests/fixtures/v1/completion-callback/valid/completed.json");

/// The `job_name` sent where the consumer must not know it.
const UNKNOWN_JOB_NAME: &str = "AgentSidecarContractCheck::NoSuchJob";

/// Where the consumer listens and which of its registered `job_name`s the golden callbacks use.
pub struct Target {
    /// The app's progress endpoint (`callback_urls.progress`).
    pub progress_url: Url,
    /// The app's completion endpoint (`callback_urls.completion`).
    pub completion_url: Url,
    /// A `job_name` the app's registry knows.
    pub job_name: JobName,
}

/// What the contract says the consumer must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any 2xx.
    Success,
    /// Exactly this status.
    Status(u16),
}

impl Expect {
    fn admits(self, status: u16) -> bool {
        match self {
            Self::Success => (200..300).contains(&status),
            Self::Status(s) => s == status,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => f.write_str("2xx"),
            Self::Status(s) => write!(f, "{s}"),
        }
    }
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Short name, e.g. `expired-token`.
    pub case: &'static str,
    /// What the case sends.
    pub sends: &'static str,
    /// What the contract requires.
    pub expected: Expect,
    /// The status the app answered, or why there was none.
    pub got: Result<u16, String>,
}

impl Outcome {
    /// Whether the app answered as the contract says.
    pub fn passed(&self) -> bool {
        self.got.as_ref().is_ok_and(|s| self.expected.admits(*s))
    }
}

/// How a case signs its request.
#[derive(Clone, Copy)]
enum Signing {
    Valid,
    None,
    BadSignature,
    Expired,
    WrongAudience,
    TamperedBody,
}

struct Case {
    name: &'static str,
    sends: &'static str,
    event: CallbackEvent,
    signing: Signing,
    job_name: JobNameIs,
    expected: Expect,
}

#[derive(Clone, Copy, PartialEq)]
enum JobNameIs {
    Registered,
    Missing,
    Unknown,
}

const fn case(
    name: &'static str,
    sends: &'static str,
    event: CallbackEvent,
    signing: Signing,
    job_name: JobNameIs,
    expected: Expect,
) -> Case {
    Case {
        name,
        sends,
        event,
        signing,
        job_name,
        expected,
    }
}

use CallbackEvent::{Completion, Progress};
use JobNameIs::{Missing, Registered, Unknown};

/// Every case, in the order they are sent (`duplicate-completion` repeats `valid-completion`).
const CASES: [Case; 11] = [
    case(
        "valid-progress",
        "a correctly signed progress callback",
        Progress,
        Signing::Valid,
        Registered,
        Expect::Success,
    ),
    case(
        "valid-completion",
        "a correctly signed completion",
        Completion,
        Signing::Valid,
        Registered,
        Expect::Success,
    ),
    case(
        "duplicate-completion",
        "the same completion again, same delivery id",
        Completion,
        Signing::Valid,
        Registered,
        Expect::Status(200),
    ),
    case(
        "missing-token",
        "a completion without Authorization",
        Completion,
        Signing::None,
        Registered,
        Expect::Status(401),
    ),
    case(
        "bad-signature",
        "a completion whose JWT signature is altered",
        Completion,
        Signing::BadSignature,
        Registered,
        Expect::Status(401),
    ),
    case(
        "expired-token",
        "a completion whose JWT expired an hour ago",
        Completion,
        Signing::Expired,
        Registered,
        Expect::Status(401),
    ),
    case(
        "wrong-audience",
        "a completion whose JWT is for another audience",
        Completion,
        Signing::WrongAudience,
        Registered,
        Expect::Status(401),
    ),
    case(
        "tampered-body",
        "a completion changed after signing (body_sha256 differs)",
        Completion,
        Signing::TamperedBody,
        Registered,
        Expect::Status(401),
    ),
    case(
        "progress-bad-signature",
        "a progress callback whose JWT signature is altered",
        Progress,
        Signing::BadSignature,
        Registered,
        Expect::Status(401),
    ),
    case(
        "missing-job-name",
        "a correctly signed completion without job_name",
        Completion,
        Signing::Valid,
        Missing,
        Expect::Status(400),
    ),
    case(
        "unknown-job-name",
        "a correctly signed completion for an unregistered job_name",
        Completion,
        Signing::Valid,
        Unknown,
        Expect::Status(422),
    ),
];

/// Signs and sends the golden callbacks.
pub struct Checker {
    signer: Signer,
    other_audience: Signer,
    ttl_secs: u64,
    client: reqwest::Client,
}

impl Checker {
    /// Signs with `jwt` and `webhooks` (as the sidecar would) and sends with `client`.
    pub fn new(
        jwt: &JwtConfig,
        webhooks: &StandardWebhooksConfig,
        client: reqwest::Client,
    ) -> Result<Self, KeyError> {
        let mut other = jwt.clone();
        other.audience = format!("not-{}", jwt.audience);
        Ok(Self {
            signer: Signer::load(jwt, webhooks)?,
            other_audience: Signer::load(&other, webhooks)?,
            ttl_secs: jwt.ttl.as_secs().max(1),
            client,
        })
    }

    /// Signs and sends with the sidecar's own callback settings and HTTP client (keys, mTLS,
    /// egress rules).
    pub fn from_callbacks(cfg: &CallbacksConfig) -> Result<Self, TransportError> {
        let client = http_client(cfg)?;
        Ok(Self::new(&cfg.jwt, &cfg.standard_webhooks, client)?)
    }

    /// Signs with an HS256 shared secret (and Standard Webhooks `whsec_` secrets, if any) and
    /// sends with a plain client: no redirects, 10 s per request.
    pub fn with_secret(
        secret: &str,
        issuer: &str,
        audience: &str,
        webhook_secrets: &[String],
    ) -> Result<Self, TransportError> {
        let jwt = JwtConfig {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            secret: Some(Secret::new(secret)),
            ttl: Duration::from_secs(300),
            keys: Vec::new(),
        };
        let webhooks = StandardWebhooksConfig {
            enabled: !webhook_secrets.is_empty(),
            secrets: webhook_secrets.iter().map(Secret::new).collect(),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .tls_backend_rustls()
            .build()?;
        Ok(Self::new(&jwt, &webhooks, client)?)
    }

    /// Runs every case against `target`, in order.
    pub async fn run(&self, target: &Target) -> Vec<Outcome> {
        let completed_job = JobId::generate();
        let completed_delivery = DeliveryId::generate();
        let mut outcomes = Vec::with_capacity(CASES.len());
        for c in &CASES {
            // The duplicate repeats the valid completion; every other case is a job of its own.
            let (job, delivery) = match c.name {
                "valid-completion" | "duplicate-completion" => {
                    (completed_job, completed_delivery.clone())
                }
                _ => (JobId::generate(), DeliveryId::generate()),
            };
            let got = self.send(c, target, job, &delivery).await;
            outcomes.push(Outcome {
                case: c.name,
                sends: c.sends,
                expected: c.expected,
                got,
            });
        }
        outcomes
    }

    async fn send(
        &self,
        c: &Case,
        target: &Target,
        job: JobId,
        delivery: &DeliveryId,
    ) -> Result<u16, String> {
        let now = jsonwebtoken::get_current_timestamp();
        let (url, mut body) = match c.event {
            Progress => (&target.progress_url, golden(PROGRESS)),
            Completion => (&target.completion_url, golden(COMPLETION)),
        };
        // Token, `sig` and body agree on the job_name, as the sidecar's always do.
        let unknown = JobName::from_str(UNKNOWN_JOB_NAME).map_err(|e| e.to_string())?;
        let job_name = if c.job_name == Unknown {
            &unknown
        } else {
            &target.job_name
        };
        self.fill(&mut body, c, job, job_name, now);
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let status = if c.event == Completion {
            JobState::Completed
        } else {
            JobState::InProgress
        };
        let token_for = TokenFor {
            event: c.event,
            job_id: job,
            job_name,
            status,
            jti: delivery.as_str(),
            body: &bytes,
        };
        let (token, sent) = self.sign(c.signing, &token_for, now);
        let mut request = self.client.post(url.clone());
        for (name, value) in self
            .signer
            .callback_headers(&token, delivery.as_str(), &sent, now)
        {
            if !(name == "authorization" && matches!(c.signing, Signing::None)) {
                request = request.header(name, value);
            }
        }
        let response = request.body(sent).send().await.map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }

    /// Gives the golden body this case's job, `job_name` and a fresh `sig`.
    fn fill(&self, body: &mut Value, c: &Case, job: JobId, job_name: &JobName, now: u64) {
        body["job_id"] = Value::String(job.to_string());
        if body.get("output_index").is_some() {
            body["output_index"]["job_id"] = Value::String(job.to_string());
        }
        if c.job_name == Missing {
            body.as_object_mut().map(|o| o.remove("job_name"));
        } else {
            body["job_name"] = Value::String(job_name.to_string());
        }
        if c.event == Completion {
            let user = body["user_id"].as_str().unwrap_or("42").to_owned();
            let sig = self
                .signer
                .payload_sig(job, job_name, JobState::Completed, &user, now);
            body["sig"] = Value::String(sig);
        }
    }

    /// The bearer token and the body actually sent.
    fn sign(&self, signing: Signing, t: &TokenFor<'_>, now: u64) -> (String, Vec<u8>) {
        let body = t.body.to_vec();
        match signing {
            Signing::Valid | Signing::None => (self.signer.callback_token(t, now), body),
            Signing::BadSignature => (altered(&self.signer.callback_token(t, now)), body),
            Signing::Expired => {
                let long_ago = now.saturating_sub(self.ttl_secs + 3600);
                (self.signer.callback_token(t, long_ago), body)
            }
            Signing::WrongAudience => (self.other_audience.callback_token(t, now), body),
            Signing::TamperedBody => {
                let token = self.signer.callback_token(t, now);
                let tampered =
                    String::from_utf8_lossy(&body).replacen("\"completed\"", "\"failed\"", 1);
                (token, tampered.into_bytes())
            }
        }
    }
}

fn golden(text: &str) -> Value {
    // The fixtures are part of the binary; a test below proves they parse.
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The token with one character of its signature changed.
fn altered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let at = chars.len().saturating_sub(5);
    if let Some(c) = chars.get_mut(at) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

/// The report: one line per case, then the count.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let got = match &o.got {
            Ok(status) => status.to_string(),
            Err(e) => format!("no answer ({e})"),
        };
        let verdict = if o.passed() { "PASS" } else { "FAIL" };
        out += &format!(
            "{verdict}  {:<24} expected {:<4} got {:<5} {}\n",
            o.case,
            o.expected.to_string(),
            got,
            o.sends
        );
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    out += &format!(
        "{passed} of {} cases answered as the contract says\n",
        outcomes.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_golden_callbacks_are_objects_with_a_job_name() {
        for text in [PROGRESS, COMPLETION] {
            assert!(golden(text)["job_name"].is_string());
        }
        assert!(JobName::from_str(UNKNOWN_JOB_NAME).is_ok());
    }

    #[test]
    fn an_altered_token_differs_only_in_its_signature() {
        let token = "aaa.bbb.cccccccccc";
        let altered = altered(token);
        assert_ne!(altered, token);
        assert!(altered.starts_with("aaa.bbb."));
    }
}
