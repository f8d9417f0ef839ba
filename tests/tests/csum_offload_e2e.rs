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

/// Generic mode: the frame stays an skb through the program, its partial checksum state with
/// it, and the receiving host trusts that state: every combination arrives intact.
fn generic(tag: &str, mode: Mode) {
    let Some(s) = setup(tag, mode, "generic") else {
        return;
    };
    let mut failed = Vec::new();
    for (client_on, backend_on) in [(false, false), (true, false), (false, true), (true, true)] {
        failed.extend(s.transfers(client_on, backend_on, 30));
    }
    assert!(failed.is_empty(), "{mode:?}: {failed:#?}");
    assert_no_drops(&s.daemon);
}

/// Native mode: the program sees the frame's bytes only; what it sends (XDP_TX) reaches the
/// receiver as a new frame with no checksum state, whose partial checksum it then rejects.
/// So native mode on veth needs `tx` offload off on the senders (README "Attach mode"): this
/// states both halves, so the README stays true.
fn native(tag: &str, mode: Mode) {
    let Some(s) = setup(tag, mode, "native") else {
        return;
    };
    let failed = s.transfers(false, false, 30);
    assert!(failed.is_empty(), "{mode:?}: {failed:#?}");
    for (client_on, backend_on) in [(true, false), (false, true)] {
        let failed = s.transfers(client_on, backend_on, 4);
        assert_eq!(
            failed.len(),
            2,
            "{mode:?}, client tx {client_on}, backend tx {backend_on}: a frame with a partial \
             checksum forwarded in native mode was accepted: README \"Attach mode\" is out \
             of date"
        );
    }
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
fn nat_native_needs_checksum_offload_off() {
    native("on", Mode::Nat);
}

#[test]
fn fullnat_native_needs_checksum_offload_off() {
    native("fn", Mode::FullNat);
}
