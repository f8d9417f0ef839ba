//! The peers foobar-lb is compared with, side by side in the same namespaces.

use std::{process::Command, thread, time::Duration};

use anyhow::{Context, Result};
use foobar_lb::{config::XdpMode, dataplane::AuxProgram};
use foobar_lb_tests::{
    daemon::Daemon,
    netns::{in_netns, run, web4, Netns, Topology, LB4, SNAT4, VIP4},
};
use serde::{Serialize, Serializer};

/// What sits between the client and the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// The client talks to web1 directly: the ceiling.
    NoLoadBalancer,
    /// An XDP program that only rewrites the MAC to web1's: the floor for any XDP balancer.
    MinimalXdp(XdpMode),
    FoobarLb(XdpMode),
    NftablesDnat,
    /// foobar-lb with `forwarding = "nat"` (port 80 to 80): the same work as nftables DNAT.
    FoobarLbNat(XdpMode),
    /// nftables DNAT as above, and the source masqueraded to the balancer's address: what
    /// full NAT does, in the kernel.
    NftablesDnatSnat,
    /// foobar-lb with `forwarding = "fullnat"`: the same work as nftables DNAT + masquerade.
    FoobarLbFullNat(XdpMode),
    Haproxy,
}

impl PeerKind {
    /// In the order the bench runs them.
    pub const ALL: [PeerKind; 12] = [
        PeerKind::NoLoadBalancer,
        PeerKind::MinimalXdp(XdpMode::Generic),
        PeerKind::FoobarLb(XdpMode::Generic),
        PeerKind::MinimalXdp(XdpMode::Native),
        PeerKind::FoobarLb(XdpMode::Native),
        PeerKind::NftablesDnat,
        PeerKind::FoobarLbNat(XdpMode::Generic),
        PeerKind::FoobarLbNat(XdpMode::Native),
        PeerKind::NftablesDnatSnat,
        PeerKind::FoobarLbFullNat(XdpMode::Generic),
        PeerKind::FoobarLbFullNat(XdpMode::Native),
        PeerKind::Haproxy,
    ];

    /// The NAT comparison (`bench --nat-only`): the kernel's NAT and foobar-lb's, both kinds,
    /// and the ceilings beside them: no balancer at all, and the minimal XDP program (which
    /// touches only the client's packets, where a NAT touches both directions).
    pub fn is_nat(self) -> bool {
        matches!(
            self,
            PeerKind::NoLoadBalancer
                | PeerKind::MinimalXdp(_)
                | PeerKind::NftablesDnat
                | PeerKind::FoobarLbNat(_)
                | PeerKind::NftablesDnatSnat
                | PeerKind::FoobarLbFullNat(_)
        )
    }

    pub fn label(self) -> String {
        match self {
            PeerKind::NoLoadBalancer => "no load balancer".into(),
            PeerKind::MinimalXdp(m) => format!("minimal XDP (fixed MAC) [{}]", mode_name(m)),
            PeerKind::FoobarLb(m) => format!("foobar-lb [{}]", mode_name(m)),
            PeerKind::NftablesDnat => "nftables DNAT (numgen inc mod 2)".into(),
            PeerKind::FoobarLbNat(m) => format!("foobar-lb NAT [{}]", mode_name(m)),
            PeerKind::NftablesDnatSnat => "nftables DNAT + masquerade".into(),
            PeerKind::FoobarLbFullNat(m) => format!("foobar-lb full NAT [{}]", mode_name(m)),
            PeerKind::Haproxy => "HAProxy (TCP, roundrobin)".into(),
        }
    }

    /// Sets the peer up; `src` is the client's address for this run.
    pub fn start(self, topo: &Topology, src: &str) -> Result<Peer> {
        Ok(match self {
            PeerKind::NoLoadBalancer => Peer::None,
            PeerKind::FoobarLb(mode) => {
                let socket = topo.dir.join("control.sock");
                let cfg = topo.write_config(mode_name(mode), &socket)?;
                Peer::FoobarLb(Daemon::start(&topo.lb, &cfg, &socket)?)
            }
            PeerKind::MinimalXdp(mode) => {
                let mac = mac_of(topo.web(1))?;
                let prog = in_netns(&topo.lb.name, || {
                    let mut p = AuxProgram::fixed_mac(mac)?;
                    p.attach("eth0", mode)?;
                    Ok(p)
                })?;
                Peer::XdpMin(prog)
            }
            PeerKind::FoobarLbNat(mode) => {
                let socket = topo.dir.join("control.sock");
                let cfg = topo.write_nat_config(mode_name(mode), &socket, 80, "")?;
                // As for nftables: the backends answer the client through the balancer.
                for w in &topo.webs {
                    w.ip(&["route", "replace", &format!("{src}/32"), "via", LB4])?;
                }
                Peer::FoobarLb(Daemon::start(&topo.lb, &cfg, &socket)?)
            }
            PeerKind::FoobarLbFullNat(mode) => {
                // The SNAT address is the balancer's; the FIB lookup needs forwarding on. The
                // backends answer it on their segment: no route through the balancer. Each
                // full-NAT peer has its own SNAT address, as each peer has its own client
                // address: the backends hold the last run's 4-tuples in TIME_WAIT for a
                // minute, and the next daemon starts with no memory of their ports.
                let snat = match mode {
                    XdpMode::Native => SNAT4_NATIVE,
                    _ => SNAT4,
                };
                topo.lb
                    .ip(&["addr", "add", &format!("{snat}/32"), "dev", "eth0"])?;
                topo.lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
                let socket = topo.dir.join("control.sock");
                let cfg = topo.write_fullnat_config(mode_name(mode), &socket, 80, "")?;
                let text = std::fs::read_to_string(&cfg)?.replace(SNAT4, snat);
                std::fs::write(&cfg, text)?;
                Peer::FoobarLbFullNat(Daemon::start(&topo.lb, &cfg, &socket)?, snat)
            }
            PeerKind::Haproxy => start_haproxy(topo)?,
            PeerKind::NftablesDnat | PeerKind::NftablesDnatSnat => {
                topo.lb.sysctl("net.ipv4.ip_forward", "1")?;
                // The source becomes the balancer's own address (masquerade), as full NAT's
                // becomes a SNAT address.
                let post = if self == PeerKind::NftablesDnatSnat {
                    format!(
                        "  chain post {{\n    type nat hook postrouting priority 100;\n    ip daddr {{ {}, {} }} tcp dport 80 masquerade\n  }}\n",
                        web4(1),
                        web4(2)
                    )
                } else {
                    String::new()
                };
                let rules = format!(
                    "table ip foobarbench {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    ip daddr {VIP4} tcp dport 80 dnat to numgen inc mod 2 map {{ 0 : {}, 1 : {} }}\n  }}\n{post}}}\n",
                    web4(1),
                    web4(2)
                );
                let file = topo.dir.join("dnat.nft");
                std::fs::write(&file, rules)?;
                run(topo.lb.cmd("nft").arg("-f").arg(&file))?;
                if self == PeerKind::NftablesDnat {
                    // Client IP is preserved: backends answer it through the load balancer.
                    for w in &topo.webs {
                        w.ip(&["route", "replace", &format!("{src}/32"), "via", LB4])?;
                    }
                }
                Peer::Nftables
            }
        })
    }
}

// The report's JSON keeps the label, as before the enum.
impl Serialize for PeerKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

/// A running peer: says where clients connect, tears itself down in `stop`.
pub enum Peer {
    None,
    FoobarLb(Daemon),
    /// Also removes its SNAT address and turns forwarding off again.
    FoobarLbFullNat(Daemon, &'static str),
    XdpMin(AuxProgram),
    Haproxy(u32),
    Nftables,
}

impl Peer {
    pub fn target(&self) -> String {
        match self {
            Peer::None => format!("http://{}/", web4(1)),
            _ => format!("http://{VIP4}/"),
        }
    }

    /// foobar-lb's verdict counters that are not zero, for the log: a peer that drops what
    /// it should forward is measured waiting for retransmissions, not forwarding.
    pub fn verdicts(&self) -> String {
        match self {
            Peer::FoobarLb(d) | Peer::FoobarLbFullNat(d, _) => d.verdicts_text(),
            _ => String::new(),
        }
    }

    pub fn stop(self, topo: &Topology) {
        match self {
            Peer::Haproxy(pid) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                thread::sleep(Duration::from_millis(200));
            }
            Peer::Nftables => {
                let _ = run(topo
                    .lb
                    .cmd("nft")
                    .args(["delete", "table", "ip", "foobarbench"]));
                let _ = topo.lb.sysctl("net.ipv4.ip_forward", "0");
            }
            Peer::FoobarLb(mut d) => {
                d.stop();
            }
            Peer::FoobarLbFullNat(mut d, snat) => {
                d.stop();
                let _ = topo
                    .lb
                    .ip(&["addr", "del", &format!("{snat}/32"), "dev", "eth0"]);
                let _ = topo.lb.sysctl("net.ipv4.conf.all.forwarding", "0");
            }
            Peer::XdpMin(p) => drop(p),
            Peer::None => {}
        }
    }
}

/// The native full-NAT peer's SNAT address (the generic one has [`SNAT4`]).
const SNAT4_NATIVE: &str = "10.111.0.249";

fn start_haproxy(topo: &Topology) -> Result<Peer> {
    let cfg = topo.dir.join("haproxy.cfg");
    let pid = topo.dir.join("haproxy.pid");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend www\n  bind {VIP4}:80\n  default_backend webs\n\
             backend webs\n  balance roundrobin\n  server web1 {}:80\n  server web2 {}:80\n",
            web4(1),
            web4(2)
        ),
    )?;
    run(topo
        .lb
        .cmd("haproxy")
        .args(["-D", "-f"])
        .arg(&cfg)
        .arg("-p")
        .arg(&pid))?;
    thread::sleep(Duration::from_millis(300));
    let pid: u32 = std::fs::read_to_string(&pid)?.trim().parse()?;
    Ok(Peer::Haproxy(pid))
}

fn mac_of(ns: &Netns) -> Result<[u8; 6]> {
    let json = String::from_utf8(run(ns.cmd("ip").args(["-j", "link", "show", "eth0"]))?.stdout)?;
    let addr = json
        .split("\"address\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no MAC in ip -j link")?;
    foobar_lb::neighbor::parse_mac(addr).context("bad MAC")
}

/// The `xdp_mode` value of the daemon's config, also the label suffix.
pub fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Generic => "generic",
        XdpMode::Native => "native",
        XdpMode::Auto => "auto",
    }
}

#[cfg(test)]
mod tests {
    use super::PeerKind;

    // Labels are the report's keys: results from before the enum must stay comparable.
    #[test]
    fn labels_unchanged() {
        let labels: Vec<String> = PeerKind::ALL.iter().map(|p| p.label()).collect();
        assert_eq!(
            labels,
            [
                "no load balancer",
                "minimal XDP (fixed MAC) [generic]",
                "foobar-lb [generic]",
                "minimal XDP (fixed MAC) [native]",
                "foobar-lb [native]",
                "nftables DNAT (numgen inc mod 2)",
                "foobar-lb NAT [generic]",
                "foobar-lb NAT [native]",
                "nftables DNAT + masquerade",
                "foobar-lb full NAT [generic]",
                "foobar-lb full NAT [native]",
                "HAProxy (TCP, roundrobin)",
            ]
        );
        assert_eq!(
            serde_json::to_string(&PeerKind::Haproxy).unwrap(),
            "\"HAProxy (TCP, roundrobin)\""
        );
    }
}
