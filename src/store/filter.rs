//! Which jobs and deliveries a list shows: the filters as the API and CLI write them (query
//! strings, parsed field by field) and as the stores run them (conditions with `?` placeholders
//! that each dialect numbers its own way).

use url::Url;

use crate::contract::{
    AgentName, DeliveryId, DeliveryState, FieldError, JobId, JobName, JobState, Priority, Timestamp,
};

use super::JobRecord;

/// The longest `user_id` a filter takes (the trigger schema's limit).
const MAX_USER_ID: usize = 128;

/// Which jobs to list: every field narrows, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this agent.
    pub agent: Option<AgentName>,
    /// Only jobs with this Rails handler.
    pub job_name: Option<JobName>,
    /// Only jobs of this user.
    pub user_id: Option<String>,
    /// Only jobs of this priority.
    pub priority: Option<Priority>,
    /// Only jobs last claimed by this node.
    pub node: Option<String>,
    /// Only jobs accepted at or after this time.
    pub since: Option<Timestamp>,
    /// Only jobs accepted before this time.
    pub until: Option<Timestamp>,
    /// Only jobs whose id starts with this (lower-case hex and dashes).
    pub id_prefix: Option<String>,
    /// Only jobs after this one in the list's order (the previous page's last).
    pub after: Option<JobCursor>,
    /// At most this many.
    pub limit: usize,
}

/// Where a page of jobs ended: the last job's acceptance time and id, the list's sort key.
/// Written as `<unix ms>.<job id>`; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    created_at: Timestamp,
    job_id: JobId,
}

impl JobCursor {
    /// The cursor just past `job`.
    pub fn after(job: &JobRecord) -> Self {
        Self {
            created_at: job.created_at,
            job_id: job.job_id,
        }
    }
}

impl std::fmt::Display for JobCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at.unix_ms(), self.job_id)
    }
}

impl std::str::FromStr for JobCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a cursor from a previous page's `next_cursor`");
        let (ms, id) = text.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            created_at: Timestamp::from_unix_ms(ms.parse().map_err(|_| bad())?),
            job_id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// A job filter as written on a query string, parsed by [`JobQuery::into_filter`].
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// A job state, e.g. `in_progress`.
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// An agent name.
    #[param(value_type = Option<AgentName>)]
    pub agent: Option<String>,
    /// A Rails handler, e.g. `ReportCompileJob`.
    #[param(value_type = Option<JobName>)]
    pub job_name: Option<String>,
    /// A user id, as the trigger gave it.
    #[param(min_length = 1, max_length = 128)]
    pub user_id: Option<String>,
    /// `high`, `normal` or `low`.
    #[param(value_type = Option<Priority>)]
    pub priority: Option<String>,
    /// The node that last claimed the job (`store.node_id`).
    #[param(min_length = 1, max_length = 128)]
    pub node: Option<String>,
    /// Only jobs accepted at or after this RFC 3339 time.
    #[param(value_type = Option<Timestamp>)]
    pub since: Option<String>,
    /// Only jobs accepted before this RFC 3339 time.
    #[param(value_type = Option<Timestamp>)]
    pub until: Option<String>,
    /// The first characters of a job id.
    #[param(pattern = "^[0-9a-fA-F-]{1,36}$")]
    pub id_prefix: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(
        pattern = "^[0-9]{1,15}\\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub cursor: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Collects each field's parse failure under its name.
#[derive(Default)]
struct Fields(Vec<FieldError>);

impl Fields {
    fn parse<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        text: Option<String>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let text = text?;
        parse(&text)
            .map_err(|e| {
                self.0
                    .push(FieldError::new(format!("/{name}"), e.to_string()))
            })
            .ok()
    }

    fn time(&mut self, name: &str, text: Option<String>) -> Option<Timestamp> {
        self.parse(name, text, |t| {
            t.parse::<Timestamp>()
                .map_err(|_| format!("{t:?} is not an RFC 3339 time"))
        })
    }

    fn limit(&mut self, limit: Option<usize>) -> usize {
        let limit = limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            self.0
                .push(FieldError::new("/limit", "must be between 1 and 1000"));
        }
        limit
    }

    fn done<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

fn bounded(name: &'static str) -> impl Fn(&str) -> Result<String, String> {
    move |text| match text.chars().count() {
        1..=MAX_USER_ID => Ok(text.to_owned()),
        _ => Err(format!("{name} must be 1 to {MAX_USER_ID} characters")),
    }
}

fn id_prefix(text: &str) -> Result<String, String> {
    let ok =
        (1..=36).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "{text:?} is not the start of a job id (1 to 36 hex digits and dashes)"
        ))
    }
}

fn priority(text: &str) -> Result<Priority, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("{text:?} is not a priority (high, normal or low)"))
}

impl JobQuery {
    /// Parses every field; each failure names its field.
    pub fn into_filter(self) -> Result<JobFilter, Vec<FieldError>> {
        let mut f = Fields::default();
        let filter = JobFilter {
            state: f.parse("state", self.state, |s| s.parse::<JobState>()),
            agent: f.parse("agent", self.agent, |a| a.parse::<AgentName>()),
            job_name: f.parse("job_name", self.job_name, |n| n.parse::<JobName>()),
            user_id: f.parse("user_id", self.user_id, bounded("user_id")),
            priority: f.parse("priority", self.priority, priority),
            node: f.parse("node", self.node, bounded("node")),
            since: f.time("since", self.since),
            until: f.time("until", self.until),
            id_prefix: f.parse("id_prefix", self.id_prefix, id_prefix),
            after: f.parse("cursor", self.cursor, |c| c.parse::<JobCursor>()),
            limit: f.limit(self.limit),
        };
        f.done(filter)
    }
}

/// A value a condition compares a column with.
#[derive(Debug, Clone)]
pub(super) enum FilterValue {
    Text(String),
    Int(i64),
}

/// One `WHERE` term with `?` for each of its values, in order.
#[derive(Debug, Clone)]
pub(super) struct Condition {
    pub(super) sql: &'static str,
    pub(super) values: Vec<FilterValue>,
}

impl Condition {
    fn one(sql: &'static str, value: FilterValue) -> Self {
        Self {
            sql,
            values: vec![value],
        }
    }

    /// The terms joined with `AND`, the n-th `?` (counting from `first`) written as `mark(n)`,
    /// and the values in that order.
    pub(super) fn render(
        conditions: Vec<Condition>,
        first: usize,
        mark: impl Fn(usize) -> String,
    ) -> (String, Vec<FilterValue>) {
        let mut clauses = vec!["1 = 1".to_owned()];
        let mut values = Vec::new();
        for c in conditions {
            let mut parts = c.sql.split('?');
            let mut clause = parts.next().unwrap_or_default().to_owned();
            for (part, value) in parts.zip(c.values) {
                clause.push_str(&mark(first + values.len()));
                values.push(value);
                clause.push_str(part);
            }
            clauses.push(clause);
        }
        (clauses.join(" AND "), values)
    }
}

impl JobFilter {
    /// The filter's conditions on `jobs`.
    pub(super) fn conditions(&self) -> Vec<Condition> {
        use FilterValue::{Int, Text};
        let text = |v: Option<&str>| v.map(|t| Text(t.to_owned()));
        let terms = [
            ("state = ?", self.state.map(|s| Text(s.as_str().to_owned()))),
            (
                "agent_name = ?",
                text(self.agent.as_ref().map(AgentName::as_str)),
            ),
            (
                "job_name = ?",
                text(self.job_name.as_ref().map(JobName::as_str)),
            ),
            ("user_id = ?", text(self.user_id.as_deref())),
            ("priority = ?", self.priority.map(|p| Int(p.rank()))),
            ("node_id = ?", text(self.node.as_deref())),
            ("created_at >= ?", self.since.map(|t| Int(t.unix_ms()))),
            ("created_at < ?", self.until.map(|t| Int(t.unix_ms()))),
            // A prefix holds only hex digits and dashes: nothing for LIKE to escape.
            (
                "job_id LIKE ?",
                self.id_prefix.as_ref().map(|p| Text(format!("{p}%"))),
            ),
        ];
        let mut conditions: Vec<Condition> = terms
            .into_iter()
            .filter_map(|(sql, value)| Some(Condition::one(sql, value?)))
            .collect();
        if let Some(after) = self.after {
            conditions.push(Condition {
                // A row value, so the store seeks the `(created_at, job_id)` index to the
                // cursor instead of reading the pages before it.
                sql: "(created_at, job_id) < (?, ?)",
                values: vec![
                    Int(after.created_at.unix_ms()),
                    Text(after.job_id.to_string()),
                ],
            });
        }
        conditions
    }
}

/// Which deliveries to list or redrive.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this delivery.
    pub id: Option<DeliveryId>,
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// Only deliveries of jobs with this handler.
    pub job_name: Option<JobName>,
    /// Only deliveries to this origin (`scheme://host:port`).
    pub destination: Option<String>,
    /// Only deliveries whose last attempt got this HTTP status.
    pub status_code: Option<u16>,
    /// Only deliveries written at or after this time.
    pub since: Option<Timestamp>,
    /// Only deliveries written before this time.
    pub until: Option<Timestamp>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// A delivery filter as written on a query string or a command line, parsed by
/// [`DeliveryQuery::into_filter`].
#[derive(
    Debug, Clone, Default, serde::Serialize, serde::Deserialize, clap::Args, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// pending, delivered or dead.
    #[arg(long)]
    #[param(value_type = Option<DeliveryState>)]
    pub state: Option<String>,
    /// Only deliveries of jobs with this handler.
    #[arg(long)]
    #[param(value_type = Option<JobName>)]
    pub job_name: Option<String>,
    /// Only deliveries to this origin, e.g. `https://rails.internal:443`.
    #[arg(long)]
    #[param(format = Uri)]
    pub destination: Option<String>,
    /// Only deliveries whose last attempt got this HTTP status, e.g. `503`.
    #[arg(long)]
    #[param(minimum = 100, maximum = 599)]
    pub status_code: Option<u16>,
    /// Only deliveries written at or after this RFC 3339 time.
    #[arg(long)]
    #[param(value_type = Option<Timestamp>)]
    pub since: Option<String>,
    /// Only deliveries written before this RFC 3339 time.
    #[arg(long)]
    #[param(value_type = Option<Timestamp>)]
    pub until: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[arg(long)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

impl DeliveryQuery {
    /// Parses every field; each failure names its field.
    pub fn into_filter(self) -> Result<DeliveryFilter, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut parse = |name: &str, value: Option<String>| -> Option<Timestamp> {
            let text = value?;
            text.parse()
                .map_err(|_| {
                    errors.push(FieldError::new(
                        format!("/{name}"),
                        format!("{text:?} is not an RFC 3339 time"),
                    ))
                })
                .ok()
        };
        let since = parse("since", self.since);
        let until = parse("until", self.until);
        let state = self.state.and_then(|s| {
            s.parse()
                .map_err(|e: String| errors.push(FieldError::new("/state", e)))
                .ok()
        });
        let job_name = self.job_name.and_then(|n| {
            n.parse()
                .map_err(|e: crate::contract::IdError| {
                    errors.push(FieldError::new("/job_name", e.to_string()))
                })
                .ok()
        });
        let destination = self.destination.and_then(|d| match Url::parse(&d) {
            Ok(url) => Some(url.origin().ascii_serialization()),
            Err(e) => {
                errors.push(FieldError::new(
                    "/destination",
                    format!("{d:?} is not an origin: {e}"),
                ));
                None
            }
        });
        if let Some(code) = self.status_code.filter(|c| !(100..=599).contains(c)) {
            errors.push(FieldError::new(
                "/status_code",
                format!("{code} is not an HTTP status (100 to 599)"),
            ));
        }
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            errors.push(FieldError::new("/limit", "must be between 1 and 1000"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(DeliveryFilter {
            id: None,
            state,
            job_name,
            destination,
            status_code: self.status_code,
            since,
            until,
            limit,
        })
    }
}

impl DeliveryFilter {
    /// At most one delivery: `id`, or any (narrowed by job where it is used).
    pub(super) fn one(id: Option<DeliveryId>) -> Self {
        Self {
            id,
            limit: 1,
            ..Self::default()
        }
    }

    /// The filter's conditions (`d` is deliveries, `j` jobs); `job_id` narrows to one job.
    pub(super) fn conditions(&self, job_id: Option<JobId>) -> Vec<Condition> {
        use FilterValue::{Int, Text};
        let terms = [
            ("d.job_id = ?", job_id.map(|j| Text(j.to_string()))),
            (
                "d.delivery_id = ?",
                self.id.as_ref().map(|i| Text(i.as_str().to_owned())),
            ),
            (
                "d.state = ?",
                self.state.map(|s| Text(s.as_str().to_owned())),
            ),
            (
                "j.job_name = ?",
                self.job_name.as_ref().map(|n| Text(n.as_str().to_owned())),
            ),
            ("d.destination = ?", self.destination.clone().map(Text)),
            (
                "d.last_status_code = CAST(? AS BIGINT)",
                self.status_code.map(|c| Int(c.into())),
            ),
            ("d.created_at >= ?", self.since.map(|t| Int(t.unix_ms()))),
            ("d.created_at < ?", self.until.map(|t| Int(t.unix_ms()))),
        ];
        terms
            .into_iter()
            .filter_map(|(sql, value)| Some(Condition::one(sql, value?)))
            .collect()
    }
}
