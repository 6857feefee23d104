//! Retrying an agent's attempt (pure, no IO): which outcomes `[agents.NAME.retry]` retries,
//! how many attempts a job gets for them, and the backoff before each retry (exponential with
//! full or equal jitter bounded by `max`, or an explicit list whose last delay repeats).
//!
//! The attempt number is the job's one counter (`AGENT_ATTEMPT`): every claim counts, after a
//! retry's wait as after a restart's requeue, so `attempts` and the restart budget
//! `max_attempts` bound the same number.

use std::collections::BTreeSet;
use std::time::Duration;

/// `[agents.NAME.retry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Runs of one job at most for retried outcomes (1: never retried).
    pub attempts: u32,
    /// Exit codes that are retried (e.g. 75, `EX_TEMPFAIL`).
    pub on_exit_codes: BTreeSet<i32>,
    /// Whether a run stopped past its `timeout` is retried.
    pub on_timeout: bool,
    /// Whether a run stopped for silence past its `stale_after` is retried.
    pub on_stale: bool,
    /// Whether a failed run whose final stdout line asks for a retry is retried (and waits
    /// the `after_s` it asks for, bounded by the backoff's largest delay).
    pub on_request: bool,
    /// The wait before each retry.
    pub backoff: Backoff,
}

/// The wait before retry number `k` (1 for the first).
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// `base × 2^(k-1)`, at most `max`, then jittered.
    Exponential {
        /// The first retry's delay before jitter.
        base: Duration,
        /// The largest delay before jitter.
        max: Duration,
        /// How the delay is spread.
        jitter: Jitter,
    },
    /// The `k`-th delay of the list; the last one repeats.
    List(Vec<Duration>),
}

/// How an exponential delay `d` is spread, so retries of many jobs failing together do not
/// arrive together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in `[0, d]` (AWS's "full jitter").
    #[default]
    Full,
    /// `d/2` plus uniform in `[0, d/2]`.
    Equal,
    /// Exactly `d`.
    None,
}

/// How an attempt ended, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The agent exited with this non-zero code.
    ExitCode(i32),
    /// The agent died on a signal.
    Signal,
    /// It ran past its timeout.
    Timeout,
    /// It printed nothing for longer than its `stale_after`.
    Stale,
}

/// The agent's own ask, its final stdout line `{"retry": {"after_s": 30, "reason": "..."}}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryAsk {
    /// How long to wait, if the agent said.
    pub after: Option<Duration>,
    /// Why, if the agent said.
    pub reason: Option<String>,
}

impl Default for RetryPolicy {
    /// Never retried: one attempt.
    fn default() -> Self {
        Self {
            attempts: 1,
            on_exit_codes: BTreeSet::new(),
            on_timeout: false,
            on_stale: false,
            on_request: true,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
                jitter: Jitter::Full,
            },
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt when `attempt` ended as `ended` (the agent's final
    /// line asking `ask`), or `None` when this end is final. `unit` is a uniform sample in
    /// `[0, 1)` for the jitter.
    pub fn next_delay(
        &self,
        attempt: u32,
        ended: Ended,
        ask: Option<&RetryAsk>,
        unit: f64,
    ) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let ask = ask.filter(|_| self.on_request);
        let retried = ask.is_some()
            || match ended {
                Ended::ExitCode(code) => self.on_exit_codes.contains(&code),
                Ended::Timeout => self.on_timeout,
                Ended::Stale => self.on_stale,
                Ended::Signal => false,
            };
        if !retried {
            return None;
        }
        Some(match ask.and_then(|a| a.after) {
            Some(after) => after.min(self.backoff.largest()),
            None => self.backoff.delay(attempt, unit),
        })
    }
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first); `unit` in `[0, 1)`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let unit = unit.clamp(0.0, 1.0);
        match self {
            Self::List(delays) => {
                let index = usize::try_from(retry.saturating_sub(1)).unwrap_or(usize::MAX);
                delays
                    .get(index)
                    .or(delays.last())
                    .copied()
                    .unwrap_or_default()
            }
            Self::Exponential { base, max, jitter } => {
                let doublings = retry.saturating_sub(1).min(32);
                let plain = base.saturating_mul(1u32 << doublings.min(31)).min(*max);
                match jitter {
                    Jitter::None => plain,
                    Jitter::Full => plain.mul_f64(unit),
                    Jitter::Equal => plain / 2 + (plain / 2).mul_f64(unit),
                }
            }
        }
    }

    /// The largest wait this backoff gives: the bound of an agent's own `after_s`.
    pub fn largest(&self) -> Duration {
        match self {
            Self::List(delays) => delays.iter().copied().max().unwrap_or_default(),
            Self::Exponential { max, .. } => *max,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn exponential(jitter: Jitter) -> Backoff {
        Backoff::Exponential {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn exponential_backoff_doubles_up_to_its_max() {
        let b = exponential(Jitter::None);
        let secs: Vec<u64> = (1..=7).map(|k| b.delay(k, 0.5).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn full_and_equal_jitter_stay_within_their_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for k in 1..=10 {
            let plain = exponential(Jitter::None).delay(k, 0.0);
            for _ in 0..100 {
                let unit: f64 = rng.r#gen();
                let full = exponential(Jitter::Full).delay(k, unit);
                assert!(full <= plain, "{full:?} > {plain:?}");
                let equal = exponential(Jitter::Equal).delay(k, unit);
                assert!(
                    equal >= plain / 2 && equal <= plain,
                    "{equal:?} vs {plain:?}"
                );
            }
        }
        // The sample spreads the delay: the two ends of the unit give the two ends of the range.
        assert_eq!(exponential(Jitter::Full).delay(3, 0.0), Duration::ZERO);
        assert_eq!(
            exponential(Jitter::Equal).delay(3, 1.0),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn a_list_backoff_repeats_its_last_delay() {
        let b = Backoff::List(vec![Duration::from_secs(5), Duration::from_secs(30)]);
        let secs: Vec<u64> = (1..=4).map(|k| b.delay(k, 0.9).as_secs()).collect();
        assert_eq!(secs, [5, 30, 30, 30]);
        assert_eq!(b.largest(), Duration::from_secs(30));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on_exit_codes: [75].into(),
            backoff: exponential(Jitter::None),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn only_the_chosen_outcomes_are_retried_while_attempts_remain() {
        let p = policy();
        assert_eq!(
            p.next_delay(1, Ended::ExitCode(75), None, 0.0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p.next_delay(2, Ended::ExitCode(75), None, 0.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(p.next_delay(3, Ended::ExitCode(75), None, 0.0), None);
        assert_eq!(p.next_delay(1, Ended::ExitCode(1), None, 0.0), None);
        assert_eq!(p.next_delay(1, Ended::Signal, None, 0.0), None);
        assert_eq!(p.next_delay(1, Ended::Timeout, None, 0.0), None);
        let timeouts = RetryPolicy {
            on_timeout: true,
            on_stale: true,
            ..policy()
        };
        assert!(timeouts.next_delay(1, Ended::Timeout, None, 0.0).is_some());
        assert!(timeouts.next_delay(1, Ended::Stale, None, 0.0).is_some());
        assert_eq!(
            RetryPolicy::default().next_delay(1, Ended::ExitCode(75), None, 0.0),
            None
        );
    }

    #[test]
    fn an_agents_ask_is_retried_and_its_wait_bounded_by_the_backoff() {
        let p = policy();
        let ask = |s: u64| RetryAsk {
            after: Some(Duration::from_secs(s)),
            reason: Some("429 from the model".into()),
        };
        assert_eq!(
            p.next_delay(1, Ended::ExitCode(1), Some(&ask(7)), 0.0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            p.next_delay(1, Ended::Signal, Some(&ask(3600)), 0.0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.next_delay(2, Ended::ExitCode(1), Some(&RetryAsk::default()), 0.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            p.next_delay(3, Ended::ExitCode(1), Some(&ask(1)), 0.0),
            None
        );
        let deaf = RetryPolicy {
            on_request: false,
            ..policy()
        };
        assert_eq!(
            deaf.next_delay(1, Ended::ExitCode(1), Some(&ask(1)), 0.0),
            None
        );
    }
}
