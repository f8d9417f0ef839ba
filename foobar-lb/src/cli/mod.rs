//! Command-line interface: one file per subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod check;
mod run;
mod stats;

#[derive(Parser)]
#[command(name = "foobar-lb", version, about = "XDP Layer-4 load balancer")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer daemon on the configured interfaces.
    Run(run::Args),
    /// Print per-service, per-backend and per-verdict counters of a running daemon.
    Stats(stats::Args),
    /// Show how this binary was built; fails if it lacks its XDP program.
    Info,
    /// Validate a configuration file without touching the kernel.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::CheckConfig { config } => check::run(&config),
        Command::Info => match foobar_lb::dataplane::object_status() {
            Ok(route) => {
                println!(
                    "foobar-lb {}: XDP program built ({route})",
                    env!("CARGO_PKG_VERSION")
                );
                Ok(())
            }
            Err(why) => anyhow::bail!(
                "this binary has no XDP program ({why}): run `cargo xtask setup`, then rebuild"
            ),
        },
    }
}
