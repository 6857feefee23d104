//! The commands that talk to a running sidecar's API (`jobs show|list|cancel|retry`,
//! `deliveries redrive|deliver`, `agents list|pause|resume`) and mint its
//! tokens (`token mint`). Where to call and as whom are independent: the address comes from
//! `--url` (or `AGENT_SIDECAR_URL`), else from `--config`; the token from `--token` (or
//! `AGENT_SIDECAR_TOKEN`), else minted for the call from `--config`'s `[server.auth] secret`.

use std::path::PathBuf;
use std::time::Duration;

use agent_sidecar::api::token::{self, Mint};
use agent_sidecar::config::Config;
use agent_sidecar::contract::{
    AgentList, AgentName, AgentStatus, DeliveryStatus, JobList, RedriveResult,
};
use agent_sidecar::store::DeliveryQuery;

/// How long a token minted for one CLI call lives.
const CALL_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Which running sidecar to talk to, and with which credentials.
#[derive(clap::Args)]
pub struct Target {
    /// Base URL of its API, e.g. http://127.0.0.1:8780 (wins over --config's address).
    #[arg(long, env = "AGENT_SIDECAR_URL")]
    url: Option<String>,
    /// Its config file: the API address, and a token minted from `[server.auth] secret` when
    /// no --token is given.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bearer token, when the API asks for one.
    #[arg(long, env = "AGENT_SIDECAR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `GET /jobs` filters, as the API names them.
#[derive(clap::Args)]
pub struct ListQuery {
    /// Only jobs in this state (queued, in_progress, completed, failed, timed_out, canceled).
    #[arg(long)]
    state: Option<String>,
    /// Only jobs of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Which agent `agents pause|resume` means: one by name, or every agent.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct WhichAgent {
    /// The agent.
    name: Option<String>,
    /// Every agent (the whole sidecar; in a fleet, every node).
    #[arg(long)]
    all: bool,
}

/// `agent-sidecar token mint`.
#[derive(clap::Args)]
pub struct MintArgs {
    /// The config whose `[server.auth] secret` signs the token.
    #[arg(long, short)]
    config: PathBuf,
    /// How long it is valid, e.g. 15m.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Its `sub` (who the sidecar's logs say called).
    #[arg(long, default_value = "ops")]
    subject: String,
    /// An agent it may trigger (repeatable); none for any.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Its role on the dashboard: viewer reads, operator also acts.
    #[arg(long, value_enum, default_value = "viewer")]
    role: agent_sidecar::api::auth::Role,
}

/// Prints a token for `args`.
pub fn mint(args: MintArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let agents = args
        .agents
        .iter()
        .map(|a| {
            a.parse::<AgentName>()
                .map_err(|e| anyhow::anyhow!("--agent {a:?}: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let request = Mint {
        subject: args.subject,
        ttl: args.ttl,
        agents,
        role: args.role,
    };
    println!("{}", token::mint(config.server.auth.as_ref(), &request)?);
    Ok(())
}

/// Prints the jobs `query` selects, newest first.
pub async fn list(target: &Target, query: &ListQuery) -> anyhow::Result<()> {
    let mut params = Vec::new();
    params.extend(query.state.as_ref().map(|s| ("state", s.clone())));
    params.extend(query.agent.as_ref().map(|a| ("agent", a.clone())));
    params.extend(query.limit.map(|l| ("limit", l.to_string())));
    let path = match params.is_empty() {
        true => "/jobs".to_owned(),
        false => format!("/jobs?{}", query_string(&params)),
    };
    let (_, body) = call(target, reqwest::Method::GET, &path).await?;
    let list: JobList = serde_json::from_value(body)?;
    for job in &list.jobs {
        if query.json {
            println!("{}", serde_json::to_string(job)?);
        } else {
            println!(
                "{}  {:<11}  {:<20}  {:<24}  attempt {}  created {}",
                job.job_id,
                job.state.to_string(),
                job.agent_name.to_string(),
                job.job_name.to_string(),
                job.attempt,
                job.created_at
            );
        }
    }
    Ok(())
}

/// `deliveries redrive`: one dead delivery (`id`), or every one `query` selects, back in the
/// running sidecar's outbox, sent at once.
pub async fn redrive(
    target: &Target,
    id: Option<&str>,
    query: &DeliveryQuery,
) -> anyhow::Result<()> {
    let path = match id {
        Some(id) => format!("/deliveries/{}/redrive", path_segment(id)),
        // The CLI's flags are the API's query: serialised as the API parses them.
        None => match serde_urlencoded::to_string(query)? {
            q if q.is_empty() => "/deliveries/redrive".to_owned(),
            q => format!("/deliveries/redrive?{q}"),
        },
    };
    let (_, body) = call(target, reqwest::Method::POST, &path).await?;
    let result: RedriveResult = serde_json::from_value(body)?;
    for id in &result.redriven {
        println!("redriven {id}");
    }
    println!(
        "{} delivery(ies) back in the outbox; the sidecar sends them now",
        result.redriven.len()
    );
    Ok(())
}

/// `deliveries deliver ID`: a pending delivery sent at once by the running sidecar.
pub async fn deliver(target: &Target, id: &str) -> anyhow::Result<()> {
    let path = format!("/deliveries/{}/deliver", path_segment(id));
    let (_, body) = call(target, reqwest::Method::POST, &path).await?;
    let delivery: DeliveryStatus = serde_json::from_value(body)?;
    println!(
        "delivery {} of job {} is due now ({} attempt(s) so far); the sidecar attempts it at once",
        delivery.delivery_id, delivery.job_id, delivery.attempts
    );
    Ok(())
}

/// `value` as one path segment (an id typed by hand cannot reach another endpoint).
fn path_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn query_string(params: &[(&str, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// Calls a running sidecar's API; a non-2xx answer becomes the problem's one-line `detail`.
pub async fn call(
    target: &Target,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    call_with(target, method, path, None).await
}

/// `jobs retry ID [--force]`: a job that ended re-run as its next attempt.
pub async fn retry(target: &Target, job_id: &str, force: bool) -> anyhow::Result<()> {
    let path = format!("/jobs/{}/retry", path_segment(job_id));
    let body = serde_json::json!({ "force": force });
    let (_, answer) = call_with(target, reqwest::Method::POST, &path, Some(&body)).await?;
    let accepted: agent_sidecar::contract::RetryAccepted = serde_json::from_value(answer)?;
    let aside = accepted.previous_output.map_or_else(String::new, |p| {
        format!("; the previous outputs are in {p}/")
    });
    println!(
        "job {} queued again as attempt {}{aside}",
        accepted.job_id, accepted.attempt
    );
    Ok(())
}

/// [`call`] with a JSON body.
pub async fn call_with(
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let config = target.config.as_deref().map(Config::load).transpose()?;
    let base = match (&target.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => config.public_url(config.server.listen),
        (None, None) => anyhow::bail!("give --url (or AGENT_SIDECAR_URL) or --config"),
    };
    let token = match (&target.token, &config) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(config)) => call_token(config)?,
        (None, None) => None,
    };
    agent_sidecar::install_crypto_provider();
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = &token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
    }
    let response = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the sidecar at {base}: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{}",
            body["detail"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned)
        );
    }
    Ok((status.as_u16(), body))
}

/// A token for one call from `config`'s secret; none when its API asks for none.
fn call_token(config: &Config) -> anyhow::Result<Option<String>> {
    let request = Mint {
        subject: "agent-sidecar cli".into(),
        ttl: CALL_TOKEN_TTL,
        agents: Vec::new(),
        role: agent_sidecar::api::auth::Role::Viewer,
    };
    match token::mint(config.server.auth.as_ref(), &request) {
        Ok(token) => Ok(Some(token)),
        Err(token::MintError::NoAuth) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{e}; give --token")),
    }
}

/// `agents list`: each agent's state, limits, queued and running jobs.
pub async fn agents(target: &Target, json: bool) -> anyhow::Result<()> {
    let (_, body) = call(target, reqwest::Method::GET, "/agents").await?;
    let list: AgentList = serde_json::from_value(body)?;
    if list.paused && !json {
        println!("every agent is paused (agents resume --all lifts it)");
    }
    for agent in &list.agents {
        if json {
            println!("{}", serde_json::to_string(agent)?);
        } else {
            println!("{}", agent_line(agent));
        }
    }
    Ok(())
}

fn agent_line(agent: &AgentStatus) -> String {
    let limits = &agent.limits;
    let per_key = limits
        .max_per_key
        .map_or_else(|| "-".to_owned(), |n| n.to_string());
    format!(
        "{:<24}  {:<6}  queued {:<5}  running {:<4}  max_concurrent {}  max_per_key {}  timeout {}s",
        agent.agent_name.to_string(),
        agent.state.as_str(),
        agent.queued,
        agent.running,
        limits.max_concurrent,
        per_key,
        limits.timeout_ms / 1000
    )
}

/// `agents pause|resume NAME` (or `--all`).
pub async fn pause(target: &Target, which: &WhichAgent, paused: bool) -> anyhow::Result<()> {
    let verb = if paused { "pause" } else { "resume" };
    match &which.name {
        Some(name) => {
            let path = format!("/agents/{}/{verb}", path_segment(name));
            let (_, body) = call(target, reqwest::Method::POST, &path).await?;
            let agent: AgentStatus = serde_json::from_value(body)?;
            println!("{}", agent_line(&agent));
        }
        None => {
            let path = format!("/agents/{verb}");
            let (_, body) = call(target, reqwest::Method::POST, &path).await?;
            let list: AgentList = serde_json::from_value(body)?;
            println!(
                "every agent {}",
                if list.paused {
                    "paused"
                } else {
                    "resumed (agents paused by name stay paused)"
                }
            );
        }
    }
    Ok(())
}
