//! Builds the controller; its build script builds and embeds the XDP object.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (shared machines point
/// several worktrees at one), else `target/` in the workspace root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// `cargo ARGS` in the workspace root.
pub fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace_root()).args(args);
    c
}

/// Runs `cmd`, saying what it does; fails with `what` if it fails.
pub fn step(what: &str, cmd: &mut Command) -> Result<()> {
    println!("xtask: {what}");
    if !cmd.status()?.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// Builds `foobar-lb` in release mode and returns the binary's path.
pub fn release() -> Result<PathBuf> {
    step(
        "build foobar-lb (release; the build script compiles the XDP program)",
        &mut cargo(&["build", "--release", "-p", "foobar-lb"]),
    )?;
    let bin = target_dir().join("release/foobar-lb");
    check_has_program(&bin)?;
    Ok(bin)
}

/// A binary built without the BPF toolchain refuses to run; catch that here, with the fix.
fn check_has_program(bin: &Path) -> Result<()> {
    let out = Command::new(bin).arg("info").output()?;
    if !out.status.success() {
        bail!(
            "{} was built without its XDP program: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
