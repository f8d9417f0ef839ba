//! Test support for foobar-lb: a packet builder with checksums, a BPF_PROG_TEST_RUN harness
//! provisioned through the controller's own map-writing code, and network-namespace guards.

pub mod daemon;
pub mod ecmp;
pub mod fuzz;
pub mod harness;
pub mod load;
pub mod mariadb;
pub mod model;
pub mod netns;
pub mod packet;
pub mod pair;
pub mod routed;
pub mod site;
pub mod traffic;

/// Whether a test that needs the kernel (root) and the built XDP program can run here.
///
/// A plain `cargo test` without root or without the BPF toolchain prints `skipped: <why>` and
/// returns false, so the caller returns early. Under `cargo xtask test` (which sets
/// `FOOBAR_LB_BIN`) a missing requirement panics instead: CI never skips silently. Call it
/// first in every test that needs root.
pub fn root_and_object() -> bool {
    match missing_root_or_object() {
        None => true,
        Some(why) => skip_or_fail(&why),
    }
}

/// Like [`root_and_object`], and the `foobar-lb` binary must exist too (tests that start it).
pub fn root_object_and_binary() -> bool {
    match missing_root_or_object().or_else(missing_binary) {
        None => true,
        Some(why) => skip_or_fail(&why),
    }
}

/// Whether the `foobar-lb` binary exists (tests that only run the CLI, no root needed).
pub fn binary() -> bool {
    match missing_binary() {
        None => true,
        Some(why) => skip_or_fail(&why),
    }
}

/// Set by `cargo xtask test`: every requirement must hold, a missing one is a failure.
fn strict() -> bool {
    std::env::var_os("FOOBAR_LB_BIN").is_some()
}

fn skip_or_fail(why: &str) -> bool {
    assert!(
        !strict(),
        "{why} (FOOBAR_LB_BIN is set, as under `cargo xtask test`: these tests must run)"
    );
    eprintln!("skipped: {why}");
    false
}

/// Effective user id; `FOOBAR_LB_TEST_EUID` overrides it to check the skip logic as root.
fn euid() -> u32 {
    if let Some(v) = std::env::var("FOOBAR_LB_TEST_EUID")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn missing_root_or_object() -> Option<String> {
    if euid() != 0 {
        return Some(
            "not root: these tests load XDP programs and create network namespaces (run them \
             as root with `cargo xtask test`)"
                .into(),
        );
    }
    foobar_lb::dataplane::object()
        .err()
        .map(|e| format!("no XDP object: {e}"))
}

fn missing_binary() -> Option<String> {
    let bin = daemon::bin();
    (!bin.is_file()).then(|| {
        format!(
            "no foobar-lb binary at {} (`cargo build -p foobar-lb`, or set FOOBAR_LB_BIN)",
            bin.display()
        )
    })
}
