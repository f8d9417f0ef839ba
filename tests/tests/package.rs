//! The Debian package (`cargo xtask package`; `cargo xtask test` builds one of the binary
//! under test and names it in FOOBAR_LB_DEB): installs on this machine, ships what it says
//! (binary, unit, conffile, man page, completions), the installed binary runs the installed
//! configuration's checks and a daemon, and a purge leaves nothing behind.

use std::{path::Path, process::Command};

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{Topology, VIP4},
    traffic::try_get,
};

fn dpkg(args: &[&str]) -> std::process::Output {
    Command::new("dpkg").args(args).output().expect("dpkg")
}

const FILES: &[&str] = &[
    "/usr/bin/foobar-lb",
    "/lib/systemd/system/foobar-lb.service",
    "/etc/foobar-lb/foobar-lb.toml",
    "/usr/share/man/man1/foobar-lb.1.gz",
    "/usr/share/bash-completion/completions/foobar-lb",
    "/usr/share/doc/foobar-lb/README.md",
    "/usr/share/foobar-lb/prometheus/foobar-lb-rules.yml",
];

#[test]
fn the_package_installs_runs_and_purges_cleanly() {
    let Some(deb) = std::env::var_os("FOOBAR_LB_DEB") else {
        assert!(
            std::env::var_os("FOOBAR_LB_BIN").is_none(),
            "FOOBAR_LB_DEB is not set: `cargo xtask test` builds the package"
        );
        eprintln!("skipped: no package (run `cargo xtask test`, which builds one)");
        return;
    };
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    // A leftover of a killed run goes first.
    let _ = dpkg(&["--purge", "foobar-lb"]);
    let out = dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dpkg -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = std::panic::catch_unwind(|| {
        for f in FILES {
            assert!(Path::new(f).exists(), "{f} was not installed");
        }
        let status = dpkg(&["-s", "foobar-lb"]);
        assert!(String::from_utf8_lossy(&status.stdout).contains("Status: install ok installed"));
        let info = Command::new("/usr/bin/foobar-lb")
            .arg("info")
            .output()
            .unwrap();
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        // The unit as installed, with the installed binary.
        let verify = Command::new("systemd-analyze")
            .args(["verify", "/lib/systemd/system/foobar-lb.service"])
            .output()
            .unwrap();
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        // The unit's ExecStartPre on the shipped configuration, where eth0 exists; then the
        // installed binary serving a test configuration.
        let topo = Topology::new("pk", 1).expect("topology");
        topo.start_web(1).unwrap();
        let check = topo
            .lb
            .cmd("/usr/bin/foobar-lb")
            .args(["check-config", "/etc/foobar-lb/foobar-lb.toml"])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let socket = topo.dir.join("control.sock");
        let config = topo.write_config("generic", &socket).unwrap();
        std::env::set_var("FOOBAR_LB_BIN", "/usr/bin/foobar-lb");
        let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
        assert_eq!(
            try_get(&topo.client, &format!("http://{VIP4}/")).as_deref(),
            Ok("web1")
        );
        drop(daemon);
    });
    let out = dpkg(&["--purge", "foobar-lb"]);
    assert!(
        out.status.success(),
        "dpkg --purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in FILES {
        assert!(!Path::new(f).exists(), "{f} is left after purge");
    }
    assert!(!Path::new("/etc/foobar-lb").exists());
    if let Err(e) = installed {
        std::panic::resume_unwind(e);
    }
}
