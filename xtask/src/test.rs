//! `cargo xtask test`: every test, as CI runs them.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{build::workspace_root, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Only tests whose name contains this.
    filter: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::run()?;
    // Builds the debug controller the end-to-end tests start, with its XDP object.
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "-p", "foobar-lb"])
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let bin = root.join("target/debug/foobar-lb");
    println!("test: host unit tests, packet tests (BPF_PROG_TEST_RUN), netns end-to-end tests");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--exclude", "foobar-lb-ebpf"])
        .env("FOOBAR_LB_BIN", &bin)
        .arg("--");
    if let Some(f) = &args.filter {
        cmd.arg(f);
    }
    // Network-namespace tests run one at a time (shared/TESTING-NETNS.md).
    cmd.arg("--test-threads=1");
    if !cmd.status()?.success() {
        bail!("tests failed");
    }
    println!("test: all passed");
    Ok(())
}
