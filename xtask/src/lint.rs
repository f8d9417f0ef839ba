//! `cargo xtask lint`: formatting and clippy for every crate, the eBPF one on its real target.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{build::workspace_root, setup};

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace_root()).args(args);
    c
}

fn check(what: &str, cmd: &mut Command) -> Result<()> {
    println!("lint: {what}");
    if !cmd.status()?.success() {
        bail!("{what} failed");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    setup::run()?;
    check(
        "cargo fmt --check",
        &mut cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    check(
        "clippy (host crates)",
        &mut cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Debian's clippy-driver matches Debian's rustc, which has the BPF `core`.
    let mut ebpf = cargo(&[
        "check",
        "--release",
        "-p",
        "foobar-lb-ebpf",
        "--target",
        "bpfel-unknown-none",
        "--target-dir",
        "target/bpf-clippy",
    ]);
    ebpf.env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_WORKSPACE_WRAPPER", "/usr/bin/clippy-driver")
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,foobar_lb_xdp")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Ctarget-cpu=v3", "-Dwarnings"].join("\x1f"),
        );
    check("clippy (eBPF crate, bpfel-unknown-none)", &mut ebpf)
}
