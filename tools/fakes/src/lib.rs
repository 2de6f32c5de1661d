//! Fake services for tests and drills, each a subcommand of `lameduck-fakes`, served by
//! lameduck itself (so they drain on SIGTERM like everything else here):
//!
//! - `webhook --listen ADDR [--fail-rate F] [--latency-ms N] [--seed S]`: accepts POSTs on
//!   any path and records each delivery it accepts (see [`webhook`]).
//!
//! On port 0 the bound address is printed as `listening http=ADDR` once serving.

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
    #[arg(long, value_enum, default_value_t = cli::LogFormat::Text, global = true)]
    pub log_format: cli::LogFormat,
    /// The fake to run.
    #[command(subcommand)]
    pub fake: Fake,
}

/// The fakes.
#[derive(Debug, Subcommand)]
pub enum Fake {
    /// A webhook receiver: records every delivery it accepts; `GET /events` lists them.
    Webhook(webhook::Options),
}

/// Parse flags, run the fake until SIGTERM, exit with the table's code.
pub fn main_impl() -> ExitCode {
    let args: Args = match cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    lameduck::logs::init_logs(args.log_format, "info");
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
    let (listen, router) = match args.fake {
        Fake::Webhook(o) => (o.listen, webhook::router(webhook::Receiver::new(&o)?)),
    };
    let server = Server::builder()
        .shutdown_timeout(std::time::Duration::from_secs(5))
        .bind(listen, lifecycle)
        .await?;
    announce(listen, server.local_addr()?);
    Ok(server.serve_router(router).await.exit_code())
}

fn announce(requested: SocketAddr, bound: SocketAddr) {
    if requested.port() == 0 {
        println!("listening http={bound}");
    }
    tracing::info!(%bound, "ready");
}
