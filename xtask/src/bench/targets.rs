//! The targets, as ratios computed from one run.

use foobar_lb::config::XdpMode;

use super::{
    attack::{AttackRow, Defence},
    e2e::Row,
    micro,
    peers::PeerKind,
    report::Target,
    wrk::ConnMode,
};

pub fn targets(micro: &[micro::Row], e2e: &[Row], attack: &[AttackRow]) -> Vec<Target> {
    let mut t = Vec::new();
    for m in micro.iter().filter(|m| m.target_ratio.is_some()) {
        let target = m.target_ratio.unwrap();
        t.push(Target {
            what: format!("{} (x XDP_PASS floor)", m.case),
            measured: m.ratio_to_floor,
            target: format!("≤ {target}"),
            met: m.ratio_to_floor <= target,
        });
    }
    let rps = |peer: PeerKind| {
        e2e.iter()
            .find(|r| r.peer == peer && r.mode == ConnMode::NewConnectionPerRequest)
            .map(|r| r.requests_per_sec)
    };
    let ours = PeerKind::FoobarLb(XdpMode::Generic);
    for (what, other, min) in [
        (
            "vs minimal XDP, same mode (generic)",
            PeerKind::MinimalXdp(XdpMode::Generic),
            0.95,
        ),
        ("vs no load balancer", PeerKind::NoLoadBalancer, 0.85),
        ("vs nftables DNAT", PeerKind::NftablesDnat, 1.15),
        ("vs HAProxy TCP", PeerKind::Haproxy, 1.6),
    ] {
        if let (Some(a), Some(b)) = (rps(ours), rps(other)) {
            t.push(Target {
                what: format!("new-connection req/s, {} {what}", ours.label()),
                measured: a / b,
                target: format!("≥ {min}"),
                met: a / b >= min,
            });
        }
    }
    // Issue 11: NAT and full NAT against the kernel doing the same work.
    let keepalive = |peer: PeerKind| {
        e2e.iter()
            .find(|r| r.peer == peer && r.mode == ConnMode::KeepAlive)
            .map(|r| r.requests_per_sec)
    };
    for (ours, other, new_min, keepalive_min) in [
        (
            PeerKind::FoobarLbNat(XdpMode::Generic),
            PeerKind::NftablesDnat,
            1.3,
            1.1,
        ),
        (
            PeerKind::FoobarLbNat(XdpMode::Native),
            PeerKind::NftablesDnat,
            1.3,
            1.1,
        ),
        (
            PeerKind::FoobarLbFullNat(XdpMode::Generic),
            PeerKind::NftablesDnatSnat,
            1.3,
            1.1,
        ),
        (
            PeerKind::FoobarLbFullNat(XdpMode::Native),
            PeerKind::NftablesDnatSnat,
            1.3,
            1.1,
        ),
    ] {
        for (mode, get, min) in [
            (
                "new-connection",
                &rps as &dyn Fn(PeerKind) -> Option<f64>,
                new_min,
            ),
            ("keep-alive", &keepalive, keepalive_min),
        ] {
            if let (Some(a), Some(b)) = (get(ours), get(other)) {
                t.push(Target {
                    what: format!("{mode} req/s, {} vs {}", ours.label(), other.label()),
                    measured: a / b,
                    target: format!("≥ {min}"),
                    met: a / b >= min,
                });
            }
        }
    }
    if let (Some(native), Some(min)) = (
        rps(PeerKind::FoobarLb(XdpMode::Native)),
        rps(PeerKind::MinimalXdp(XdpMode::Native)),
    ) {
        t.push(Target {
            what: "new-connection req/s, foobar-lb [native] vs minimal XDP [native]".into(),
            measured: native / min,
            target: "≥ 0.95".into(),
            met: native / min >= 0.95,
        });
    }
    let legit = |d: Defence| {
        attack
            .iter()
            .find(|a| a.defence == d)
            .map(|a| a.legit_requests_per_sec)
    };
    if let (Some(ours), Some(nft)) = (
        legit(Defence::FoobarLbBlockList),
        legit(Defence::NftablesIngressDrop),
    ) {
        t.push(Target {
            what: "legit req/s under flood, foobar-lb vs nftables".into(),
            measured: ours / nft,
            target: "≥ 2".into(),
            met: ours >= 2.0 * nft,
        });
    }
    t
}
