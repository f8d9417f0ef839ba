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

/// Builds `foobar-lb` in release mode and returns the binary's path.
pub fn release() -> Result<PathBuf> {
    println!("build: foobar-lb (release; the build script compiles the XDP program)...");
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "foobar-lb"])
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let bin = workspace_root().join("target/release/foobar-lb");
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
