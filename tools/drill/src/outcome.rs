//! Strict outcome classes: every request ends in exactly one, and nothing is retried; and
//! the tally of a set of requests, with latencies in an HdrHistogram.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
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
    /// The TLS handshake failed (certificate refused, protocol error, connection cut).
    TlsHandshake,
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
            Outcome::TlsHandshake => "tls_handshake".into(),
        }
    }

    /// `true` for anything but [`Outcome::Ok`].
    pub fn is_error(self) -> bool {
        self != Outcome::Ok
    }
}

/// Significant digits of a whole drill's latencies (what the report gives).
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Significant digits of one timeline slot's latencies (a chart's points): a tenth of the
/// memory of three digits, which matters with one histogram per 100 ms of an hour-long drill.
pub const SLOT_SIGNIFICANT_DIGITS: u8 = 2;

/// Counts and latencies of a set of requests.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Requests per outcome.
    pub counts: BTreeMap<Outcome, u64>,
    /// Latencies of successes in microseconds; resizes itself to the largest recorded.
    latencies: Histogram<u32>,
    /// Latencies of every request, whatever its outcome, in microseconds.
    any: Histogram<u32>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new(SIGNIFICANT_DIGITS)
    }
}

impl Tally {
    /// An empty tally whose latency quantiles keep `digits` significant digits (1 to 5).
    pub fn new(digits: u8) -> Self {
        Self {
            counts: BTreeMap::new(),
            latencies: histogram(digits),
            any: histogram(digits),
        }
    }

    /// Record one request.
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        *self.counts.entry(outcome).or_default() += 1;
        if outcome == Outcome::Ok {
            record_micros(&mut self.latencies, latency);
        }
        record_micros(&mut self.any, latency);
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

    /// Latency of successful requests at quantile `q` (0..=1), to the tally's significant
    /// digits; `None` without successes.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }

    /// Latency of all requests, whatever their outcome, at quantile `q`; `None` without
    /// requests.
    pub fn quantile_any(&self, q: f64) -> Option<Duration> {
        quantile(&self.any, q)
    }
}

/// An empty histogram of microseconds keeping `digits` significant digits (clamped to 1..=5),
/// that resizes itself to the largest value recorded.
pub(crate) fn histogram(digits: u8) -> Histogram<u32> {
    // Only a precision outside 0..=5 fails to build: an invariant, not an input.
    Histogram::new(digits.clamp(1, 5)).expect("1 to 5 significant digits always build")
}

/// Record `d` in `h` in microseconds (at least 1); a count at its limit saturates.
pub(crate) fn record_micros(h: &mut Histogram<u32>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    if h.record(micros).is_err() {
        h.saturating_record(micros);
    }
}

/// The value of `h` at quantile `q` (0..=1) as a duration; `None` when `h` is empty.
pub(crate) fn quantile(h: &Histogram<u32>, q: f64) -> Option<Duration> {
    if h.is_empty() {
        return None;
    }
    Some(Duration::from_micros(
        h.value_at_quantile(q.clamp(0.0, 1.0)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_keep_three_significant_digits() {
        let mut t = Tally::default();
        for _ in 0..99 {
            t.record(Outcome::Ok, Duration::from_micros(5_000));
        }
        t.record(Outcome::Ok, Duration::from_millis(50));
        t.record(Outcome::Refused, Duration::ZERO);
        assert_eq!(t.total(), 101);
        assert_eq!(t.errors(), 1);
        // A 5 ms request is 5 ms at p50, p90 and p99, not a power-of-two bucket's bound.
        for q in [0.5, 0.9, 0.99] {
            let v = t.quantile(q).expect("successes").as_micros();
            assert!((4_995..=5_005).contains(&v), "q{q}: {v} µs");
        }
        let max = t.quantile(1.0).expect("successes").as_micros();
        assert!((49_950..=50_050).contains(&max), "{max}");
    }

    #[test]
    fn no_successes_no_quantile_but_every_outcome_has_a_latency() {
        let mut t = Tally::new(SLOT_SIGNIFICANT_DIGITS);
        t.record(Outcome::Timeout, Duration::from_secs(5));
        assert_eq!(t.quantile(0.5), None);
        let any = t.quantile_any(0.5).expect("a request").as_millis();
        assert!((4_950..=5_050).contains(&any), "{any}");
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(Outcome::Status(503).name(), "status_503");
        assert_eq!(Outcome::ResetReused.name(), "reset_reused");
    }
}
