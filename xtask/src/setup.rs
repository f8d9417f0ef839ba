//! Installs the toolchain and tools, skipping what is already there. See shared/TOOLCHAIN.md:
//! Debian's rustc-web ships a prebuilt `core` for BPF, and bpf-linker is built against the same
//! LLVM major version.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// Debian packages: BPF toolchain, then what the demo and the tests run.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    // clippy for Debian's rustc: lints the eBPF crate for its real target.
    "rust-web-clippy",
    "iproute2",
    "ethtool",
    "nginx",
    "curl",
    "iputils-ping",
    // kill, sysctl, pgrep: the tests and the demo use them; not on a minimal Debian.
    "procps",
];
/// What only `cargo xtask test` needs: `promtool` and the Prometheus server (package
/// `prometheus`, about 19 MB; its service is not started on install) check the metrics and the
/// alert rules; headless Chromium (package `chromium`) renders the stats page; `keepalived`
/// (about 1.5 MB, not started on install either) moves the VIP in the active-passive pair
/// tests, run per namespace with the test's own files; `socat` is the real UDP server behind
/// a NAT service (tests/tests/nat_e2e.rs); `mariadb-server` and `mariadb-client` are the real
/// database the `mysql` and `external` health checks are tested against (tests/src/mariadb.rs
/// starts it per namespace; nothing is started on install here); `bird2` speaks BGP in the
/// active-active tests (tests/tests/ecmp.rs).
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "chromium",
    "keepalived",
    "socat",
    "mariadb-server",
    "mariadb-client",
    "bird2",
];
/// bpf-linker goes where root's PATH on Debian already looks (`~/.cargo/bin`, cargo's default,
/// is not on it), so the build script finds it without anyone editing PATH.
const BPF_LINKER_ROOT: &str = "/usr/local";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("setup installs packages and the tests create network namespaces: run as root");
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        return without_apt();
    }
    let mut wanted: Vec<String> = PACKAGES.iter().map(|s| s.to_string()).collect();
    let llvm = if Path::new("/usr/bin/rustc").exists() {
        Some(rustc_llvm_major()?)
    } else {
        None
    };
    // rustc-web's LLVM decides the llvm-N-dev that bpf-linker links against; when rustc-web is
    // not installed yet, install it first to learn it.
    let missing: Vec<&String> = wanted.iter().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        apt_install(&missing.iter().map(|s| s.as_str()).collect::<Vec<_>>())?;
    }
    let llvm = match llvm {
        Some(v) => v,
        None => rustc_llvm_major()?,
    };
    wanted.push(format!("llvm-{llvm}-dev"));
    let llvm_dev = format!("llvm-{llvm}-dev");
    if !installed(&llvm_dev) {
        apt_install(&[&llvm_dev])?;
    }
    ensure_bpf_linker(llvm)?;
    println!(
        "setup: toolchain ready (Debian rustc-web, LLVM {llvm}, bpf-linker {BPF_LINKER_VERSION})"
    );
    Ok(())
}

/// Not Debian: nothing can be installed for the user, so check the rustup-nightly route the
/// build script falls back to and say exactly what is missing.
fn without_apt() -> Result<()> {
    let nightly_src = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()))
        .is_some_and(|p| p.join("lib/rustlib/src/rust/library/core").is_dir());
    let linker = Command::new("bpf-linker").arg("--version").output().is_ok();
    let mut missing = Vec::new();
    if !nightly_src {
        missing.push("rustup toolchain install nightly --component rust-src");
    }
    if !linker {
        missing.push("cargo install bpf-linker");
    }
    for tool in ["ip", "ethtool", "nginx", "curl"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        println!("setup: no apt-get here; using rustup nightly + rust-src and bpf-linker");
        return Ok(());
    }
    bail!(
        "no apt-get on this machine, and these are missing: {} (install them, or use Debian \
         12 where `cargo xtask setup` installs everything)",
        missing.join(", ")
    )
}

/// Installs [`TEST_PACKAGES`] if missing. Without apt-get the tests that need them skip those
/// checks and say so.
pub fn install_test_packages() -> Result<()> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        println!(
            "setup: no apt-get here; tests skip the promtool check unless promtool is on PATH"
        );
        return Ok(());
    }
    install(TEST_PACKAGES)
}

/// Installs Debian packages that are missing (for the bench's peers and tools).
pub fn install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    println!("setup: installing {} (apt-get)...", pkgs.join(" "));
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("cannot run apt-get: this setup needs Debian/Ubuntu")?;
    if !status.success() {
        bail!("apt-get update failed");
    }
    // Packages such as nginx start their service on install where no systemd runs; a host
    // nginx on port 80 is not wanted (the demo and the tests start their own in namespaces).
    // policy-rc.d answering 101 is Debian's way of saying "start nothing".
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy.exists()
        && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
        && Command::new("chmod")
            .args(["755"])
            .arg(policy)
            .status()
            .is_ok();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if placed {
        let _ = std::fs::remove_file(policy);
    }
    let status = status?;
    if !status.success() {
        bail!("apt-get install {} failed", pkgs.join(" "));
    }
    Ok(())
}

/// LLVM major version of Debian's rustc (`LLVM version: 22.1.8` -> 22).
fn rustc_llvm_major() -> Result<u32> {
    let out = Command::new("/usr/bin/rustc")
        .arg("-vV")
        .output()
        .context("cannot run /usr/bin/rustc")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no LLVM version in `/usr/bin/rustc -vV`:\n{text}"))
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    // The build script looks in the same places (foobar-lb/build.rs).
    if find_bpf_linker().is_some() {
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} into \
         {BPF_LINKER_ROOT}/bin (about a minute)..."
    );
    // The cargo that runs xtask (rustup's or Debian's), not whatever `cargo` PATH finds.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "--locked", "--root", BPF_LINKER_ROOT])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm}"))
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!(
            "cargo install bpf-linker failed: check that bpf-linker {BPF_LINKER_VERSION} has an \
             `llvm-{llvm}` feature (Debian's rustc moved to LLVM {llvm}); a newer bpf-linker may \
             be needed"
        );
    }
    Ok(())
}

/// A working bpf-linker: on PATH, in /usr/local/bin, or in cargo's default `~/.cargo/bin`.
fn find_bpf_linker() -> Option<std::path::PathBuf> {
    let mut candidates: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    candidates.push(Path::new(BPF_LINKER_ROOT).join("bin"));
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin"));
    }
    candidates
        .into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}
