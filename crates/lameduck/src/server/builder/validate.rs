//! The checks a configuration passes before anything is bound: limits in range, and the
//! whole stop within the grace budget.

use std::time::Duration;

use super::{Builder, GRACE_MARGIN, MIN_HEADER_BYTES};
use crate::hooks::HookPhase;
use crate::Error;

impl Builder {
    /// Refuse out-of-range settings, naming them. Long on purpose: independent checks of a
    /// few lines each, kept in one list so that every setting's bound is found in one place.
    pub(in crate::server) fn validate(&self) -> Result<(), Error> {
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::Config(format!(
                "max_header_bytes is {}, must be at least {MIN_HEADER_BYTES}",
                self.max_header_bytes
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        self.check_grace_budget()?;
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Config("the admin token is empty".into()));
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.contains(['\r', '\n']))
        {
            return Err(Error::Config(
                "the admin token contains a line break, which no Authorization header can carry"
                    .into(),
            ));
        }
        if let Some(path) = &self.pid_file {
            crate::server::pid_file::check("pid file", path)?;
        }
        if let Some(path) = &self.state_file {
            crate::server::pid_file::check("state file", path)?;
        }
        let mut names = std::collections::HashSet::new();
        if let Some(t) = self.tasks.iter().find(|t| !names.insert(t.name())) {
            return Err(Error::Config(format!(
                "two background tasks are named {:?}",
                t.name()
            )));
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.app_metrics {
            m.check_name().map_err(Error::Config)?;
            if !names.insert(m.name()) {
                return Err(Error::Config(format!(
                    "two metrics are named {:?}",
                    m.name()
                )));
            }
        }
        if self.admin_max_connections == 0 {
            return Err(Error::Config(
                "admin_max_connections must be at least 1".into(),
            ));
        }
        if self.listen_backlog == 0 {
            return Err(Error::Config("listen_backlog must be at least 1".into()));
        }
        for (name, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name} must be above zero")));
            }
        }
        Ok(())
    }

    /// The parts of a stop and their sum: drain delay, shutdown timeout, each hook.
    fn stop_parts(&self) -> (Vec<String>, Duration) {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut parts = vec![
            format!("drain delay {}", d(self.drain_delay)),
            format!("shutdown timeout {}", d(self.shutdown_timeout)),
        ];
        let mut total = self.drain_delay + self.shutdown_timeout;
        for (phase, name, timeout) in self.hooks.timeouts() {
            // Before-drain hooks run alongside the drain, within its time.
            if phase != HookPhase::BeforeDrain {
                parts.push(format!("hook {name} {}", d(timeout)));
                total += timeout;
            }
        }
        parts.push(format!("margin {}", d(GRACE_MARGIN)));
        (parts, total + GRACE_MARGIN)
    }

    fn check_grace_budget(&self) -> Result<(), Error> {
        let Some(budget) = self.grace_budget else {
            return Ok(());
        };
        let (parts, total) = self.stop_parts();
        if total <= budget {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the stop takes up to {} but the grace budget is {}: {}",
            humantime::format_duration(total),
            humantime::format_duration(budget),
            parts.join(" + ")
        )))
    }
}
