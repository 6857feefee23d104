//! When to try a completion callback again (pure, no IO), modelled on Svix and the Standard
//! Webhooks spec: a fixed schedule whose last delay repeats, ±20% jitter, `Retry-After`
//! honoured within [delay, 2 × delay], and at least 60 s after a 429 or a timeout.

use std::time::Duration;

/// Least wait after a 429 or a timeout: the receiver is overloaded.
pub const OVERLOAD_FLOOR: Duration = Duration::from_secs(60);

/// How an attempt failed, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused, reset, DNS...: retry on schedule.
    Transient,
    /// 429 or a timeout: retry, but not sooner than [`OVERLOAD_FLOOR`].
    Overloaded,
}

/// The delay before attempt number `attempts_made + 1`.
///
/// `jitter` is a sample in `[-1, 1]`, scaled to ±20% of the scheduled delay.
pub fn next_delay(
    schedule: &[Duration],
    attempts_made: u32,
    failure: Failure,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let index = usize::try_from(attempts_made).unwrap_or(usize::MAX);
    let scheduled = schedule
        .get(index)
        .or(schedule.last())
        .copied()
        .unwrap_or_default();
    let jittered = scheduled.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
    let mut delay = match retry_after {
        Some(asked) => asked.clamp(scheduled, scheduled * 2),
        None => jittered,
    };
    if failure == Failure::Overloaded {
        delay = delay.max(OVERLOAD_FLOOR);
    }
    delay
}

/// Whether an HTTP status is worth retrying (seed 003's list, plus 425).
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 401 | 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
            .iter()
            .map(|s| humantime::parse_duration(s).unwrap())
            .collect()
    }

    #[test]
    fn delays_follow_the_schedule_and_the_last_one_repeats() {
        let s = schedule();
        assert_eq!(
            next_delay(&s, 0, Failure::Transient, None, 0.0),
            Duration::ZERO
        );
        assert_eq!(
            next_delay(&s, 1, Failure::Transient, None, 0.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_delay(&s, 3, Failure::Transient, None, 0.0),
            Duration::from_secs(1800)
        );
        assert_eq!(
            next_delay(&s, 40, Failure::Transient, None, 0.0),
            Duration::from_secs(36_000)
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let s = schedule();
        assert_eq!(
            next_delay(&s, 1, Failure::Transient, None, 1.0),
            Duration::from_secs(6)
        );
        assert_eq!(
            next_delay(&s, 1, Failure::Transient, None, -1.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            next_delay(&s, 1, Failure::Transient, None, 7.0),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn retry_after_is_clamped_to_between_the_delay_and_twice_it() {
        let s = schedule();
        let five_min = Duration::from_secs(300);
        assert_eq!(
            next_delay(&s, 2, Failure::Transient, Some(Duration::from_secs(1)), 0.0),
            five_min
        );
        assert_eq!(
            next_delay(
                &s,
                2,
                Failure::Transient,
                Some(Duration::from_secs(3600)),
                0.0
            ),
            five_min * 2
        );
        assert_eq!(
            next_delay(
                &s,
                2,
                Failure::Transient,
                Some(Duration::from_secs(400)),
                0.0
            ),
            Duration::from_secs(400)
        );
    }

    #[test]
    fn overload_waits_at_least_a_minute() {
        let s = schedule();
        assert_eq!(
            next_delay(&s, 1, Failure::Overloaded, None, 0.0),
            OVERLOAD_FLOOR
        );
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(code), "{code}");
        }
        for code in [400, 403, 404, 410, 422, 301] {
            assert!(!is_retryable_status(code), "{code}");
        }
    }
}
