//! The systemd unit shipped in `deploy/systemd/`: `systemd-analyze verify` accepts it (with
//! ExecStart pointing at the built binary), reload is SIGHUP, and the hardening stays.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies_reloads_by_sighup_and_stays_hardened() {
    if !foobar_lb_tests::binary() {
        return;
    }
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("FOOBAR_LB_BIN").is_none(),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    assert!(v.status.success());
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/systemd/foobar-lb.service"),
    )
    .unwrap();
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf",
        "NoNewPrivileges=yes",
        "RuntimeDirectory=foobar-lb",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lost {line:?}");
    }
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    assert!(
        !caps.contains("CAP_SYS_MODULE") && !caps.contains("CAP_DAC_OVERRIDE"),
        "{caps}"
    );
    // Verified as installed, but with this build's binary.
    let dir = std::env::temp_dir().join(foobar_lb_tests::netns::unique_prefix("su"));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = foobar_lb_tests::daemon::bin();
    let path = dir.join("foobar-lb.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/foobar-lb", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}
