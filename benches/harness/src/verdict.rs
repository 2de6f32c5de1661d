//! Every benchmark's verdict, as code: each script writes its raw results as JSON
//! (`docs/data/<script>-<date>-<commit>.json`, a [`RawFile`]), and `ld-bench verdict FILE`
//! judges them here. A target is met ("yes") when every round meets it, not met ("no") when
//! none does, and "not established" when the rounds straddle its bound or the measurement
//! cannot judge it (a load the client could not offer, upgrades that did not all happen).
//! Every count in the sentences comes from the data.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::measure::{POOL, RSS_CONNS};

/// What a benchmark script wrote: which script, when, at which commit, with which flags,
/// and its raw results (one of the `*Data` types, by `script`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RawFile {
    /// `run`, `upgrades`, `overload`, `orders` or `tls`.
    pub(crate) script: String,
    /// UTC date, `YYYY-MM-DD`.
    pub(crate) date: String,
    /// The commit measured (`+dirty` when the checkout had changes outside `docs/`).
    pub(crate) commit: String,
    /// The command line that made it.
    pub(crate) command: String,
    /// The raw results.
    pub(crate) data: serde_json::Value,
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every round meets it.
    Met,
    /// No round meets it.
    NotMet,
    /// Some rounds do, some do not; or the measurement cannot judge it.
    NotEstablished,
}

impl Verdict {
    /// From every round's value and the bound.
    pub(crate) fn of(values: &[f64], ok: impl Fn(f64) -> bool) -> Self {
        Self::of_bools(&values.iter().map(|v| ok(*v)).collect::<Vec<_>>())
    }

    /// From every round's outcome: met when all are, not met when none (or no round) is.
    pub(crate) fn of_bools(oks: &[bool]) -> Self {
        match (oks.iter().all(|o| *o), oks.iter().any(|o| *o)) {
            (true, _) if !oks.is_empty() => Verdict::Met,
            (_, false) => Verdict::NotMet,
            _ => Verdict::NotEstablished,
        }
    }

    /// `yes`, `no` or `not established`.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::NotMet => "no",
            Verdict::NotEstablished => "not established",
        }
    }

    fn cell(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::NotMet => "**no**",
            Verdict::NotEstablished => "not established",
        }
    }
}

/// One target and how it fared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    /// What it says.
    pub(crate) name: String,
    /// What was measured, in words and numbers.
    pub(crate) measured: String,
    /// Met or not.
    pub(crate) verdict: Verdict,
}

/// The verdict of one file: each target, and sentences made from the data.
#[derive(Debug, Clone, Default)]
pub(crate) struct Judgement {
    pub(crate) targets: Vec<Target>,
    pub(crate) notes: Vec<String>,
}

impl Judgement {
    fn target(&mut self, name: impl Into<String>, measured: impl Into<String>, verdict: Verdict) {
        self.targets.push(Target {
            name: name.into(),
            measured: measured.into(),
            verdict,
        });
    }

    /// `true` when every target is met (and there is at least one).
    pub(crate) fn all_met(&self) -> bool {
        !self.targets.is_empty() && self.targets.iter().all(|t| t.verdict == Verdict::Met)
    }

    /// The targets as a markdown table, then the sentences.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::from("| target | measured | met |\n|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                t.name,
                t.measured,
                t.verdict.cell()
            );
        }
        for n in &self.notes {
            let _ = write!(out, "\n{n}\n");
        }
        out
    }
}

/// Judge `raw` by its script.
///
/// # Errors
/// An unknown script, or data that is not that script's shape.
pub(crate) fn judge(raw: &RawFile) -> Result<Judgement, String> {
    fn data<T: serde::de::DeserializeOwned>(raw: &RawFile) -> Result<T, String> {
        serde_json::from_value(raw.data.clone())
            .map_err(|e| format!("the data of a `{}` file: {e}", raw.script))
    }
    match raw.script.as_str() {
        "run" => Ok(run(&data(raw)?)),
        "upgrades" => Ok(upgrades(&data(raw)?)),
        "overload" => Ok(overload(&data(raw)?)),
        "orders" => Ok(orders(&data(raw)?)),
        "tls" => Ok(tls(&data(raw)?)),
        other => Err(format!(
            "unknown script {other:?} (run, upgrades, overload, orders, tls)"
        )),
    }
}

/// The median of `v`: the middle value, or the mean of the two middle values of an even
/// count; NaN for none.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// `median (min to max)` of `values`, each written by `fmt`.
pub(crate) fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{} ({} to {})", fmt(median(&v)), fmt(*lo), fmt(*hi)),
        _ => "-".into(),
    }
}

fn per_run(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
}

// --- benches/run ---------------------------------------------------------------------------

/// One server's measurements in `benches/run`, a value per run in run order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ServerRuns {
    pub(crate) name: String,
    /// Measured for everything (else throughput only).
    pub(crate) full: bool,
    pub(crate) idle_exit_ms: Vec<f64>,
    pub(crate) after_last_ms: Vec<f64>,
    pub(crate) ka_race_failed: Vec<f64>,
    pub(crate) idle_exit_1000_ms: Vec<f64>,
    pub(crate) rss_idle_mib: Vec<f64>,
    pub(crate) rss_loaded_mib: Vec<f64>,
    /// 2xx responses per second (wrk's non-2xx answers are not throughput).
    pub(crate) rps: Vec<f64>,
    pub(crate) p50_ms: Vec<f64>,
    pub(crate) p99_ms: Vec<f64>,
    /// Answers outside 2xx/3xx per run (wrk's count).
    #[serde(default)]
    pub(crate) non_2xx: Vec<f64>,
}

/// `benches/run`'s raw results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RunData {
    pub(crate) servers: Vec<ServerRuns>,
    /// Full observability against lameduck-demo: `1 - full / demo` per back-to-back pair.
    #[serde(default)]
    pub(crate) paired_costs: Vec<f64>,
}

/// The demo's name in `benches/run`.
pub(crate) const DEMO: &str = "lameduck-demo";
/// Its full-observability variant.
pub(crate) const FULL: &str = "lameduck-demo, full observability";
/// The demo with its JSON access log.
pub(crate) const DEMO_LOG: &str = "lameduck-demo + JSON access log";
/// Plain axum with tower-http's TraceLayer writing a JSON line per request.
pub(crate) const AXUM_LOG: &str = "plain axum + TraceLayer JSON line";
/// KiB per idle connection, from the RSS (MiB) with the idle connections and without.
pub(crate) fn per_conn_kib(rss_with: f64, rss_idle: f64) -> f64 {
    (rss_with - rss_idle) * 1024.0 / RSS_CONNS as f64
}

/// `benches/run`'s targets. Comparisons between servers are made within each interleaved
/// run; a target whose servers were not measured is left out.
fn run(d: &RunData) -> Judgement {
    let mut j = Judgement::default();
    let find = |n: &str| d.servers.iter().find(|s| s.name == n);
    let (hyper, demo) = (find("bare hyper"), find(DEMO));
    let ratio = |x: f64, y: f64| x / y;
    let times = |v: f64| format!("{v:.2}x");
    let two = |v: f64| format!("{v:.2}");
    let mut row =
        |name: &str, values: Vec<f64>, fmt: &dyn Fn(f64) -> String, ok: &dyn Fn(f64) -> bool| {
            j.target(name, spread(&values, fmt), Verdict::of(&values, ok));
        };
    if let (Some(h), Some(dm)) = (hyper, demo) {
        row(
            "lameduck-demo /ping throughput >= 0.90 of bare hyper",
            per_run(&dm.rps, &h.rps, ratio),
            &two,
            &|v| v >= 0.90,
        );
        row(
            "p99 at the same load <= 1.2x bare hyper's",
            per_run(&dm.p99_ms, &h.p99_ms, ratio),
            &times,
            &|v| v <= 1.2,
        );
        row(
            "idle SIGTERM-to-exit within 1 ms of bare hyper's",
            per_run(&dm.idle_exit_ms, &h.idle_exit_ms, |x, y| x - y),
            &|v| format!("{v:+.2} ms"),
            &|v| v <= 1.0,
        );
        row(
            "exit < 5 ms after the last in-flight response",
            dm.after_last_ms.clone(),
            &|v| format!("{v:.2} ms"),
            &|v| v < 5.0,
        );
        row(
            &format!("keep-alive race: 0 failed of {POOL}"),
            dm.ka_race_failed.clone(),
            &|v| format!("{v:.0}"),
            &|v| v == 0.0,
        );
        row(
            "RSS with 10,000 idle keep-alive connections < 64 MiB",
            dm.rss_loaded_mib.clone(),
            &|v| format!("{v:.1} MiB"),
            &|v| v < 64.0,
        );
    }
    if let (Some(a), Some(dm)) = (find("plain axum"), demo) {
        row(
            "lameduck-demo /ping throughput >= 0.90x plain axum",
            per_run(&dm.rps, &a.rps, ratio),
            &two,
            &|v| v >= 0.90,
        );
        row(
            "p99 at that load <= 1.2x plain axum's",
            per_run(&dm.p99_ms, &a.p99_ms, ratio),
            &times,
            &|v| v <= 1.2,
        );
        let per_conn = |s: &ServerRuns| per_run(&s.rss_loaded_mib, &s.rss_idle_mib, per_conn_kib);
        row(
            "memory per idle keep-alive connection <= plain axum's",
            per_run(&per_conn(dm), &per_conn(a), |x, y| x - y),
            &|v| format!("{v:+.1} KiB"),
            &|v| v <= 0.0,
        );
    }
    if let (Some(h), Some(dl)) = (hyper, find(DEMO_LOG)) {
        row(
            "with JSON access log to a file + metrics: >= 0.75 of bare hyper",
            per_run(&dl.rps, &h.rps, ratio),
            &two,
            &|v| v >= 0.75,
        );
    }
    if let (Some(dm), Some(full)) = (demo, find(FULL)) {
        let costs = if d.paired_costs.is_empty() {
            per_run(&full.rps, &dm.rps, |x, y| 1.0 - x / y)
        } else {
            d.paired_costs.clone()
        };
        row(
            "full observability (JSON access log to a file, metrics, request spans) costs <= 15% of /ping throughput (paired runs)",
            costs,
            &|v| format!("{:.1}%", v * 100.0),
            &|v| v <= 0.15,
        );
    }
    if let (Some(dl), Some(al)) = (find(DEMO_LOG), find(AXUM_LOG)) {
        row(
            "JSON access log: lameduck-demo ahead of plain axum + TraceLayer writing the same fields as one JSON line",
            per_run(&dl.rps, &al.rps, ratio),
            &times,
            &|v| v > 1.0,
        );
    }
    if let (Some(dm), Some(g)) = (demo, find("Go/Gin seed pattern")) {
        row(
            ">= 1.4x Gin, default stacks",
            per_run(&dm.rps, &g.rps, ratio),
            &times,
            &|v| v >= 1.4,
        );
    }
    if let (Some(dl), Some(gl)) = (find(DEMO_LOG), find("Go/Gin + access log")) {
        row(
            ">= 1.4x Gin, both logging each request to a file",
            per_run(&dl.rps, &gl.rps, ratio),
            &times,
            &|v| v >= 1.4,
        );
    }
    let refused: Vec<String> = d
        .servers
        .iter()
        .filter(|s| s.non_2xx.iter().any(|n| *n > 0.0))
        .map(|s| format!("{} ({:.0})", s.name, s.non_2xx.iter().sum::<f64>()))
        .collect();
    j.target(
        "every /ping answer 2xx (a non-2xx answer is not throughput)",
        if refused.is_empty() {
            "no non-2xx answer".to_string()
        } else {
            format!("non-2xx answers: {}", refused.join(", "))
        },
        if refused.is_empty() {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
    );
    j
}

// --- benches/upgrades ------------------------------------------------------------------------

/// One drill of `benches/upgrades`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct UpgradeDrill {
    /// The row's label.
    pub(crate) name: String,
    /// `sighup` (lameduck's upgrade) or `naive` (SIGTERM, then start again).
    pub(crate) kind: String,
    /// The drill's connection mode.
    pub(crate) mode: String,
    /// The open loop's rate (requests per second).
    pub(crate) rate: f64,
    /// Faults the drill applied, and how many of them succeeded (the signal delivered, the
    /// command exited 0).
    pub(crate) faults_sent: u32,
    pub(crate) faults_ok: u32,
    /// Upgrades that completed: a new pid served and the old process exited 0 (sighup).
    #[serde(default)]
    pub(crate) completed: u32,
    /// Upgrades rolled back or refused (sighup).
    #[serde(default)]
    pub(crate) rollbacks: u32,
    /// The drill's report: requests, failed, by class, unsent, saturation, send lag.
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) outcomes: BTreeMap<String, u64>,
    pub(crate) unsent: u64,
    pub(crate) client_saturated: bool,
    #[serde(default)]
    pub(crate) send_lag_p99_ms: f64,
    /// Median per-slot p99 away from the faults, and the worst within 300 ms of one (ms).
    #[serde(default)]
    pub(crate) p99_steady_ms: f64,
    #[serde(default)]
    pub(crate) p99_worst_near_fault_ms: f64,
}

/// `benches/upgrades`' raw results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct UpgradesData {
    /// Upgrades asked for in each lameduck drill.
    pub(crate) upgrades: u32,
    pub(crate) drills: Vec<UpgradeDrill>,
}

fn upgrades(d: &UpgradesData) -> Judgement {
    let mut j = Judgement::default();
    let n = d.upgrades;
    for dr in d.drills.iter().filter(|x| x.kind == "sighup") {
        let all_done =
            dr.completed == n && dr.faults_sent == n && dr.faults_ok == n && dr.rollbacks == 0;
        j.target(
            format!(
                "{}: {n} of {n} SIGHUP upgrades completed (a new pid served, the old one exited 0)",
                dr.mode
            ),
            format!(
                "{} faults sent ({} ok), {} completed, {} rolled back",
                dr.faults_sent, dr.faults_ok, dr.completed, dr.rollbacks
            ),
            if all_done {
                Verdict::Met
            } else {
                Verdict::NotMet
            },
        );
        let offered = !dr.client_saturated && dr.unsent == 0;
        let verdict = if !all_done || !offered {
            Verdict::NotEstablished
        } else if dr.errors == 0 {
            Verdict::Met
        } else {
            Verdict::NotMet
        };
        let mut measured = format!(
            "{} failed of {} requests at {:.0} req/s",
            dr.errors, dr.requests, dr.rate
        );
        if !offered {
            let _ = write!(
                measured,
                "; the load was not offered ({} unsent{})",
                dr.unsent,
                if dr.client_saturated {
                    ", client saturated"
                } else {
                    ""
                }
            );
        }
        if !all_done {
            let _ = write!(measured, "; {} of {n} upgrades completed", dr.completed);
        }
        j.target(
            format!("{}: zero failed requests across the {n} upgrades", dr.mode),
            measured,
            verdict,
        );
    }
    for dr in &d.drills {
        let failed: Vec<String> = dr
            .outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "ok")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let sentence = if dr.kind == "sighup" {
            format!(
                "{}: {} faults sent, {} upgrades completed, {} rolled back; {} requests, {} failed{}.",
                dr.name,
                dr.faults_sent,
                dr.completed,
                dr.rollbacks,
                dr.requests,
                dr.errors,
                if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) }
            )
        } else {
            format!(
                "{}: {} restarts ({} ok); {} requests, {} failed{}.",
                dr.name,
                dr.faults_sent,
                dr.faults_ok,
                dr.requests,
                dr.errors,
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failed.join(", "))
                }
            )
        };
        j.notes.push(sentence);
    }
    j
}

// --- benches/overload ------------------------------------------------------------------------

/// A load's result in `benches/overload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OverloadLoad {
    /// `sustainable`, `sustainable again`, or the in-flight limit of a 2x row (`off`, `8`,
    /// `adaptive`).
    pub(crate) variant: String,
    /// Open loop: requests per second asked for (0 for the closed loop).
    #[serde(default)]
    pub(crate) offered_rate: f64,
    pub(crate) sent_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) goodput: f64,
    /// 503 `overloaded` answers per second.
    pub(crate) shed_rate: f64,
    /// Failures other than the 503s.
    pub(crate) other_failures: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    #[serde(default)]
    pub(crate) client_saturated: bool,
    #[serde(default)]
    pub(crate) unsent: u64,
    #[serde(default)]
    pub(crate) send_lag_p99_ms: f64,
    /// Requests per outcome class (runs before this field was recorded have none).
    #[serde(default)]
    pub(crate) outcomes: BTreeMap<String, u64>,
}

/// One round of `benches/overload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OverloadRound {
    pub(crate) round: u32,
    pub(crate) loads: Vec<OverloadLoad>,
}

/// `benches/overload`'s raw results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OverloadData {
    pub(crate) rounds: Vec<OverloadRound>,
}

/// The least ratio of sent rate to the sustainable rate for a "2x" row to count as twice
/// the sustainable rate.
pub(crate) const OVERLOAD_MIN_OFFERED: f64 = 1.9;

fn overload(d: &OverloadData) -> Judgement {
    let mut j = Judgement::default();
    // Each round's reference: the mean of the sustainable rate before and after its
    // variants (the before alone when there is no after).
    let reference = |r: &OverloadRound| {
        let get = |v: &str| r.loads.iter().find(|l| l.variant == v);
        let before = get("sustainable")?;
        // The third: the rate before, of which the 2x rows were asked twice.
        Some(match get("sustainable again") {
            Some(a) => (
                (before.goodput + a.goodput) / 2.0,
                (before.p99_ms + a.p99_ms) / 2.0,
                before.goodput,
            ),
            None => (before.goodput, before.p99_ms, before.goodput),
        })
    };
    let mut variants: Vec<String> = Vec::new();
    for r in &d.rounds {
        for l in &r.loads {
            if !l.variant.starts_with("sustainable") && !variants.contains(&l.variant) {
                variants.push(l.variant.clone());
            }
        }
    }
    for v in variants {
        let mut offered = Vec::new();
        let mut delivered = Vec::new();
        let mut shares = Vec::new();
        let mut p99x = Vec::new();
        let mut others = 0u64;
        let mut classes: BTreeMap<String, u64> = BTreeMap::new();
        for r in &d.rounds {
            let (Some((good, p99, asked_of)), Some(l)) =
                (reference(r), r.loads.iter().find(|l| l.variant == v))
            else {
                continue;
            };
            let sent = l.sent_rate / asked_of;
            offered.push(sent);
            delivered.push(sent >= OVERLOAD_MIN_OFFERED && !l.client_saturated && l.unsent == 0);
            shares.push(l.goodput / good);
            p99x.push(l.p99_ms / p99);
            others += l.other_failures;
            for (class, n) in &l.outcomes {
                if class != "ok" && class != "status_503" {
                    *classes.entry(class.clone()).or_default() += n;
                }
            }
        }
        let label = format!("2x, --max-in-flight {v}");
        let offered_verdict = Verdict::of_bools(&delivered);
        j.target(
            format!("{label}: offered at least {OVERLOAD_MIN_OFFERED}x the sustainable rate, client not saturated"),
            format!("sent {} of the sustainable rate measured before it", spread(&offered, |x| format!("{x:.2}x"))),
            offered_verdict,
        );
        // The other targets judge a load only if it was offered in every round.
        let gate = |v: Verdict| {
            if offered_verdict == Verdict::Met {
                v
            } else {
                Verdict::NotEstablished
            }
        };
        j.target(
            format!("{label}: goodput >= 0.90 of sustainable"),
            spread(&shares, |x| format!("{x:.2}")),
            gate(Verdict::of(&shares, |x| x >= 0.90)),
        );
        j.target(
            format!("{label}: admitted p99 <= 3x sustainable p99"),
            spread(&p99x, |x| format!("{x:.1}x")),
            gate(Verdict::of(&p99x, |x| x <= 3.0)),
        );
        j.target(
            format!("{label}: no failure but the 503s"),
            if classes.is_empty() {
                format!("{others} other failures")
            } else {
                let by: Vec<String> = classes.iter().map(|(c, n)| format!("{n} {c}")).collect();
                format!("{others} other failures ({})", by.join(", "))
            },
            gate(if others == 0 {
                Verdict::Met
            } else {
                Verdict::NotMet
            }),
        );
    }
    j.notes.push(format!(
        "{} rounds; a 2x row counts only when the drill sent at least {OVERLOAD_MIN_OFFERED}x the round's sustainable rate without saturating (otherwise its other targets are not established).",
        d.rounds.len()
    ));
    j
}

// --- benches/orders --------------------------------------------------------------------------

/// One load of `benches/orders`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OrdersRow {
    pub(crate) variant: String,
    pub(crate) round: u32,
    /// 2xx (for the fsync probe: syncs) per second.
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Non-2xx answers and socket errors.
    pub(crate) errors: u64,
    /// Share of the CPU time the hypervisor stole meanwhile (%).
    #[serde(default)]
    pub(crate) steal: f64,
}

/// `benches/orders`' raw results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OrdersData {
    pub(crate) rows: Vec<OrdersRow>,
}

fn orders(d: &OrdersData) -> Judgement {
    let mut j = Judgement::default();
    let find = |prefix: &str, before: bool| {
        d.rows
            .iter()
            .map(|r| r.variant.as_str())
            .find(|v| v.starts_with(prefix) && v.ends_with("(before)") == before)
            .map(str::to_string)
    };
    let rounds = |v: &str| -> BTreeMap<u32, &OrdersRow> {
        d.rows
            .iter()
            .filter(|r| r.variant == v)
            .map(|r| (r.round, r))
            .collect()
    };
    if let Some(w32) = find("POST, SQLite, 32 clients, writer", false) {
        let rs: Vec<&OrdersRow> = rounds(&w32).into_values().collect();
        let rps: Vec<f64> = rs.iter().map(|r| r.rps).collect();
        let p99: Vec<f64> = rs.iter().map(|r| r.p99_ms).collect();
        j.target(
            "SQLite, 32 clients: at least 8,000 req/s",
            spread(&rps, |v| format!("{v:.0}")),
            Verdict::of(&rps, |v| v >= 8000.0),
        );
        j.target(
            "SQLite, 32 clients: p99 at most 15 ms",
            spread(&p99, |v| format!("{v:.2} ms")),
            Verdict::of(&p99, |v| v <= 15.0),
        );
    }
    if let (Some(w1), Some(b1)) = (
        find("POST, SQLite, 1 client, writer", false),
        find("POST, SQLite, 1 client, ", true),
    ) {
        let (w, b) = (rounds(&w1), rounds(&b1));
        let pairs: Vec<(f64, f64)> = w
            .iter()
            .filter_map(|(k, x)| Some((x.p50_ms, b.get(k)?.p50_ms)))
            .collect();
        let diffs: Vec<f64> = pairs.iter().map(|(a, b)| a - b).collect();
        j.target(
            "SQLite, 1 client: p50 no worse than before (same round)",
            format!(
                "writer minus before: {}",
                spread(&diffs, |v| format!("{v:+.2} ms"))
            ),
            Verdict::of(&diffs, |v| v <= 0.0),
        );
    }
    if let (Some(pw), Some(pb)) = (
        find("POST, PostgreSQL, 32 clients, writer", false),
        find("POST, PostgreSQL, 32 clients, ", true),
    ) {
        let (w, b) = (rounds(&pw), rounds(&pb));
        let ratios: Vec<f64> = w
            .iter()
            .filter_map(|(k, x)| Some(x.rps / b.get(k)?.rps))
            .collect();
        j.target(
            "PostgreSQL, 32 clients: at least 2x before's req/s (same round)",
            spread(&ratios, |v| format!("{v:.1}x")),
            Verdict::of(&ratios, |v| v >= 2.0),
        );
    }
    let errors: u64 = d.rows.iter().map(|r| r.errors).sum();
    j.target(
        "no failed request (non-2xx or socket error) in any load",
        format!("{errors} failed"),
        if errors == 0 {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
    );
    let n = d.rows.iter().map(|r| r.round).max().unwrap_or(0);
    j.notes.push(format!("{n} rounds, {} loads.", d.rows.len()));
    j
}

// --- benches/tls -----------------------------------------------------------------------------

/// One load of `benches/tls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TlsRow {
    pub(crate) load: String,
    pub(crate) round: u32,
    /// 2xx per second (or new TLS connections, each carrying one request).
    pub(crate) rate: f64,
    /// Median latency (absent from results older than the attack rows).
    #[serde(default)]
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
}

/// The loads run while connections hold the server without finishing a handshake: their
/// names start with this.
pub(crate) const UNDER_ATTACK: &str = "handshakes under ";

/// Longest p99 handshake (a new connection and one request) under attack.
const ATTACKED_P99_MS: f64 = 1000.0;

/// `benches/tls`' raw results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TlsData {
    pub(crate) rows: Vec<TlsRow>,
}

fn tls(d: &TlsData) -> Judgement {
    let mut j = Judgement::default();
    let errors: u64 = d.rows.iter().map(|r| r.errors).sum();
    let loads = d.rows.len();
    j.target(
        "no failed request in any load (the rates compare complete loads)",
        format!("{errors} failed in {loads} loads"),
        if errors == 0 && loads > 0 {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
    );
    let attacked: Vec<f64> = d
        .rows
        .iter()
        .filter(|r| r.load.starts_with(UNDER_ATTACK))
        .map(|r| r.p99_ms)
        .collect();
    if !attacked.is_empty() {
        let worst = attacked.iter().copied().fold(0.0, f64::max);
        j.target(
            "handshakes under attack (600 silent or half-ClientHello connections): p99 <= 1 s in every round",
            format!("worst round p99 {worst:.1} ms over {} loads", attacked.len()),
            Verdict::of(&attacked, |v| v <= ATTACKED_P99_MS),
        );
    }
    j
}

// --- the runs log ----------------------------------------------------------------------------

/// The first lines of `docs/benchmark-runs.md`.
pub(crate) const LOG_HEADER: &str = "# Benchmark runs\n\nOne line per run of a benchmark script, written by the script whether or not its report\nwas published: when, at which commit, the command, its raw results, and each target's\nverdict (`ld-bench verdict FILE` judges a raw file again).\n\n| date | commit | command | raw results | verdicts |\n|---|---|---|---|---|\n";

/// The log's line for `raw`, whose data is at `data_path` (relative to `docs/`).
pub(crate) fn log_line(raw: &RawFile, data_path: &str, j: &Judgement) -> String {
    let verdicts: Vec<String> = j
        .targets
        .iter()
        .map(|t| format!("{}: {}", t.name.replace('|', "/"), t.verdict.word()))
        .collect();
    format!(
        "| {} | {} | `{}` | [{}]({}) | {} |",
        raw.date,
        raw.commit,
        raw.command,
        data_path.rsplit('/').next().unwrap_or(data_path),
        data_path,
        verdicts.join(" · ")
    )
}

/// How many runs of `script` at `commit` the log holds, and for each target how many of
/// them met it, in the order targets first appear.
pub(crate) fn tally(log: &str, script: &str, commit: &str) -> (usize, Vec<(String, usize)>) {
    let mut runs = 0;
    let mut met: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect();
        let [_, c, command, _, verdicts] = cells[..] else {
            continue;
        };
        let command = command.trim_matches('`');
        let this_script = command
            .split_whitespace()
            .next()
            .is_some_and(|w| w.rsplit('/').next() == Some(script));
        if c != commit || !this_script {
            continue;
        }
        runs += 1;
        for v in verdicts.split(" · ") {
            let Some((name, word)) = v.rsplit_once(": ") else {
                continue;
            };
            let hit = usize::from(word == "yes");
            match met.iter_mut().find(|(n, _)| n == name) {
                Some((_, k)) => *k += hit,
                None => met.push((name.to_string(), hit)),
            }
        }
    }
    (runs, met)
}

/// The sentence a published report carries: how many runs of its script were made at its
/// commit, and how many met each target.
pub(crate) fn runs_sentence(log: &str, raw: &RawFile) -> String {
    let (runs, met) = tally(log, &raw.script, &raw.commit);
    let each: Vec<String> = met
        .iter()
        .map(|(n, k)| format!("{n}: {k} of {runs}"))
        .collect();
    format!(
        "Runs of `benches/{}` at {} (docs/benchmark-runs.md): {runs}; met in each target: {}.",
        raw.script,
        raw.commit,
        if each.is_empty() {
            "-".into()
        } else {
            each.join("; ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(script: &str, data: serde_json::Value) -> RawFile {
        RawFile {
            script: script.into(),
            date: "2026-12-08".into(),
            commit: "abc1234".into(),
            command: format!("benches/{script} --x 1"),
            data,
        }
    }

    fn verdicts(j: &Judgement) -> Vec<(&str, Verdict)> {
        j.targets
            .iter()
            .map(|t| (t.name.as_str(), t.verdict))
            .collect()
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_two_middle_values() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
        assert_eq!(
            spread(&[3.0, 1.0, 2.0, 4.0], |v| format!("{v}")),
            "2.5 (1 to 4)"
        );
    }

    #[test]
    fn a_target_is_met_only_when_every_round_meets_it() {
        let at_most = |v: f64| v <= 0.15;
        assert_eq!(Verdict::of(&[0.05, 0.10], at_most), Verdict::Met);
        assert_eq!(Verdict::of(&[0.20, 0.30], at_most), Verdict::NotMet);
        assert_eq!(
            Verdict::of(&[-0.148, 0.087, 0.165], at_most),
            Verdict::NotEstablished
        );
        assert_eq!(Verdict::of(&[], at_most), Verdict::NotMet);
    }

    fn sighup(mode: &str, completed: u32, errors: u64) -> UpgradeDrill {
        UpgradeDrill {
            name: format!("lameduck-demo, SIGHUP upgrade, {mode}"),
            kind: "sighup".into(),
            mode: mode.into(),
            rate: 5000.0,
            faults_sent: 20,
            faults_ok: 20,
            completed,
            rollbacks: 20 - completed,
            requests: 10_000,
            errors,
            outcomes: [
                ("ok".to_string(), 10_000 - errors),
                ("reset_reused".to_string(), errors),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect(),
            ..UpgradeDrill::default()
        }
    }

    #[test]
    fn upgrades_pass_only_with_every_upgrade_done_and_no_request_failed() {
        let ok = UpgradesData {
            upgrades: 20,
            drills: vec![sighup("keep-alive", 20, 0)],
        };
        let j = judge(&raw("upgrades", serde_json::to_value(&ok).unwrap())).unwrap();
        assert!(j.all_met(), "{}", j.markdown());
        // A row with 42 failed requests: no.
        let failed = UpgradesData {
            upgrades: 20,
            drills: vec![sighup("keep-alive", 20, 42)],
        };
        let j = judge(&raw("upgrades", serde_json::to_value(&failed).unwrap())).unwrap();
        assert_eq!(
            verdicts(&j)[1],
            (
                "keep-alive: zero failed requests across the 20 upgrades",
                Verdict::NotMet
            )
        );
        assert!(
            j.targets[1].measured.contains("42 failed"),
            "{}",
            j.targets[1].measured
        );
        assert!(!j.all_met());
        // 19 of 20 upgrades: no, and the zero-failure claim cannot be made.
        let short = UpgradesData {
            upgrades: 20,
            drills: vec![sighup("h2", 19, 0)],
        };
        let j = judge(&raw("upgrades", serde_json::to_value(&short).unwrap())).unwrap();
        assert_eq!(j.targets[0].verdict, Verdict::NotMet);
        assert!(j.targets[0]
            .measured
            .contains("19 completed, 1 rolled back"));
        assert_eq!(j.targets[1].verdict, Verdict::NotEstablished);
        assert!(!j.all_met());
        // A saturated client: nothing established about the failures.
        let mut sat = sighup("keep-alive", 20, 0);
        sat.client_saturated = true;
        let j = judge(&raw(
            "upgrades",
            serde_json::to_value(UpgradesData {
                upgrades: 20,
                drills: vec![sat],
            })
            .unwrap(),
        ))
        .unwrap();
        assert_eq!(j.targets[1].verdict, Verdict::NotEstablished);
        // The sentences count from the data.
        assert!(
            j.notes[0].contains("20 faults sent, 20 upgrades completed, 0 rolled back"),
            "{:?}",
            j.notes
        );
    }

    fn load(variant: &str, sent: f64, goodput: f64, p99: f64, others: u64) -> OverloadLoad {
        OverloadLoad {
            variant: variant.into(),
            offered_rate: sent,
            sent_rate: sent,
            achieved_rate: sent,
            goodput,
            p99_ms: p99,
            other_failures: others,
            ..OverloadLoad::default()
        }
    }

    #[test]
    fn overload_rows_that_were_not_offered_twice_the_rate_establish_nothing() {
        let round = |sent: f64, goodput: f64| OverloadRound {
            round: 1,
            loads: vec![
                load("sustainable", 0.0, 1000.0, 10.0, 0),
                load("8", sent, goodput, 20.0, 0),
                load("sustainable again", 0.0, 1000.0, 10.0, 0),
            ],
        };
        let good = OverloadData {
            rounds: vec![round(2000.0, 950.0)],
        };
        let j = judge(&raw("overload", serde_json::to_value(&good).unwrap())).unwrap();
        assert!(j.all_met(), "{}", j.markdown());
        // The drill sent only 0.82x: the goodput target is not established.
        let closed = OverloadData {
            rounds: vec![round(817.0, 817.0)],
        };
        let j = judge(&raw("overload", serde_json::to_value(&closed).unwrap())).unwrap();
        assert_eq!(j.targets[0].verdict, Verdict::NotMet);
        assert!(
            j.targets[1..]
                .iter()
                .all(|t| t.verdict == Verdict::NotEstablished),
            "{}",
            j.markdown()
        );
        // The sustainable rate drifted up after the variants: the 2x row was still offered
        // twice the rate it was asked from.
        let mut drift = round(2000.0, 1000.0);
        drift.loads[2].goodput = 1200.0;
        let drift = OverloadData {
            rounds: vec![drift],
        };
        let j = judge(&raw("overload", serde_json::to_value(&drift).unwrap())).unwrap();
        assert_eq!(j.targets[0].verdict, Verdict::Met, "{}", j.markdown());
        // A saturated client: not offered, whatever it sent.
        let mut sat = round(2000.0, 950.0);
        sat.loads[1].client_saturated = true;
        let sat = OverloadData { rounds: vec![sat] };
        let j = judge(&raw("overload", serde_json::to_value(&sat).unwrap())).unwrap();
        assert_eq!(j.targets[0].verdict, Verdict::NotMet);
        assert_eq!(j.targets[1].verdict, Verdict::NotEstablished);
        // Offered, but goodput collapsed.
        let collapsed = OverloadData {
            rounds: vec![round(2000.0, 300.0)],
        };
        let j = judge(&raw("overload", serde_json::to_value(&collapsed).unwrap())).unwrap();
        assert_eq!(j.targets[1].verdict, Verdict::NotMet);
    }

    #[test]
    fn run_targets_fail_on_a_failing_input() {
        let server = |name: &str, rps: f64, ka: f64| ServerRuns {
            name: name.into(),
            full: true,
            idle_exit_ms: vec![1.0, 1.0],
            after_last_ms: vec![1.0, 2.0],
            ka_race_failed: vec![ka, ka],
            idle_exit_1000_ms: vec![1.0, 1.0],
            rss_idle_mib: vec![5.0, 5.0],
            rss_loaded_mib: vec![60.0, 60.0],
            rps: vec![rps, rps],
            p50_ms: vec![0.3, 0.3],
            p99_ms: vec![1.0, 1.0],
            non_2xx: vec![0.0, 0.0],
        };
        let good = RunData {
            servers: vec![server("bare hyper", 100.0, 64.0), server(DEMO, 95.0, 0.0)],
            paired_costs: vec![],
        };
        let j = judge(&raw("run", serde_json::to_value(&good).unwrap())).unwrap();
        assert!(j.all_met(), "{}", j.markdown());
        let mut bad = good.clone();
        bad.servers[1].ka_race_failed = vec![0.0, 3.0];
        bad.servers[1].non_2xx = vec![0.0, 12.0];
        let j = judge(&raw("run", serde_json::to_value(&bad).unwrap())).unwrap();
        let v = verdicts(&j);
        assert!(
            v.contains(&("keep-alive race: 0 failed of 64", Verdict::NotEstablished)),
            "{v:?}"
        );
        assert_eq!(
            v.last().map(|x| x.1),
            Some(Verdict::NotMet),
            "non-2xx answers fail"
        );
        assert!(!j.all_met());
    }

    #[test]
    fn orders_targets_are_judged_on_what_they_name() {
        let row = |variant: &str, round: u32, rps: f64, p50: f64, p99: f64| OrdersRow {
            variant: variant.into(),
            round,
            rps,
            p50_ms: p50,
            p99_ms: p99,
            ..OrdersRow::default()
        };
        let d = OrdersData {
            rows: vec![
                row("POST, SQLite, 32 clients, writer", 1, 9000.0, 3.0, 10.0),
                row("POST, SQLite, 1 client, abc (before)", 1, 200.0, 4.0, 8.0),
                row("POST, SQLite, 1 client, writer", 1, 210.0, 4.5, 8.0),
            ],
        };
        let j = judge(&raw("orders", serde_json::to_value(&d).unwrap())).unwrap();
        let v = verdicts(&j);
        assert_eq!(v[0].1, Verdict::Met);
        assert_eq!(v[1].1, Verdict::Met);
        // The one-client target is judged on p50: 4.5 ms against 4.0 ms is worse.
        assert_eq!(
            v[2],
            (
                "SQLite, 1 client: p50 no worse than before (same round)",
                Verdict::NotMet
            )
        );
        let mut failed = d.clone();
        failed.rows[0].errors = 3;
        let j = judge(&raw("orders", serde_json::to_value(&failed).unwrap())).unwrap();
        assert_eq!(j.targets.last().map(|t| t.verdict), Some(Verdict::NotMet));
    }

    #[test]
    fn tls_handshakes_under_attack_must_stay_under_a_second_in_every_round() {
        let row = |round, p99_ms| TlsRow {
            load: format!("{UNDER_ATTACK}600 silent connections, lameduck-demo"),
            round,
            rate: 500.0,
            p50_ms: 3.0,
            p99_ms,
            errors: 0,
        };
        let verdict = |p99s: &[f64]| {
            let d = TlsData {
                rows: p99s
                    .iter()
                    .enumerate()
                    .map(|(i, p)| row(i as u32, *p))
                    .collect(),
            };
            judge(&raw("tls", serde_json::to_value(&d).unwrap()))
                .unwrap()
                .targets[1]
                .verdict
        };
        assert_eq!(verdict(&[12.0, 40.0, 900.0]), Verdict::Met);
        assert_eq!(verdict(&[12.0, 5400.0]), Verdict::NotEstablished);
        assert_eq!(verdict(&[9500.0, 5400.0]), Verdict::NotMet);
    }

    #[test]
    fn tls_fails_when_a_load_failed() {
        let d = TlsData {
            rows: vec![TlsRow {
                load: "handshakes".into(),
                round: 1,
                rate: 6000.0,
                p50_ms: 2.0,
                p99_ms: 4.0,
                errors: 2,
            }],
        };
        let j = judge(&raw("tls", serde_json::to_value(&d).unwrap())).unwrap();
        assert_eq!(j.targets[0].verdict, Verdict::NotMet);
        assert_eq!(j.targets.len(), 1, "no attack rows, no attack target");
        assert!(judge(&raw("nope", serde_json::json!({}))).is_err());
        assert!(judge(&raw("tls", serde_json::json!({"rows": 3}))).is_err());
    }

    #[test]
    fn the_log_counts_runs_of_a_script_at_a_commit() {
        let ok = UpgradesData {
            upgrades: 20,
            drills: vec![sighup("keep-alive", 20, 0)],
        };
        let bad = UpgradesData {
            upgrades: 20,
            drills: vec![sighup("keep-alive", 20, 5)],
        };
        let mut log = LOG_HEADER.to_string();
        for d in [&ok, &bad, &ok] {
            let r = raw("upgrades", serde_json::to_value(d).unwrap());
            let j = judge(&r).unwrap();
            log.push_str(&log_line(&r, "data/upgrades-2026-12-08-abc1234.json", &j));
            log.push('\n');
        }
        let other = RawFile {
            commit: "fff0000".into(),
            ..raw("upgrades", serde_json::to_value(&ok).unwrap())
        };
        log.push_str(&log_line(&other, "data/x.json", &judge(&other).unwrap()));
        log.push('\n');
        let (runs, met) = tally(&log, "upgrades", "abc1234");
        assert_eq!(runs, 3);
        assert_eq!(met[0].1, 3, "every upgrade completed in all three: {met:?}");
        assert_eq!(
            met[1],
            (
                "keep-alive: zero failed requests across the 20 upgrades".to_string(),
                2
            )
        );
        let s = runs_sentence(&log, &raw("upgrades", serde_json::Value::Null));
        assert!(s.contains("at abc1234 (docs/benchmark-runs.md): 3;"), "{s}");
        assert_eq!(tally(&log, "overload", "abc1234").0, 0);
    }
}
