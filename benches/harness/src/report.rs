//! The tables and the targets: each measurement as min / median / max over the runs, and
//! each target judged on every run.

use crate::measure::{DEMO, FULL, IDLE_CONNS, POOL, RSS_CONNS};

/// `min / median / max` of `v` (sorted in place).
pub(crate) fn stats(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let med = median(v);
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    format!("{} / {} / {}", fmt(v[0]), fmt(med), fmt(v[v.len() - 1]))
}

/// The measurements of one server, each a value per run in run order: idle exit, exit
/// after the last response, keep-alive race, exit with 1,000 idle, RSS idle, RSS with
/// 10,000 idle, req/s, p50, p99.
pub(crate) type Runs = [Vec<f64>; 9];

/// The shutdown-and-memory table and the throughput table.
pub(crate) fn tables(servers: &[(String, String, bool)], res: &[Runs]) {
    // Medians from copies: `res` keeps each server's runs in run order, so that the targets
    // compare servers within each interleaved run.
    let med: Vec<[f64; 9]> = res
        .iter()
        .map(|r| std::array::from_fn(|k| median(&mut r[k].clone())))
        .collect();
    println!("### Shutdown and memory\n");
    println!("| server | SIGTERM to exit, idle (ms) | exit after last response (ms) | keep-alive race: failed of {POOL} | SIGTERM to exit, {IDLE_CONNS} idle keep-alive (ms) | RSS idle (MiB) | RSS, {RSS_CONNS} idle keep-alive (MiB) | per connection (KiB) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, _, full)) in servers.iter().enumerate() {
        if !full {
            continue;
        }
        let cols: Vec<String> = res[i][..6].iter().map(|v| stats(&mut v.clone())).collect();
        let per_conn = per_conn_kib(med[i][5], med[i][4]);
        println!("| {name} | {} | {per_conn:.1} |", cols.join(" | "));
    }
    println!("\n### /ping throughput and latency\n");
    println!("| server | req/s | of bare hyper (medians) | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|");
    let base = med.first().map_or(f64::NAN, |m| m[6]);
    for (i, (name, _, _)) in servers.iter().enumerate() {
        let r = &res[i];
        println!(
            "| {name} | {} | {:.2} | {} | {} |",
            stats(&mut r[6].clone()),
            med[i][6] / base,
            stats(&mut r[7].clone()),
            stats(&mut r[8].clone())
        );
    }
}

/// The median of `v` (sorted in place): the middle value, or the mean of the two middle
/// values of an even count.
pub(crate) fn median(v: &mut [f64]) -> f64 {
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

/// Whether a target was met, from every run's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every run meets it.
    Met,
    /// No run meets it.
    NotMet,
    /// Some runs do, some do not: the spread straddles the bound.
    NotEstablished,
}

impl Verdict {
    fn of(values: &[f64], ok: impl Fn(f64) -> bool) -> Self {
        match (values.iter().all(|v| ok(*v)), values.iter().any(|v| ok(*v))) {
            (true, _) if !values.is_empty() => Verdict::Met,
            (_, false) => Verdict::NotMet,
            _ => Verdict::NotEstablished,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::NotMet => "**no**",
            Verdict::NotEstablished => "not established (the runs straddle the bound)",
        }
    }
}

/// `median (min to max)` of `values`, each written by `fmt`.
fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let mut v = values.to_vec();
    let med = median(&mut v);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{} ({} to {})", fmt(med), fmt(*lo), fmt(*hi)),
        _ => "-".into(),
    }
}

/// `f(a[k], b[k])` for each run `k`: a comparison within each interleaved run.
/// KiB per idle connection, from the RSS (MiB) with the idle connections and without.
fn per_conn_kib(rss_with: f64, rss_idle: f64) -> f64 {
    (rss_with - rss_idle) * 1024.0 / RSS_CONNS as f64
}

fn per_run(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
}

/// The targets of the benchmarks issue, judged on every run (one function: a declarative
/// list of `row` calls, read top to bottom like the table it prints, better whole): each cell is the median over
/// the runs with the runs' range, and a target is met only when every run meets it ("not
/// established" when the runs straddle the bound). Comparisons between servers are made
/// within each interleaved run. A target whose servers were not measured is left out.
pub(crate) fn targets(names: &[String], res: &[Runs], paired_costs: Option<&[f64]>) {
    let find = |n: &str| names.iter().position(|x| x == n).map(|i| &res[i]);
    let (hyper, demo) = (find("bare hyper"), find(DEMO));
    let (demo_log, axum_log) = (
        find("lameduck-demo + JSON access log"),
        find("plain axum + TraceLayer"),
    );
    let (gin, gin_log) = (find("Go/Gin seed pattern"), find("Go/Gin + access log"));
    let mut rows: Vec<(String, String, Verdict)> = Vec::new();
    let mut row =
        |t: &str, values: Vec<f64>, fmt: &dyn Fn(f64) -> String, ok: &dyn Fn(f64) -> bool| {
            rows.push((t.into(), spread(&values, fmt), Verdict::of(&values, ok)));
        };
    let ratio = |x: f64, y: f64| x / y;
    let times = |v: f64| format!("{v:.2}x");
    if let (Some(h), Some(d)) = (hyper, demo) {
        row(
            "lameduck-demo /ping throughput >= 0.90 of bare hyper",
            per_run(&d[6], &h[6], ratio),
            &|v| format!("{v:.2}"),
            &|v| v >= 0.90,
        );
        row(
            "p99 at the same load <= 1.2x bare hyper's",
            per_run(&d[8], &h[8], ratio),
            &times,
            &|v| v <= 1.2,
        );
        row(
            "idle SIGTERM-to-exit within 1 ms of bare hyper's",
            per_run(&d[0], &h[0], |x, y| x - y),
            &|v| format!("{v:+.2} ms"),
            &|v| v <= 1.0,
        );
        row(
            "exit < 5 ms after the last in-flight response",
            d[1].clone(),
            &|v| format!("{v:.2} ms"),
            &|v| v < 5.0,
        );
        row(
            &format!("keep-alive race: 0 failed of {POOL}"),
            d[2].clone(),
            &|v| format!("{v:.0}"),
            &|v| v == 0.0,
        );
        row(
            "RSS with 10,000 idle keep-alive connections < 64 MiB",
            d[5].clone(),
            &|v| format!("{v:.1} MiB"),
            &|v| v < 64.0,
        );
    }
    // The per-request cost against plain axum (same routes, same hyper-util auto builder).
    if let (Some(a), Some(d)) = (find("plain axum"), demo) {
        row(
            "lameduck-demo /ping throughput >= 0.90x plain axum",
            per_run(&d[6], &a[6], ratio),
            &|v| format!("{v:.2}"),
            &|v| v >= 0.90,
        );
        row(
            "p99 at that load <= 1.2x plain axum's",
            per_run(&d[8], &a[8], ratio),
            &times,
            &|v| v <= 1.2,
        );
        let per_conn = |r: &Runs| per_run(&r[5], &r[4], per_conn_kib);
        row(
            "memory per idle keep-alive connection <= plain axum's",
            per_run(&per_conn(d), &per_conn(a), |x, y| x - y),
            &|v| format!("{v:+.1} KiB"),
            &|v| v <= 0.0,
        );
    }
    if let (Some(h), Some(dl)) = (hyper, demo_log) {
        row(
            "with JSON access log to a file + metrics: >= 0.75 of bare hyper",
            per_run(&dl[6], &h[6], ratio),
            &|v| format!("{v:.2}"),
            &|v| v >= 0.75,
        );
    }
    if let (Some(d), Some(full)) = (demo, find(FULL)) {
        let cost = |x: f64, y: f64| 1.0 - x / y;
        let costs = match paired_costs {
            Some(costs) if !costs.is_empty() => costs.to_vec(),
            _ => per_run(&full[6], &d[6], cost),
        };
        row(
            "full observability (JSON access log to a file, metrics, request spans) costs <= 15% of /ping throughput (paired runs)",
            costs,
            &|v| format!("{:.1}%", v * 100.0),
            &|v| v <= 0.15,
        );
    }
    if let (Some(dl), Some(al)) = (demo_log, axum_log) {
        row(
            "... and ahead of plain axum + TraceLayer logging the same fields",
            per_run(&dl[6], &al[6], ratio),
            &times,
            &|v| v > 1.0,
        );
    }
    if let (Some(d), Some(g)) = (demo, gin) {
        row(
            ">= 1.4x Gin, default stacks",
            per_run(&d[6], &g[6], ratio),
            &times,
            &|v| v >= 1.4,
        );
    }
    if let (Some(dl), Some(gl)) = (demo_log, gin_log) {
        row(
            ">= 1.4x Gin, both logging each request to a file",
            per_run(&dl[6], &gl[6], ratio),
            &times,
            &|v| v >= 1.4,
        );
    }
    println!("\n### Targets\n");
    println!("| target | measured: median (min to max) over the runs | met |");
    println!("|---|---|---|");
    for (t, v, verdict) in rows {
        println!("| {t} | {v} | {} |", verdict.text());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_two_middle_values() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn a_target_is_met_only_when_every_run_meets_it() {
        let at_most_15 = |v: f64| v <= 0.15;
        assert_eq!(Verdict::of(&[0.05, 0.10], at_most_15), Verdict::Met);
        assert_eq!(Verdict::of(&[0.20, 0.30], at_most_15), Verdict::NotMet);
        assert_eq!(
            Verdict::of(&[-0.148, 0.087, 0.165], at_most_15),
            Verdict::NotEstablished
        );
        assert_eq!(Verdict::of(&[], at_most_15), Verdict::NotMet);
        assert_eq!(
            spread(&[3.0, 1.0, 2.0, 4.0], |v| format!("{v}")),
            "2.5 (1 to 4)"
        );
    }
}
