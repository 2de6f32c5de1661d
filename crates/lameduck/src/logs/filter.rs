//! The log filter: `RUST_LOG` when it is valid, else the binary's default, as one layer.
//!
//! ```
//! // `RUST_LOG=warn,lameduck=debug` keeps lameduck's debug lines and others' warnings;
//! // an invalid value is named in a warning and the default used instead.
//! use lameduck::logs::{self, LogFormat, LogOptions};
//! let logs = logs::init(LogOptions::new(LogFormat::Text, "info"));
//! # let _ = logs;
//! ```

/// A `RUST_LOG` value that was not used, and why.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rejected {
    pub(super) value: String,
    pub(super) error: String,
}

/// The filter directives to use: `rust_log` when it is set, not blank and valid, else
/// `default_filter` (with what was wrong with `rust_log`, to be logged).
pub(super) fn filter_directives(
    rust_log: Option<&std::ffi::OsStr>,
    default_filter: &str,
) -> (String, Option<Rejected>) {
    let Some(value) = rust_log else {
        return (default_filter.to_owned(), None);
    };
    let rejected = |error: String| Rejected {
        value: value.to_string_lossy().into_owned(),
        error,
    };
    match value.to_str() {
        Some(text) if text.trim().is_empty() => (default_filter.to_owned(), None),
        Some(text) => match tracing_subscriber::EnvFilter::builder().parse(text) {
            Ok(_) => (text.to_owned(), None),
            Err(e) => (default_filter.to_owned(), Some(rejected(e.to_string()))),
        },
        None => (
            default_filter.to_owned(),
            Some(rejected("not valid UTF-8".to_owned())),
        ),
    }
}

pub(super) type BoxedFilter =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The log filter for `directives`.
///
/// Directives that name only targets and levels (`info`, `warn,lameduck=debug`) become a
/// [`Targets`](tracing_subscriber::filter::Targets) filter, which decides once per
/// callsite and does no work per span; [`EnvFilter`](tracing_subscriber::EnvFilter) takes
/// the rest (span and field directives), and looks every span up on enter, exit and close
/// to support them: about 250 instructions per request span. Either is one layer (not an
/// optional layer each): every layer level adds its own work to each span operation.
pub(super) fn log_filter(directives: &str) -> BoxedFilter {
    use tracing_subscriber::Layer as _;
    match targets_only(directives) {
        Some(targets) => targets.boxed(),
        None => tracing_subscriber::EnvFilter::new(directives).boxed(),
    }
}

/// `directives` as a [`Targets`](tracing_subscriber::filter::Targets) filter, when each
/// one is a level, a target, or `target=level`: the forms on which both filters agree.
fn targets_only(directives: &str) -> Option<tracing_subscriber::filter::Targets> {
    let simple = directives.split(',').all(|d| {
        !d.is_empty()
            && d.split('=').count() <= 2
            && d.split('=').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
            })
    });
    if simple {
        directives.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn rust_log_is_used_when_valid_and_named_when_not() {
        use std::ffi::OsStr;
        assert_eq!(filter_directives(None, "info"), ("info".into(), None));
        assert_eq!(
            filter_directives(Some(OsStr::new("  ")), "info"),
            ("info".into(), None)
        );
        assert_eq!(
            filter_directives(Some(OsStr::new("warn,lameduck=debug")), "info"),
            ("warn,lameduck=debug".into(), None)
        );
        let (used, rejected) = filter_directives(Some(OsStr::new("lameduck=loud")), "info");
        assert_eq!(used, "info");
        let rejected = rejected.expect("an invalid level is reported");
        assert_eq!(rejected.value, "lameduck=loud");
        assert!(!rejected.error.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt as _;
            let (used, rejected) = filter_directives(Some(OsStr::from_bytes(b"\xff")), "warn");
            assert_eq!(used, "warn");
            assert_eq!(rejected.expect("reported").error, "not valid UTF-8");
        }
    }

    #[test]
    fn only_target_and_level_directives_skip_the_env_filter() {
        for simple in [
            "info",
            "warn,lameduck=debug",
            "lameduck",
            "OFF,my-app::db=TRACE",
        ] {
            assert!(targets_only(simple).is_some(), "{simple}");
        }
        for other in [
            "lameduck[request]=debug",
            "[{request_id}]=info",
            "lameduck[{x}]=info",
            "info,",
            " info",
            "a=b=c",
            "a=",
            "lameduck=loud",
        ] {
            assert!(targets_only(other).is_none(), "{other}");
        }
    }

    /// Which of a fixed set of events (targets by levels) `subscriber` lets through.
    fn passed(subscriber: impl tracing::Subscriber + Send + Sync) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt as _;
        let seen = Arc::new(Mutex::new(Vec::new()));
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = event.metadata();
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", m.target(), m.level()));
            }
        }
        let subscriber = subscriber.with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! all_levels {
                ($target:literal) => {
                    tracing::error!(target: $target, "e");
                    tracing::warn!(target: $target, "w");
                    tracing::info!(target: $target, "i");
                    tracing::debug!(target: $target, "d");
                    tracing::trace!(target: $target, "t");
                };
            }
            all_levels!("lameduck");
            all_levels!("lameduck::access");
            all_levels!("lameducks");
            all_levels!("my-app::db");
            all_levels!("other");
        });
        let seen = seen.lock().unwrap().clone();
        seen
    }

    #[test]
    fn targets_filter_lets_through_what_the_env_filter_would() {
        use tracing_subscriber::layer::SubscriberExt as _;
        for directives in [
            "info",
            "warn,lameduck=debug",
            "lameduck",
            "debug,lameduck::access=off",
            "OFF,my-app::db=TRACE",
            "error,lameduck=info,lameduck::access=trace",
        ] {
            let targets = targets_only(directives).expect("target and level directives");
            let env = tracing_subscriber::EnvFilter::new(directives);
            let with_targets = passed(tracing_subscriber::registry().with(targets));
            let with_env = passed(tracing_subscriber::registry().with(env));
            assert_eq!(with_targets, with_env, "{directives}");
            assert!(
                !with_env.is_empty() || directives.starts_with("OFF"),
                "{directives}"
            );
        }
    }
}
