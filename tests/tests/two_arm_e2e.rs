//! A two-arm balancer end to end: the client on one interface of the balancer (`eth1`, a
//! subnet of its own), unmodified nginx backends on the other (`eth0`), for NAT and full NAT.
//! Every frame the balancer forwards, either way, leaves by the interface it did not come in
//! on: XDP_REDIRECT, counted as `tx_redirect` (and never as `tx` or `tx_nat_reply`). Native
//! mode is the redirect path of real NICs (veth needs an XDP program on the redirect target's
//! peer: TESTING-NETNS.md); generic mode is the one the demo uses on veth. Every loop is
//! bounded; every namespace is removed by its guard on every exit path.

use std::time::Duration;

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{Topology, SNAT4, SNAT6, VIP4},
    root_object_and_binary,
    routed::{ARM_CLIENT4, ARM_CLIENT6},
    traffic::{assert_balanced_and_intact, assert_no_drops, wait_answers},
};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Nat,
    FullNat,
}

/// Round robin over both families, a 16 MiB download per family verified by SHA-256, and the
/// counters and access logs that show which path the frames took and what the backends saw.
fn two_arm(tag: &str, mode: Mode, xdp_mode: &str) {
    if !root_object_and_binary() {
        return;
    }
    let mut topo = Topology::new(tag, 2).expect("topology");
    match mode {
        Mode::Nat => topo.nat_backends().unwrap(),
        Mode::FullNat => topo.fullnat_setup().unwrap(),
    }
    topo.two_arm().unwrap();
    topo.access_log = true;
    topo.start_webs_nginx(8080).unwrap();
    let _pass = (xdp_mode == "native").then(|| topo.attach_two_arm_peer_pass().unwrap());
    let socket = topo.dir.join("control.sock");
    let config = match mode {
        Mode::Nat => topo.write_nat_config(xdp_mode, &socket, 8080, ""),
        Mode::FullNat => topo.write_fullnat_config(xdp_mode, &socket, 8080, ""),
    }
    .and_then(|c| topo.two_arm_config(c))
    .unwrap();
    let mut daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    wait_answers(&topo.client, &format!("http://{VIP4}/"), 10);
    foobar_lb_tests::load::wait_backends_up(&daemon);

    let n = 20;
    assert_balanced_and_intact(&topo, &topo.client, n);
    let st = daemon.stats();
    // 16 MiB twice is > 20,000 frames of replies alone.
    assert!(
        st.verdict("tx_redirect") > 20_000,
        "{:?}",
        st.verdict("tx_redirect")
    );
    assert_eq!(
        st.verdict("tx"),
        0,
        "a frame went back out of its interface"
    );
    assert_eq!(
        st.verdict("tx_nat_reply"),
        0,
        "a reply went back out of its interface"
    );
    assert_no_drops(&daemon);
    // What the backends saw: the client itself under NAT, the SNAT addresses under full NAT.
    std::thread::sleep(Duration::from_millis(1500));
    let sources: &[&str] = match mode {
        Mode::Nat => &[ARM_CLIENT4, ARM_CLIENT6],
        Mode::FullNat => &[SNAT4, SNAT6],
    };
    for i in 1..=2 {
        let log = std::fs::read_to_string(topo.dir.join(format!("web{i}.access"))).unwrap();
        assert!(log.lines().count() >= n / 2, "web{i}: {log}");
        for line in log.lines() {
            assert!(
                sources.iter().any(|s| line.starts_with(&format!("{s} "))),
                "web{i} saw another source: {line}"
            );
        }
    }
    assert!(daemon.stop());
}

#[test]
fn two_arm_nat_native() {
    two_arm("tn", Mode::Nat, "native");
}

#[test]
fn two_arm_fullnat_native() {
    two_arm("tf", Mode::FullNat, "native");
}

#[test]
fn two_arm_nat_generic() {
    two_arm("tg", Mode::Nat, "generic");
}

#[test]
fn two_arm_fullnat_generic() {
    two_arm("th", Mode::FullNat, "generic");
}
