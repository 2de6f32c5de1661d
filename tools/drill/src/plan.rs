//! What a drill does, once the flags are checked (`args.rs`): the targets as request
//! templates, how requests travel, the load, the faults and where the report goes. The
//! load (`load.rs`, `open.rs`) and the report read it; it imports none of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;

use crate::faults::FaultPlan;

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// HTTP/1.1, one keep-alive connection per worker (a new one after `Connection: close`).
    KeepAlive,
    /// HTTP/1.1, a new connection for every request.
    ConnPerRequest,
    /// HTTP/2 with prior knowledge, one connection per worker.
    H2,
}

/// What to send; `{seq}` (the request's number), `{worker}` (the closed loop's worker, the
/// open loop's target index) and `{run}` in the path, header values and body are replaced
/// per request (for example a fresh `Idempotency-Key: {run}-{seq}`).
#[derive(Debug, Clone)]
pub struct Template {
    /// Where to connect.
    pub addr: SocketAddr,
    /// TLS, for an `https://` target.
    pub tls: Option<crate::tls::TlsTarget>,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(HeaderName, String)>,
    /// Body (empty for none).
    pub body: String,
    /// A per-run token for `{run}`.
    pub run: String,
}

impl Template {
    pub(crate) fn fill(&self, text: &str, worker: usize, seq: u64) -> String {
        if !text.contains('{') {
            return text.to_string();
        }
        text.replace("{seq}", &seq.to_string())
            .replace("{worker}", &worker.to_string())
            .replace("{run}", &self.run)
    }

    pub(crate) fn request(&self, mode: Mode, worker: usize, seq: u64) -> Request<Full<Bytes>> {
        let (head, body) = self.parts(mode, worker, seq);
        head.map(|()| Full::new(body))
    }

    /// The request head for `mode` and its body, filled for `worker` and `seq`.
    pub(crate) fn parts(&self, mode: Mode, worker: usize, seq: u64) -> (Request<()>, Bytes) {
        let path = self.fill(&self.path, worker, seq);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = match mode {
            Mode::H2 => format!("{scheme}://{}{}", self.authority, path),
            _ => path,
        };
        let mut req = Request::builder().method(self.method.clone()).uri(uri);
        if mode != Mode::H2 {
            req = req.header(http::header::HOST, &self.authority);
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(&self.fill(value, worker, seq)) {
                req = req.header(name, v);
            }
        }
        let body = Bytes::from(self.fill(&self.body, worker, seq));
        let head = req.body(()).unwrap_or_else(|_| Request::new(()));
        (head, body)
    }
}

/// What a drill does, checked: the load, the faults, the outputs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One template per target URL; worker `i` drives target `i mod n`.
    pub targets: Vec<Arc<Template>>,
    /// How requests travel.
    pub mode: Mode,
    /// Closed loop: workers (connections); open loop: connections opened at the start.
    pub concurrency: usize,
    /// Requests per second in all (an open loop), or `None` for a closed loop.
    pub rate: Option<u64>,
    /// Open loop: the most connections at once.
    pub max_connections: usize,
    /// How long the load runs (at most [`MAX_DURATION`](crate::MAX_DURATION)).
    pub duration: Duration,
    /// Most requests in all.
    pub requests: u64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The faults to apply, if any.
    pub faults: Option<FaultPlan>,
    /// Where the JSON report goes.
    pub json: Option<PathBuf>,
    /// Where the SVG chart goes.
    pub svg: Option<PathBuf>,
    /// Fail unless every request succeeded.
    pub expect_zero_errors: bool,
    /// No live progress line.
    pub quiet: bool,
    /// The target URLs as given, for the report.
    pub urls: Vec<String>,
}
