//! Per-principal rate limits with GCRA, the generic cell rate algorithm: each principal has a
//! theoretical arrival time (TAT); a request at `now` is allowed when moving the TAT one
//! emission interval forward keeps it within `burst` intervals of `now`. One timestamp per
//! principal, no timers, exact `Retry-After`. State for principals that have been quiet long
//! enough to be back at full burst is dropped, so memory follows the active principals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Invalid;
use crate::model::Role;

/// A sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// As [`Rate::parse`] reads it: `N/s`, `N/m` or `N/h` (the largest unit that keeps N whole)
/// with `:BURST`.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = |count: f64| (count - count.round()).abs() < 1e-6;
        let (count, unit) = [(1.0, "s"), (60.0, "m")]
            .into_iter()
            .map(|(factor, unit)| (self.per_second * factor, unit))
            .find(|(count, _)| whole(*count))
            .unwrap_or((self.per_second * 3600.0, "h"));
        write!(f, "{}/{unit}:{}", count.round() as u64, self.burst)
    }
}

impl Rate {
    /// `N/s`, `N/m` or `N/h`, optionally `:BURST` (default: one second's worth, at least 1).
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let invalid = || Invalid::new("rate", format!("{text:?} is not N/s, N/m or N/h[:burst]"));
        let (rate, burst) = match text.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst.parse::<u32>().map_err(|_| invalid())?)),
            None => (text, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(invalid)?;
        let count: f64 = count.trim().parse().map_err(|_| invalid())?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        let per_second = count / seconds;
        if !per_second.is_finite() || per_second <= 0.0 || per_second > 1e6 {
            return Err(invalid());
        }
        let burst = burst.unwrap_or_else(|| (per_second.ceil() as u32).max(1));
        if burst == 0 {
            return Err(invalid());
        }
        Ok(Self { per_second, burst })
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }
}

/// Which rate applies to whom: the most generous rate among a principal's roles, else the
/// default.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub default: Rate,
    pub by_role: Vec<(Role, Rate)>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            default: Rate {
                per_second: 50.0,
                burst: 200,
            },
            by_role: Vec::new(),
        }
    }
}

impl RateLimits {
    pub fn for_roles(&self, roles: &[Role]) -> Rate {
        self.by_role
            .iter()
            .filter(|(role, _)| roles.contains(role))
            .map(|(_, rate)| *rate)
            .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
            .unwrap_or(self.default)
    }
}

/// How many principals' states are kept before quiet ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// The limiter: one theoretical arrival time per key.
#[derive(Debug, Default)]
pub struct RateLimiter {
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    /// Counts one request of `key` at `now`; `Err(retry_after)` when it is over its rate.
    pub fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let interval = rate.interval();
        let tolerance = interval * rate.burst;
        let mut arrivals = self.arrivals.lock().expect("rate limiter lock");
        let arrival = arrivals.get(key).copied().unwrap_or(now).max(now);
        let next = arrival + interval;
        if next > now + tolerance {
            return Err(next - (now + tolerance));
        }
        if arrivals.len() >= PRUNE_ABOVE {
            // A principal whose arrival time has passed is at full burst: the same as absent.
            arrivals.retain(|_, arrival| *arrival > now);
        }
        arrivals.insert(key.to_owned(), next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        let limit = rate(10.0, 5);
        for _ in 0..5 {
            assert!(limiter.check("alice", limit, start).is_ok());
        }
        let retry = limiter.check("alice", limit, start).unwrap_err();
        assert_eq!(retry, Duration::from_millis(100));
        // Another principal is untouched.
        assert!(limiter.check("bob", limit, start).is_ok());
        // After the retry time, exactly one more.
        assert!(limiter.check("alice", limit, start + retry).is_ok());
        assert!(limiter.check("alice", limit, start + retry).is_err());
        // Over a long quiet time the burst refills, but no further.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check("alice", limit, later).is_ok());
        }
        assert!(limiter.check("alice", limit, later).is_err());
    }

    #[test]
    fn the_sustained_rate_is_exact_over_time() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        let limit = rate(20.0, 1);
        let mut allowed = 0;
        // One attempt per millisecond for 10 seconds: 20/s → 200 (+1 for the first).
        for millisecond in 0..10_000u64 {
            if limiter
                .check("ci", limit, start + Duration::from_millis(millisecond))
                .is_ok()
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn quiet_principals_are_forgotten() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for index in 0..PRUNE_ABOVE + 10 {
            let key = format!("user-{index}");
            limiter
                .check(
                    &key,
                    rate(1000.0, 10),
                    start + Duration::from_secs(index as u64),
                )
                .unwrap();
        }
        assert!(limiter.arrivals.lock().unwrap().len() < 20);
    }

    #[test]
    fn rates_print_as_they_parse() {
        for text in ["10/s:10", "5/m:2", "7/h:1", "2/s:200"] {
            assert_eq!(Rate::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Rate::parse("120/m:30").unwrap().to_string(), "2/s:30");
        assert_eq!(Rate::parse("90/m").unwrap().to_string(), "90/m:2");
    }

    #[test]
    fn rates_parse_and_the_most_generous_role_wins() {
        assert_eq!(Rate::parse("10/s").unwrap(), rate(10.0, 10));
        assert_eq!(Rate::parse("120/m:30").unwrap(), rate(2.0, 30));
        assert_eq!(Rate::parse("1/h").unwrap().burst, 1);
        for bad in ["", "10", "10/x", "0/s", "-1/s", "10/s:0", "10/s:x", "nan/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
        let limits = RateLimits {
            default: rate(5.0, 5),
            by_role: vec![(Role::Ci, rate(2.0, 50)), (Role::Developer, rate(20.0, 40))],
        };
        assert_eq!(limits.for_roles(&[Role::Ci]), rate(2.0, 50));
        assert_eq!(
            limits.for_roles(&[Role::Ci, Role::Developer]),
            rate(20.0, 40)
        );
        assert_eq!(limits.for_roles(&[Role::Viewer]), rate(5.0, 5));
    }
}
