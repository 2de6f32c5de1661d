//! Strict outcome classes: every request ends in exactly one, and nothing is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx response.
    Ok,
    /// A response outside 2xx, by status code.
    Status(u16),
    /// The connect was refused: the request was never sent (safe to send elsewhere).
    Refused,
    /// The connection was reset or closed before the response, on a fresh connection.
    ResetFresh,
    /// The same, on a connection that had already served a request (the keep-alive race).
    ResetReused,
    /// No complete response within the request timeout.
    Timeout,
}

impl Outcome {
    /// The class name used in tables and JSON.
    pub fn name(self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(code) => format!("status_{code}"),
            Outcome::Refused => "refused".into(),
            Outcome::ResetFresh => "reset_fresh".into(),
            Outcome::ResetReused => "reset_reused".into(),
            Outcome::Timeout => "timeout".into(),
        }
    }

    /// `true` for anything but [`Outcome::Ok`].
    pub fn is_error(self) -> bool {
        self != Outcome::Ok
    }
}

/// Latency histogram bounds in microseconds: powers of two from 64 µs to about 67 s.
const BUCKETS: usize = 21;

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_micros().max(1) as u64;
    ((64 - us.leading_zeros()) as usize)
        .saturating_sub(6)
        .min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> Duration {
    Duration::from_micros(64u64 << i)
}

/// Counts and latencies of a set of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests per outcome.
    pub counts: BTreeMap<Outcome, u64>,
    latencies: Vec<u64>,
}

impl Tally {
    /// Record one request.
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        *self.counts.entry(outcome).or_default() += 1;
        if outcome == Outcome::Ok {
            if self.latencies.is_empty() {
                self.latencies = vec![0; BUCKETS];
            }
            self.latencies[bucket_of(latency)] += 1;
        }
    }

    /// Add another tally.
    pub fn merge(&mut self, other: &Tally) {
        for (o, n) in &other.counts {
            *self.counts.entry(*o).or_default() += n;
        }
        if !other.latencies.is_empty() {
            if self.latencies.is_empty() {
                self.latencies = vec![0; BUCKETS];
            }
            for (a, b) in self.latencies.iter_mut().zip(&other.latencies) {
                *a += b;
            }
        }
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Requests that did not end [`Outcome::Ok`].
    pub fn errors(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(o, _)| o.is_error())
            .map(|(_, n)| n)
            .sum()
    }

    /// Latency of successful requests at quantile `q` (0..=1), as the upper bound of its
    /// histogram bucket; `None` without successes.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latencies.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.latencies.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_histogram() {
        let mut t = Tally::default();
        for _ in 0..99 {
            t.record(Outcome::Ok, Duration::from_micros(100));
        }
        t.record(Outcome::Ok, Duration::from_millis(50));
        t.record(Outcome::Refused, Duration::ZERO);
        assert_eq!(t.total(), 101);
        assert_eq!(t.errors(), 1);
        assert_eq!(t.quantile(0.5), Some(Duration::from_micros(128)));
        assert!(t.quantile(1.0).unwrap() >= Duration::from_millis(50));
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(Outcome::Status(503).name(), "status_503");
        assert_eq!(Outcome::ResetReused.name(), "reset_reused");
    }
}
