//! How many requests may be in flight at once: a fixed limit, or one that adapts to the
//! latency the service shows.
//!
//! The adaptive limit follows Netflix's concurrency-limits `Gradient2`: it compares a
//! long-term average of the request latency (the service without queueing, roughly) with
//! the latest latency (the service now). While they agree, the limit grows by a small
//! queue allowance; when latency climbs because requests queue for the CPU, a database or a
//! lock, the ratio falls below 1 and the limit shrinks with it (by half at most per step,
//! smoothed), so that requests past the service's capacity are refused at once (503
//! `overloaded`) instead of queueing until every client times out.
//!
//! ```text
//! gradient  = clamp(tolerance x long_rtt / short_rtt, 0.5, 1.0)
//! new       = limit x gradient + queue_size
//! limit     = clamp(limit x (1 - smoothing) + new x smoothing, min, max)
//! ```
//!
//! - `long_rtt` is an exponential average over `long_window` samples (a plain average over
//!   the first 10); when it is more than twice the latest latency (load has ended), it is
//!   cut by 10 % per sample so the limit recovers without waiting for the average.
//! - The limit does not grow while fewer than half of it are in flight: an idle service
//!   learns nothing about its capacity.
//!
//! ```
//! use std::time::Duration;
//! use lameduck::limit::{AdaptiveLimit, AdaptiveLimitConfig};
//!
//! let limit = AdaptiveLimit::new(AdaptiveLimitConfig::default());
//! assert_eq!(limit.current(), 20);
//! for _ in 0..200 {
//!     limit.sample(Duration::from_millis(5), limit.current()); // steady latency, busy
//! }
//! assert!(limit.current() > 100);
//! for _ in 0..50 {
//!     limit.sample(Duration::from_millis(50), limit.current()); // queueing: 10x slower
//! }
//! assert!(limit.current() < 60);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The adaptive limit's settings (defaults as Netflix's `Gradient2Limit`, with a higher
/// ceiling: an HTTP server often runs hundreds of cheap requests at once).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveLimitConfig {
    /// The limit before any sample (20).
    pub initial: usize,
    /// The lowest it goes (20).
    pub min: usize,
    /// The highest it goes (1,000).
    pub max: usize,
    /// How far the latency may rise over its long-term average before the limit shrinks
    /// (1.5: 50 %).
    pub tolerance: f64,
    /// The share of each new estimate taken (0.2).
    pub smoothing: f64,
    /// The long-term average's window, in samples (600).
    pub long_window: u32,
    /// Requests allowed to queue on top of the estimate: the limit's growth per step (4).
    pub queue_size: f64,
}

impl Default for AdaptiveLimitConfig {
    fn default() -> Self {
        Self {
            initial: 20,
            min: 20,
            max: 1000,
            tolerance: 1.5,
            smoothing: 0.2,
            long_window: 600,
            queue_size: 4.0,
        }
    }
}

#[derive(Debug)]
struct Estimate {
    limit: f64,
    /// The long-term average latency, in seconds, and the samples in it (up to the warm-up).
    long_rtt: f64,
    samples: u32,
}

#[derive(Debug)]
struct Shared {
    config: AdaptiveLimitConfig,
    estimate: Mutex<Estimate>,
    /// The limit now, read per request without the lock.
    current: AtomicUsize,
}

/// The adaptive limit (see the [module](self)); clones share it.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    shared: Arc<Shared>,
}

/// Samples averaged plainly before the exponential average takes over.
const WARM_UP: u32 = 10;

impl AdaptiveLimit {
    /// A limit at `config.initial` (kept within `min..=max`).
    pub fn new(config: AdaptiveLimitConfig) -> Self {
        let max = config.max.max(1);
        let min = config.min.clamp(1, max);
        let initial = config.initial.clamp(min, max);
        let config = AdaptiveLimitConfig { min, max, ..config };
        Self {
            shared: Arc::new(Shared {
                config,
                estimate: Mutex::new(Estimate {
                    limit: initial as f64,
                    long_rtt: 0.0,
                    samples: 0,
                }),
                current: AtomicUsize::new(initial),
            }),
        }
    }

    /// The limit now.
    pub fn current(&self) -> usize {
        self.shared.current.load(Ordering::Relaxed)
    }

    /// A request took `rtt`; `in_flight` were running when it started. Recomputes the limit.
    pub fn sample(&self, rtt: Duration, in_flight: usize) {
        let c = &self.shared.config;
        let short = rtt.as_secs_f64().max(1e-6);
        let mut e = crate::sync::lock(&self.shared.estimate);
        if e.samples < WARM_UP {
            e.samples += 1;
            e.long_rtt += (short - e.long_rtt) / f64::from(e.samples);
        } else {
            let factor = 2.0 / (f64::from(c.long_window.max(1)) + 1.0);
            e.long_rtt += (short - e.long_rtt) * factor;
        }
        if e.long_rtt / short > 2.0 {
            e.long_rtt *= 0.9;
        }
        if (in_flight as f64) < e.limit / 2.0 {
            return;
        }
        let gradient = (c.tolerance * e.long_rtt / short).clamp(0.5, 1.0);
        let estimate = e.limit * gradient + c.queue_size;
        let next = (e.limit * (1.0 - c.smoothing) + estimate * c.smoothing)
            .clamp(c.min as f64, c.max as f64);
        e.limit = next;
        drop(e);
        self.shared.current.store(next as usize, Ordering::Relaxed);
    }
}

/// Measures one admitted request for an [`AdaptiveLimit`]: its latency is sampled when
/// this is dropped (when its response body has been sent, or the client went away).
#[derive(Debug)]
pub(crate) struct LimitSample {
    pub(crate) limit: AdaptiveLimit,
    pub(crate) started: std::time::Instant,
    pub(crate) in_flight: usize,
}

impl Drop for LimitSample {
    fn drop(&mut self) {
        self.limit.sample(self.started.elapsed(), self.in_flight);
    }
}

/// How many requests may be in flight at once:
/// [`Builder::max_in_flight`](crate::server::Builder::max_in_flight)'s one setting. As a
/// flag or a TOML value (`FromStr`): a number of requests (at least 1), `adaptive` (an
/// [`AdaptiveLimit`] with the default [`AdaptiveLimitConfig`]) or `off`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum MaxInFlight {
    /// No limit (the default).
    #[default]
    Off,
    /// At most this many.
    Fixed(std::num::NonZeroUsize),
    /// A limit that follows the latency.
    Adaptive(AdaptiveLimitConfig),
}

impl MaxInFlight {
    /// The limit the server keeps for these settings.
    pub(crate) fn start(&self) -> InFlightLimit {
        match self {
            Self::Off => InFlightLimit::Off,
            Self::Fixed(n) => InFlightLimit::Fixed(n.get()),
            Self::Adaptive(config) => InFlightLimit::Adaptive(AdaptiveLimit::new(config.clone())),
        }
    }
}

impl std::str::FromStr for MaxInFlight {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => return Ok(Self::Off),
            "adaptive" => return Ok(Self::Adaptive(AdaptiveLimitConfig::default())),
            _ => {}
        }
        match s.parse::<usize>() {
            Ok(n) => std::num::NonZeroUsize::new(n)
                .map(Self::Fixed)
                .ok_or_else(|| "must be at least 1 (or adaptive, or off)".to_string()),
            Err(_) => Err(format!(
                "{s:?} is not a number of requests, adaptive or off"
            )),
        }
    }
}

/// `off`, the number, or `adaptive` (whatever its settings): what `FromStr` reads back.
impl std::fmt::Display for MaxInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Off => f.write_str("off"),
            Self::Adaptive(_) => f.write_str("adaptive"),
        }
    }
}

/// The server's in-flight limit.
#[derive(Debug, Clone, Default)]
pub(crate) enum InFlightLimit {
    /// None.
    #[default]
    Off,
    /// At most this many.
    Fixed(usize),
    /// Adapting to the latency.
    Adaptive(AdaptiveLimit),
}

impl InFlightLimit {
    /// The limit for a request arriving now.
    pub(crate) fn now(&self) -> usize {
        match self {
            InFlightLimit::Off => usize::MAX,
            InFlightLimit::Fixed(n) => *n,
            InFlightLimit::Adaptive(a) => a.current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_in_flight_reads_a_number_adaptive_or_off_and_writes_them_back() {
        for text in ["64", "off", "adaptive"] {
            let limit: MaxInFlight = text.parse().unwrap();
            assert_eq!(limit.to_string(), text);
        }
        assert!(
            matches!("adaptive".parse(), Ok(MaxInFlight::Adaptive(c)) if c == AdaptiveLimitConfig::default())
        );
        assert!("0"
            .parse::<MaxInFlight>()
            .unwrap_err()
            .contains("at least 1"));
        assert!("lots"
            .parse::<MaxInFlight>()
            .unwrap_err()
            .contains("\"lots\""));
        assert!(matches!(MaxInFlight::default().start(), InFlightLimit::Off));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn it_grows_under_steady_latency_and_shrinks_when_requests_queue() {
        let l = AdaptiveLimit::new(AdaptiveLimitConfig::default());
        // Steady latency, busy: +queue_size x smoothing (0.8) per sample, up to the ceiling.
        for _ in 0..1500 {
            l.sample(ms(2), l.current());
        }
        assert_eq!(l.current(), 1000, "steady: up to the ceiling");
        // Latency five times the baseline: at most half per step, smoothed.
        let mut seen = vec![l.current()];
        for _ in 0..20 {
            l.sample(ms(10), l.current());
            seen.push(l.current());
        }
        assert!(seen.windows(2).all(|w| w[1] <= w[0]), "{seen:?}");
        assert!(l.current() < 150, "{seen:?}");
        assert!(l.current() >= 20, "never under the floor: {seen:?}");
    }

    #[test]
    fn it_does_not_grow_while_idle_and_recovers_after_load() {
        let l = AdaptiveLimit::new(AdaptiveLimitConfig::default());
        for _ in 0..100 {
            l.sample(ms(1), 1);
        }
        assert_eq!(l.current(), 20, "an idle service learns nothing");
        for _ in 0..600 {
            l.sample(ms(40), l.current());
        }
        // Load is over: fast again. The long average is cut, so it grows again soon.
        let mut steps = 0;
        while l.current() < 200 && steps < 1000 {
            l.sample(ms(1), l.current());
            steps += 1;
        }
        assert!(l.current() >= 200, "did not recover: {}", l.current());
        assert!(steps < 400, "took {steps} samples");
    }

    #[test]
    fn bounds_are_kept_sane() {
        let l = AdaptiveLimit::new(AdaptiveLimitConfig {
            initial: 5000,
            min: 0,
            max: 50,
            ..AdaptiveLimitConfig::default()
        });
        assert_eq!(l.current(), 50);
        for _ in 0..100 {
            l.sample(ms(100), 50);
            l.sample(ms(1), 50);
        }
        assert!((1..=50).contains(&l.current()));
    }
}
