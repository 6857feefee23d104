//! The job lifecycle as a closed enum, plus the timestamp type every payload uses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Where a job is in its life. Stored as TEXT (its `Display` form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Validated and about to be persisted; never observed outside the trigger transaction.
    Received,
    /// Durably stored and waiting for a free slot.
    Queued,
    /// Durably stored, not to start before its `run_at`: a trigger's `run_at` or `delay`, or
    /// an attempt waiting for its retry. It holds no slot; at `run_at` it becomes `queued`.
    Scheduled,
    /// The agent process is running.
    InProgress,
    /// The agent exited 0.
    Completed,
    /// The agent exited 0 and its summary says `"status": "partial"`.
    Partial,
    /// The agent exited non-zero, died on a signal, or could not be started.
    Failed,
    /// The job was canceled before it finished.
    Canceled,
    /// The agent ran past its timeout.
    TimedOut,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 9] = [
        Self::Received,
        Self::Queued,
        Self::Scheduled,
        Self::InProgress,
        Self::Completed,
        Self::Partial,
        Self::Failed,
        Self::Canceled,
        Self::TimedOut,
    ];

    /// Whether the job has ended; terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Partial | Self::Failed | Self::Canceled | Self::TimedOut
        )
    }

    /// The wire and storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::TimedOut => "timed_out",
        }
    }

    /// Whether a job that ended in `self` may be re-run as its next attempt (issue 21):
    /// `failed`, `timed_out` and `canceled` may; `completed` and `partial` only when forced.
    pub fn can_rerun(self, force: bool) -> bool {
        match self {
            Self::Failed | Self::TimedOut | Self::Canceled => true,
            Self::Completed | Self::Partial => force,
            Self::Received | Self::Queued | Self::Scheduled | Self::InProgress => false,
        }
    }

    /// Whether the lifecycle allows moving from `self` to `next`.
    pub fn can_become(self, next: JobState) -> bool {
        match self {
            Self::Received => matches!(next, Self::Queued | Self::Scheduled),
            Self::Queued => matches!(
                next,
                Self::InProgress | Self::Canceled | Self::TimedOut | Self::Failed
            ),
            // Due: promoted to the queue; or ended before it ran (canceled, no agent).
            Self::Scheduled => matches!(next, Self::Queued | Self::Canceled | Self::Failed),
            // Back to `queued` is a requeue after a crash; to `scheduled`, a retry's wait.
            Self::InProgress => {
                next.is_terminal() || matches!(next, Self::Queued | Self::Scheduled)
            }
            _ => false,
        }
    }
}

/// A state name that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct UnknownState(String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scheduling priority of a job; within a priority jobs start first in, first out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Starts before `normal` and `low`.
    High,
    /// The default.
    #[default]
    Normal,
    /// Starts after the others.
    Low,
}

impl Priority {
    /// Sort rank stored in the queue: lower starts first.
    pub fn rank(self) -> i64 {
        match self {
            Self::High => 0,
            Self::Normal => 1,
            Self::Low => 2,
        }
    }

    /// Where a job accepted at `at` stands in the queue (`schedule_key`): `at` plus its rank
    /// times `aging`, so a higher priority overtakes lower ones accepted up to `aging` before
    /// it, and none starves (ARCHITECTURE.md, *Priorities without starvation*).
    pub fn schedule_key(
        self,
        at: super::Timestamp,
        aging: std::time::Duration,
    ) -> super::Timestamp {
        at.plus(aging * u32::try_from(self.rank()).unwrap_or(0))
    }

    /// The inverse of [`Priority::rank`].
    pub fn from_rank(rank: i64) -> Self {
        match rank {
            0 => Self::High,
            2 => Self::Low,
            _ => Self::Normal,
        }
    }
}

/// A UTC instant with millisecond precision, written as RFC 3339 (`2026-11-24T07:40:01.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// From milliseconds since the Unix epoch (how the store keeps it).
    pub fn from_unix_ms(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0 - earlier.0).unwrap_or(0)
    }

    /// This instant shifted by a duration.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// This instant shifted back by a duration.
    pub fn minus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let text = self.to_datetime().format(&format).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl FromStr for Timestamp {
    type Err = time::error::Parse;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let dt = OffsetDateTime::parse(s, &Rfc3339)?;
        Ok(Self((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_storage_text() {
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>().unwrap(), st);
        }
        assert!("running".parse::<JobState>().is_err());
    }

    #[test]
    fn terminal_states_never_change_again() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn the_lifecycle_moves_forward_only() {
        for state in JobState::ALL {
            let ended_badly = matches!(
                state,
                JobState::Failed | JobState::TimedOut | JobState::Canceled
            );
            assert_eq!(state.can_rerun(false), ended_badly, "{state}");
            assert_eq!(state.can_rerun(true), state.is_terminal(), "{state} forced");
        }
        assert!(JobState::Received.can_become(JobState::Queued));
        assert!(JobState::Queued.can_become(JobState::InProgress));
        assert!(JobState::InProgress.can_become(JobState::Completed));
        assert!(JobState::InProgress.can_become(JobState::Queued));
        assert!(JobState::InProgress.can_become(JobState::Scheduled));
        assert!(JobState::Received.can_become(JobState::Scheduled));
        assert!(JobState::Scheduled.can_become(JobState::Queued));
        assert!(JobState::Scheduled.can_become(JobState::Canceled));
        assert!(!JobState::Scheduled.can_become(JobState::InProgress));
        assert!(!JobState::Queued.can_become(JobState::Scheduled));
        assert!(!JobState::Queued.can_become(JobState::Completed));
        assert!(!JobState::Received.can_become(JobState::InProgress));
    }

    #[test]
    fn timestamps_print_rfc3339_utc_with_millis_and_parse_back() {
        let t = Timestamp::from_unix_ms(1_795_000_000_123);
        let text = t.to_string();
        assert_eq!(text, "2026-11-18T11:06:40.123Z");
        assert_eq!(text.parse::<Timestamp>().unwrap(), t);
    }

    #[test]
    fn priority_ranks_round_trip() {
        for p in [Priority::High, Priority::Normal, Priority::Low] {
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
    }
}
