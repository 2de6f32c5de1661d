//! The tables and the targets: each measurement as min / median / max over the runs, and
//! each target judged on every run.

use crate::measure::{IDLE_CONNS, POOL, RSS_CONNS};
use crate::verdict::per_conn_kib;

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
/// 10,000 idle, req/s (2xx), p50, p99, non-2xx answers.
pub(crate) type Runs = [Vec<f64>; 10];

/// The shutdown-and-memory table and the throughput table.
pub(crate) fn tables(servers: &[(String, String, bool)], res: &[Runs]) {
    // Medians from copies: `res` keeps each server's runs in run order, so that the targets
    // compare servers within each interleaved run.
    let med: Vec<[f64; 10]> = res
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

/// The median of `v` (sorted in place, for the min and max beside it): see
/// [`crate::verdict::median`].
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    crate::verdict::median(v)
}

/// The raw results of `benches/run`, for `ld-bench verdict`.
pub(crate) fn raw(
    servers: &[(String, String, bool)],
    res: &[Runs],
    paired_costs: Vec<f64>,
) -> crate::verdict::RunData {
    crate::verdict::RunData {
        servers: servers
            .iter()
            .zip(res)
            .map(|((name, _, full), r)| crate::verdict::ServerRuns {
                name: name.clone(),
                full: *full,
                idle_exit_ms: r[0].clone(),
                after_last_ms: r[1].clone(),
                ka_race_failed: r[2].clone(),
                idle_exit_1000_ms: r[3].clone(),
                rss_idle_mib: r[4].clone(),
                rss_loaded_mib: r[5].clone(),
                rps: r[6].clone(),
                p50_ms: r[7].clone(),
                p99_ms: r[8].clone(),
                non_2xx: r[9].clone(),
            })
            .collect(),
        paired_costs,
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
}
