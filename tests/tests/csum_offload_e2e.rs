//! NAT and full NAT with the senders' checksum offload on and off (issue 11: "correct whether
//! the frame arrives with a full checksum or a partial one"). With `tx` offload on, a veth
//! hands its peer the frame with only the pseudo-header's sum in the TCP checksum field
//! (CHECKSUM_PARTIAL: the sum is finished by whoever transmits it last, or never if it stays
//! in this host). Each case downloads 8 MiB per family, verified by SHA-256: the backend's
//! offload decides the data frames', the client's that of its requests and ACKs. What holds
//! and why: DEVELOPING.md "Checksum offload and XDP". Every loop is bounded; every namespace
//! is removed by its guard on every exit path.

use std::time::{Duration, Instant};

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{run, sha256, Netns, Topology, VIP4, VIP6},
    root_object_and_binary,
    traffic::assert_no_drops,
};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Nat,
    FullNat,
}

fn offload(ns: &Netns, on: bool) {
    run(ns
        .cmd("ethtool")
        .args(["-K", "eth0", "tx", if on { "on" } else { "off" }]))
    .unwrap();
}

/// A NAT or full-NAT balancer in `xdp_mode` in front of two nginx, up and checked; `want`
/// is the SHA-256 of `/big8` on both.
struct Setup {
    topo: Topology,
    daemon: Daemon,
    want: String,
    _pass: Option<foobar_lb::dataplane::AuxProgram>,
}

fn setup(tag: &str, mode: Mode, xdp_mode: &str) -> Option<Setup> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, 2).expect("topology");
    match mode {
        Mode::Nat => topo.nat_backends().unwrap(),
        Mode::FullNat => topo.fullnat_setup().unwrap(),
    }
    for i in 1..=2 {
        topo.start_nginx(topo.web(i), &format!("web{i}"), 8080)
            .unwrap();
    }
    let pass = (xdp_mode == "native").then(|| topo.attach_lb_peer_pass().unwrap());
    let socket = topo.dir.join("control.sock");
    let config = match mode {
        Mode::Nat => topo.write_nat_config(xdp_mode, &socket, 8080, ""),
        Mode::FullNat => topo.write_fullnat_config(xdp_mode, &socket, 8080, ""),
    }
    .unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while foobar_lb_tests::traffic::try_get(&topo.client, &format!("http://{VIP4}/")).is_err() {
        assert!(Instant::now() < deadline, "the VIP never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    foobar_lb_tests::load::wait_backends_up(&daemon);
    let want = topo.big_file("big8", 8).unwrap();
    Some(Setup {
        topo,
        daemon,
        want,
        _pass: pass,
    })
}

impl Setup {
    /// Sets the client's and the web servers' `tx` checksum offload, then downloads `/big8`
    /// over both families (`secs` each at most); returns what went wrong.
    fn transfers(&self, client_on: bool, backend_on: bool, secs: u32) -> Vec<String> {
        offload(&self.topo.client, client_on);
        for i in 1..=2 {
            offload(self.topo.web(i), backend_on);
        }
        let mut failed = Vec::new();
        for url in [
            format!("http://{VIP4}/big8"),
            format!("http://[{VIP6}]/big8"),
        ] {
            let out = self.topo.dir.join("download");
            let _ = std::fs::remove_file(&out);
            let got = try_download(&self.topo.client, &url, &out, secs);
            if got.as_deref() != Some(self.want.as_str()) {
                failed.push(format!(
                    "client tx {client_on}, backend tx {backend_on}: {url}: {got:?}"
                ));
            }
        }
        failed
    }
}

/// The four combinations of the client's and the web servers' `tx` offload; what failed.
fn every_combination(s: &Setup) -> Vec<String> {
    let mut failed = Vec::new();
    for (client_on, backend_on) in [(false, false), (true, false), (false, true), (true, true)] {
        failed.extend(s.transfers(client_on, backend_on, 30));
    }
    failed
}

/// Generic mode: the frame stays an skb through the program, its partial checksum state with
/// it, and the balancer leaves the new pseudo-header's sum for whoever transmits it last.
/// First the receivers finish nothing (a host trusts a partial checksum); then the bridge's
/// ports towards the client and the web servers have `tx` offload off, so the bridge finishes
/// every partial checksum in software from what the balancer left (with the incremental
/// update of a full checksum applied to a partial one, every download with a partial side
/// failed here).
fn generic(tag: &str, mode: Mode) {
    let Some(s) = setup(tag, mode, "generic") else {
        return;
    };
    let mut failed = every_combination(&s);
    for port in ["c", "w1", "w2"] {
        run(s.topo.bridge.cmd("ethtool").args(["-K", port, "tx", "off"])).unwrap();
    }
    failed.extend(every_combination(&s));
    assert!(failed.is_empty(), "{mode:?}: {failed:#?}");
    assert_no_drops(&s.daemon);
}

/// Native mode: the program sees the frame's bytes only, and what it sends (XDP_TX) reaches
/// the receiver as a new frame with no checksum state, verified there: the balancer sends a
/// partial checksum finished (before, every download with a partial side failed).
fn native(tag: &str, mode: Mode) {
    let Some(s) = setup(tag, mode, "native") else {
        return;
    };
    let failed = every_combination(&s);
    assert!(failed.is_empty(), "{mode:?}: {failed:#?}");
    assert_no_drops(&s.daemon);
}

/// The SHA-256 of `url` downloaded into `out`, or None if curl failed within `secs`.
fn try_download(client: &Netns, url: &str, out: &std::path::Path, secs: u32) -> Option<String> {
    let ok = client
        .cmd("curl")
        .args(["-s", "-g", "--max-time", &secs.to_string(), "-o"])
        .arg(out)
        .arg(url)
        .status()
        .ok()?
        .success();
    ok.then(|| sha256(out).ok()).flatten()
}

#[test]
fn nat_generic_with_and_without_checksum_offload() {
    generic("og", Mode::Nat);
}

#[test]
fn fullnat_generic_with_and_without_checksum_offload() {
    generic("fg", Mode::FullNat);
}

#[test]
fn nat_native_with_and_without_checksum_offload() {
    native("on", Mode::Nat);
}

#[test]
fn fullnat_native_with_and_without_checksum_offload() {
    native("fn", Mode::FullNat);
}
