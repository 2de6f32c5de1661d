//! Fake services for tests and drills, each a subcommand of `lameduck-fakes`, served by
//! lameduck itself (so they drain on SIGTERM like everything else here):
//!
//! - `webhook --listen ADDR [--fail-rate F] [--fail-after-record-rate F] [--latency-ms N]
//!   [--seed S]`: accepts POSTs on any path and records each delivery it accepts, and on
//!   demand fails before or after recording (see [`webhook`]);
//! - `payments --listen ADDR [--fail-rate F] [--error-after-charge-rate F]
//!   [--lost-reply-rate F] [--latency-ms N] [--jitter-ms N] [--lookup-lag DUR]
//!   [--lookup-fail-rate F] [--seed S]`: a payment gateway that charges once per
//!   idempotency key, commits a charge as soon as it has read the request, and fails,
//!   loses replies, lags and slows down on demand (see [`payments`]).
//!
//! On port 0 the bound address is printed as `listening http=ADDR` once serving.

pub mod payments;
mod reset;
pub mod webhook;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lameduck::cli;
use lameduck::lifecycle::Lifecycle;
use lameduck::server::Server;

/// Fake services for tests and drills.
#[derive(Debug, Parser)]
#[command(name = "lameduck-fakes", version)]
pub struct Args {
    /// Log format.
    #[arg(long, value_enum, default_value_t = lameduck::logs::LogFormat::Text, global = true)]
    pub log_format: lameduck::logs::LogFormat,
    /// The fake to run.
    #[command(subcommand)]
    pub fake: Fake,
}

/// The fakes.
#[derive(Debug, Subcommand)]
pub enum Fake {
    /// A webhook receiver: records every delivery it accepts; `GET /events` lists them.
    Webhook(webhook::Options),
    /// A payment gateway: `POST /charges` once per idempotency key, `GET /charges`,
    /// `PUT /control` to change its faults while it runs.
    Payments(payments::Options),
}

/// Parse flags, run the fake until SIGTERM, exit with the table's code.
pub fn main_impl() -> ExitCode {
    let args: Args = match cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    // Only a subscriber installed already can fail this (no file, no exporter).
    let _ = lameduck::logs::init(lameduck::logs::LogOptions::new(args.log_format, "info"));
    cli::block_on_main("lameduck-fakes", run(args))
}

/// Run the chosen fake until it has shut down; returns the exit code.
///
/// # Errors
/// Bad options, signal handlers, binding.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let lifecycle = Lifecycle::new()
        .with_os_signals()
        .context("failed to install signal handlers")?;
    let (listen, router, gateway) = match args.fake {
        Fake::Webhook(o) => (o.listen, webhook::router(webhook::Receiver::new(&o)?), None),
        Fake::Payments(o) => {
            let g = payments::Gateway::new(&o)?;
            (o.listen, payments::router(g.clone()), Some(g))
        }
    };
    let server = Server::builder()
        .shutdown_timeout(std::time::Duration::from_secs(5))
        .bind(listen, lifecycle)
        .await?;
    let bound = server.local_addr()?;
    if let Some(g) = gateway {
        g.set_bound(bound);
    }
    announce(listen, bound);
    Ok(server.serve(router).await.exit_code())
}

fn announce(requested: SocketAddr, bound: SocketAddr) {
    if requested.port() == 0 {
        println!("listening http={bound}");
    }
    tracing::info!(%bound, "ready");
}

/// Repeatable fault choices: the n-th call's k-th roll is SplitMix64 of the seed, n and k.
#[derive(Debug)]
pub(crate) struct Dice {
    seed: u64,
}

impl Dice {
    /// Dice from `seed`, or from the clock.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Self { seed }
    }

    /// The seed (logged, so that a run can be repeated).
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// The n-th call's k-th roll, uniform in 0..=u64::MAX.
    pub(crate) fn roll(&self, n: u64, k: u64) -> u64 {
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_add(k.wrapping_mul(0xd1b5_4a32_d192_ed03));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The n-th call's k-th roll, uniform in 0..1.
    pub(crate) fn unit(&self, n: u64, k: u64) -> f64 {
        (self.roll(n, k) >> 11) as f64 / (1u64 << 53) as f64
    }
}
