//! Developer tasks: `cargo xtask setup | build | test | run | bench`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod build;
mod demo;
mod lint;
mod setup;
mod test;

#[derive(Parser)]
#[command(about = "foobar-lb developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (apt packages, bpf-linker), if missing.
    Setup,
    /// Build the XDP object and the controller (release).
    Build,
    /// cargo fmt --check and clippy (-D warnings) on the host crates and the eBPF crate.
    Lint,
    /// Run every test: host unit tests, packet tests, netns end-to-end tests (as root).
    Test(test::Args),
    /// Run foobar-lb on a demo topology of network namespaces playing www.foobar.com.
    Run(demo::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::run()?;
            build::release().map(|_| ())
        }
        Command::Lint => lint::run(),
        Command::Test(args) => test::run(args),
        Command::Run(args) => demo::run(args),
    }
}
