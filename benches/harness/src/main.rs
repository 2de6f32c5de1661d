//! `ld-bench`: measures each server side by side, interleaved, repeated; and judges every
//! benchmark's raw results.
//!
//! ```text
//! ld-bench [--runs N] [--wrk-secs S] [--pairs N] [--json PATH] NAME=COMMAND... [+NAME=COMMAND...]
//! ld-bench verdict FILE [--log docs/benchmark-runs.md | --runs docs/benchmark-runs.md]
//! ```
//! `verdict` judges a raw results file (`docs/data/*.json`, see `verdict.rs`): it prints
//! the targets as a markdown table with sentences made from the data; with `--log` it
//! appends the run's line to the runs log, and with either it says how many runs of that
//! script at that commit the log holds and how many met each target. It exits 0 only when
//! every target is met (1 otherwise, 2 for bad input).
//! Each COMMAND must print `listening http=ADDR` and serve `/ping` and `/work?ms=N`. A spec
//! starting with `+` is measured for throughput and latency only (the logging variants).
//! `{log}` in a command is replaced by a fresh file path, removed after each run.
//! Measurements (all traffic to 127.0.0.1, every loop bounded):
//! - `idle_exit`: SIGTERM to process exit, idle server;
//! - `after_last`: process exit minus the last in-flight response (16 x /work?ms=300);
//! - `ka_race`: failed requests of 64 idle pooled keep-alive connections reused 50 ms after
//!   SIGTERM;
//! - `idle_exit_1000`: SIGTERM to exit with 1,000 idle keep-alive connections open;
//! - `rss`: resident memory idle, and with 10,000 idle keep-alive connections (each after
//!   one request);
//! - `rps`, `p50`, `p99`: wrk -t1 -c64 on core 1, server pinned to core 0; `rps` counts
//!   2xx answers only (wrk's non-2xx answers are subtracted and recorded);
//! - with `--pairs N`: lameduck-demo and its full-observability variant measured for
//!   throughput back to back, N pairs, alternating which goes first; each pair gives one
//!   cost (1 - full / demo), so drift on a shared machine between distant runs does not
//!   enter the comparison.
//!
//! Prints markdown tables with min/median/max of each measurement; with `--json` writes the
//! raw results (`verdict.rs`'s `RunData`), which `ld-bench verdict` judges.

mod measure;
mod report;
mod verdict;

use measure::{
    after_last, idle_exit, idle_exit_1000, ka_race, paired, raise_fd_limit, rss, wrk, RSS_CONNS,
};
use report::{median, stats, tables, Runs};
use verdict::{DEMO, FULL};

const USAGE: &str = "usage: ld-bench [--runs N] [--wrk-secs S] [--pairs N] [--only rss] [--json PATH] NAME=COMMAND... \
    (a +NAME=COMMAND server gets the throughput measurement only; {log} in a command is a temporary file)\n\
    \x20      ld-bench verdict FILE [--log PATH | --runs PATH]";

/// What to measure.
#[derive(Debug)]
struct Options {
    runs: usize,
    wrk_secs: u64,
    pairs: usize,
    rss_only: bool,
    /// Where the raw results go.
    json: Option<String>,
    /// Name, command, and whether it gets every measurement (else throughput only).
    servers: Vec<(String, String, bool)>,
}

/// `Ok(None)` for `--help` (printed).
fn options(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        runs: 5,
        wrk_secs: 5,
        pairs: 0,
        rss_only: false,
        json: None,
        servers: Vec::new(),
    };
    let positive = |v: Option<String>, what: &str| match v.and_then(|v| v.parse().ok()) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} needs a positive number")),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--runs" => o.runs = positive(args.next(), "--runs")?,
            "--wrk-secs" => o.wrk_secs = positive(args.next(), "--wrk-secs")? as u64,
            "--pairs" => {
                o.pairs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--pairs needs a number (0: none)")?
            }
            "--json" => o.json = Some(args.next().ok_or("--json needs a path")?),
            "--only" => match args.next().as_deref() {
                Some("rss") => o.rss_only = true,
                _ => return Err("--only takes: rss".into()),
            },
            spec => {
                let (full, spec) = match spec.strip_prefix('+') {
                    Some(rest) => (false, rest),
                    None => (true, spec),
                };
                let Some((name, cmd)) = spec.split_once('=') else {
                    return Err(format!("{spec:?} is not NAME=COMMAND"));
                };
                o.servers.push((name.into(), cmd.into(), full));
            }
        }
    }
    if o.servers.is_empty() {
        return Err("no server given".into());
    }
    Ok(Some(o))
}

/// `ld-bench verdict FILE [--log PATH | --runs PATH]`.
fn verdict_main(mut args: impl Iterator<Item = String>) -> std::process::ExitCode {
    let usage = |why: &str| {
        eprintln!(
            "ld-bench verdict: {why}\nusage: ld-bench verdict FILE [--log PATH | --runs PATH]"
        );
        std::process::ExitCode::from(2)
    };
    let Some(file) = args.next() else {
        return usage("no file given");
    };
    let (log, append) = match (args.next().as_deref(), args.next()) {
        (None, _) => (None, false),
        (Some("--log"), Some(path)) => (Some(path), true),
        (Some("--runs"), Some(path)) => (Some(path), false),
        _ => return usage("the options are --log PATH and --runs PATH"),
    };
    let raw: verdict::RawFile = match std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return usage(&format!("cannot read {file}: {e}")),
    };
    let judgement = match verdict::judge(&raw) {
        Ok(j) => j,
        Err(e) => return usage(&format!("{file}: {e}")),
    };
    print!("{}", judgement.markdown());
    if let Some(log) = log {
        let data_path = match file.find("data/") {
            Some(i) => file[i..].to_string(),
            None => file.clone(),
        };
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        if append {
            if text.is_empty() {
                text.push_str(verdict::LOG_HEADER);
            }
            text.push_str(&verdict::log_line(&raw, &data_path, &judgement));
            text.push('\n');
            if let Err(e) = std::fs::write(&log, &text) {
                eprintln!("ld-bench verdict: cannot write {log}: {e}");
                return std::process::ExitCode::from(2);
            }
        }
        println!("\n{}", verdict::runs_sentence(&text, &raw));
    }
    if judgement.all_met() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("verdict") {
        args.next();
        return verdict_main(args);
    }
    let o = match options(args) {
        Ok(Some(o)) => o,
        Ok(None) => return std::process::ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("ld-bench: {problem}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    raise_fd_limit();
    if o.rss_only {
        rss_table(&o).await;
        return std::process::ExitCode::SUCCESS;
    }
    let res = measure_all(&o).await;
    tables(&o.servers, &res);
    let command = |name: &str| o.servers.iter().find(|s| s.0 == name).map(|s| s.1.as_str());
    let paired_costs = match (command(DEMO), command(FULL)) {
        (Some(demo), Some(full)) if o.pairs > 0 => paired(demo, full, o.pairs, o.wrk_secs),
        _ => Vec::new(),
    };
    if let Some(path) = &o.json {
        let data = report::raw(&o.servers, &res, paired_costs);
        let written = serde_json::to_string_pretty(&data)
            .map_err(|e| e.to_string())
            .and_then(|t| std::fs::write(path, t).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("ld-bench: cannot write {path}: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Every server's measurements, `o.runs` times, the servers interleaved within each run so
/// that drift on a shared machine hits all alike.
async fn measure_all(o: &Options) -> Vec<Runs> {
    let mut res: Vec<Runs> = o.servers.iter().map(|_| Default::default()).collect();
    for run in 0..o.runs {
        eprintln!("run {}/{}", run + 1, o.runs);
        for (i, (name, cmd, full)) in o.servers.iter().enumerate() {
            eprintln!("  {name}");
            if *full {
                res[i][0].push(idle_exit(cmd).await);
                res[i][1].push(after_last(cmd).await);
                res[i][2].push(ka_race(cmd).await);
                res[i][3].push(idle_exit_1000(cmd).await);
                let (idle, loaded) = rss(cmd).await;
                res[i][4].push(idle);
                res[i][5].push(loaded);
            }
            let w = wrk(cmd, o.wrk_secs);
            res[i][6].push(w.rps);
            res[i][7].push(w.p50);
            res[i][8].push(w.p99);
            res[i][9].push(w.non_2xx);
        }
    }
    res
}

/// `--only rss`: memory idle and with 10,000 idle keep-alive connections.
async fn rss_table(o: &Options) {
    println!("| server | RSS idle (MiB) | RSS, {RSS_CONNS} idle keep-alive (MiB) | per connection (KiB) |");
    println!("|---|---|---|---|");
    for (name, cmd, _) in &o.servers {
        let (mut idle, mut loaded) = (Vec::new(), Vec::new());
        for _ in 0..o.runs {
            let (i, l) = rss(cmd).await;
            idle.push(i);
            loaded.push(l);
        }
        let per_conn = (median(&mut loaded) - median(&mut idle)) * 1024.0 / RSS_CONNS as f64;
        println!(
            "| {name} | {} | {} | {per_conn:.1} |",
            stats(&mut idle),
            stats(&mut loaded)
        );
    }
}
