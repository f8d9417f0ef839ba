//! Developer tasks: `cargo xtask setup | build | lint | test | fuzz | run | bench | package`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build;
mod demo;
mod fuzz;
mod lint;
mod package;
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
    /// Benchmarks: per-packet cost and side-by-side end-to-end runs (results/ folder).
    Bench(bench::Args),
    /// Differential fuzzing: random and mutated frames through the XDP program and the
    /// reference model, which must agree (as root).
    Fuzz(fuzz::Args),
    /// Run foobar-lb on a demo topology of network namespaces playing www.foobar.com.
    Run(demo::Args),
    /// Build a Debian package (binary, systemd unit, default config, man page, completions).
    Package,
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
        Command::Run(args) => {
            ensure_object()?;
            demo::run(args)
        }
        Command::Fuzz(args) => {
            ensure_object()?;
            fuzz::run(args)
        }
        Command::Package => {
            setup::run()?;
            package::run().map(|_| ())
        }
        Command::Bench(args) => {
            setup::run()?;
            ensure_object()?;
            bench::run(args)
        }
    }
}

/// xtask embeds the XDP object through its dependency on the controller. If xtask itself was
/// compiled before the BPF toolchain existed (first run on a fresh machine), install the
/// toolchain and run this command again through cargo, which rebuilds xtask with the object.
fn ensure_object() -> Result<()> {
    if foobar_lb::dataplane::object_status().is_ok() {
        return Ok(());
    }
    if std::env::var_os("FOOBAR_LB_XTASK_REEXEC").is_some() {
        anyhow::bail!(
            "xtask still has no XDP program after setup: {}",
            foobar_lb::dataplane::object_status().unwrap_err()
        );
    }
    setup::run()?;
    println!("xtask: rebuilding with the XDP program now that the toolchain is installed...");
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(build::workspace_root())
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(std::env::args().skip(1))
        .env("FOOBAR_LB_XTASK_REEXEC", "1")
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}
