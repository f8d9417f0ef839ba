//! Builds the XDP object (foobar-lb-ebpf) so the controller can embed it.
//!
//! Two routes, as in shared/TOOLCHAIN.md: Debian's rustc with its prebuilt BPF `core`
//! (preferred when `/usr/lib/rustlib/bpfel-unknown-none` exists), else rustup nightly with
//! rust-src and `-Z build-std=core`. When neither is present the host crates still build (so
//! `cargo build`/`cargo test` work anywhere) and the binary refuses to load the data plane with a
//! message saying to run `cargo xtask setup`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const BIN: &str = "foobar-lb-xdp";
/// `-Ctarget-cpu=v3` for the atomic fetch-add of the round-robin cursor.
const RUSTFLAGS: [&str; 3] = ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for dir in [
        "foobar-lb-ebpf/src",
        "foobar-lb-ebpf/Cargo.toml",
        "foobar-lb-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=FOOBAR_LB_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let obj = out_dir.join("foobar-lb-xdp.o");
    let result = if env::var_os("FOOBAR_LB_SKIP_EBPF").is_some() {
        Err("FOOBAR_LB_SKIP_EBPF is set".to_string())
    } else {
        build(&root, &obj)
    };
    match result {
        Ok(route) => {
            println!("cargo:rustc-env=FOOBAR_LB_EBPF_ROUTE={route}");
            println!("cargo:rustc-env=FOOBAR_LB_EBPF_MISSING=");
        }
        Err(why) => {
            println!("cargo:warning=XDP object not built ({why}); run `cargo xtask setup`");
            // A path that does not exist makes cargo rerun this script on every build, so the
            // object gets built as soon as the toolchain is installed.
            println!("cargo:rerun-if-changed=/nonexistent/foobar-lb/bpf-toolchain-missing");
            std::fs::write(&obj, b"").unwrap();
            println!("cargo:rustc-env=FOOBAR_LB_EBPF_ROUTE=none");
            println!("cargo:rustc-env=FOOBAR_LB_EBPF_MISSING={why}");
        }
    }
    println!("cargo:rustc-env=FOOBAR_LB_EBPF_OBJ={}", obj.display());
}

fn build(root: &Path, obj: &Path) -> Result<&'static str, String> {
    let target_dir = root.join("target").join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd;
    let route;
    if Path::new("/usr/lib/rustlib").join(TARGET).is_dir() && Path::new("/usr/bin/rustc").exists() {
        route = "debian-rustc";
        cmd = Command::new(&cargo);
        cmd.env("RUSTC", "/usr/bin/rustc")
            // aya-ebpf and our program use `asm_experimental_arch`; allow exactly those crates.
            .env("RUSTC_BOOTSTRAP", "aya_ebpf,foobar_lb_xdp");
    } else if nightly_has_rust_src() {
        route = "rustup-nightly";
        cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"]).env_remove("RUSTC");
    } else {
        return Err(format!(
            "no BPF-capable Rust toolchain: need Debian's rustc-web + libstd-rust-web-dev-bpf \
             (/usr/lib/rustlib/{TARGET}) or rustup nightly with rust-src"
        ));
    }
    // rustc calls bpf-linker by name: put the directory it was found in first on the child's PATH
    // (`cargo install` puts it in ~/.cargo/bin, which root's PATH on Debian lacks).
    let linker_dir = find_bpf_linker()
        .ok_or("bpf-linker not found on PATH, in /usr/local/bin or in ~/.cargo/bin")?;
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(linker_dir).chain(env::split_paths(&path)))
        .map_err(|e| format!("cannot build PATH for the BPF build: {e}"))?;
    cmd.env("PATH", path);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "foobar-lb-ebpf",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"));
    if route == "rustup-nightly" {
        cmd.args(["-Z", "build-std=core"]);
    }
    // Settings of the outer (host) build must not leak into the BPF build.
    for var in [
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    // A build script's stdout is read by cargo as directives: send the child's to stderr.
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| format!("cannot run cargo for the BPF build: {e}"))?;
    if !status.success() {
        return Err(format!("BPF build failed ({status}); see the output above"));
    }
    let built = target_dir.join(TARGET).join("release").join(BIN);
    std::fs::copy(&built, obj).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    Ok(route)
}

/// The directory of a working bpf-linker, looked for where `cargo xtask setup` and `cargo install`
/// put it as well as on PATH.
fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    if let Some(home) = env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().find(|d| {
        Command::new(d.join("bpf-linker"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir())
}
