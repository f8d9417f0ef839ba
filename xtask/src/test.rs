//! `cargo xtask test`: every test, as CI runs them.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{bail, Result};

use crate::{
    build::{cargo, step, target_dir},
    setup,
};

#[derive(clap::Args)]
pub struct Args {
    /// Only tests whose name contains this.
    filter: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::run()?;
    setup::install_test_packages()?;
    sweep();
    // Builds the debug controller the end-to-end tests start, with its XDP object.
    step(
        "build foobar-lb (debug)",
        &mut cargo(&["build", "-p", "foobar-lb"]),
    )?;
    // The tests run a private copy (and package it privately): a target directory shared
    // with other worktrees may get their foobar-lb built into it while these tests run. Not
    // under /tmp: keepalived refuses to run a track script from a world-writable directory.
    let private = target_dir().join(format!("xtask-test-{}", std::process::id()));
    std::fs::create_dir_all(&private)?;
    let bin = private.join("foobar-lb");
    std::fs::copy(target_dir().join("debug/foobar-lb"), &bin)?;
    let result = run_tests(&args, &bin);
    let _ = std::fs::remove_dir_all(&private);
    result
}

fn run_tests(args: &Args, bin: &std::path::Path) -> Result<()> {
    // The Debian package of this very binary, for the install/purge test.
    let deb = crate::package::build(bin, &bin.with_file_name("debian-test"))?;
    println!("test: host unit tests, packet tests (BPF_PROG_TEST_RUN), netns end-to-end tests");
    // Every test binary runs even after a failure, so one run shows every failure.
    let mut cmd = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "foobar-lb-ebpf",
        "--no-fail-fast",
    ]);
    cmd.env("FOOBAR_LB_BIN", bin)
        .env("FOOBAR_LB_DEB", &deb)
        .arg("--");
    if let Some(f) = &args.filter {
        cmd.arg(f);
    }
    // Network-namespace tests run one at a time (shared/TESTING-NETNS.md).
    cmd.arg("--test-threads=1").stdout(Stdio::piped());
    let mut child = cmd.spawn()?;
    // Echo the output and add up every binary's "test result" line into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let ok = child.wait()?.success();
    println!("{passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// Removes what an earlier, killed run left (namespaces, nginx and daemons, pins, files):
/// only names carrying the tests' unique prefix, of runs whose process is gone.
fn sweep() {
    let swept = foobar_lb_tests::netns::sweep_leftovers();
    if swept.is_empty() {
        println!("test: no leftovers of earlier runs");
    }
    for what in swept {
        println!("test: swept {what}");
    }
}

/// `test result: ok. 11 passed; 0 failed; ...` -> (11, 0).
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ")
                    .strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((num(" passed")?, num(" failed")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_result_lines() {
        let p = super::parse_result;
        assert_eq!(
            p("test result: ok. 11 passed; 0 failed; 0 ignored; 0 measured"),
            Some((11, 0))
        );
        assert_eq!(
            p("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(p("running 3 tests"), None);
    }
}
