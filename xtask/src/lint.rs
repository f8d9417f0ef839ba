//! `cargo xtask lint`: formatting and clippy for every crate, the eBPF one on its real target.

use anyhow::Result;

use crate::{
    build::{cargo, step},
    setup,
};

pub fn run() -> Result<()> {
    setup::run()?;
    step(
        "cargo fmt --check",
        &mut cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    step(
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
    let target = crate::build::target_dir().join("bpf-clippy");
    let mut ebpf = cargo(&[
        "check",
        "--release",
        "-p",
        "foobar-lb-ebpf",
        "--target",
        "bpfel-unknown-none",
        "--target-dir",
        target.to_str().expect("UTF-8 target directory"),
    ]);
    ebpf.env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_WORKSPACE_WRAPPER", "/usr/bin/clippy-driver")
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,foobar_lb_xdp")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Ctarget-cpu=v3", "-Dwarnings"].join("\x1f"),
        );
    step("clippy (eBPF crate, bpfel-unknown-none)", &mut ebpf)
}
