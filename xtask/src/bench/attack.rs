//! Under attack: new-connection-per-request throughput while the attacker floods SYNs to the VIP
//! from a blocked address, with foobar-lb's block list vs an nftables netdev-ingress drop rule
//! (in front of nftables DNAT).

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use foobar_lb::config::XdpMode;
use foobar_lb_tests::{
    daemon::Daemon,
    netns::{run, Topology, VIP4},
};
use serde::{Serialize, Serializer};

use super::{
    peers::{mode_name, Peer, PeerKind},
    topology::{fresh_source, release_source},
    wrk::{wrk, ConnMode, Settings},
};

const ATTACKER_IP: &str = "10.111.0.99";

#[derive(Debug, Clone, Serialize)]
pub struct AttackRow {
    pub defence: Defence,
    pub legit_requests_per_sec: f64,
    pub flood_drops_per_sec: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defence {
    FoobarLbBlockList,
    NftablesIngressDrop,
}

impl Defence {
    /// In the order the bench runs them.
    pub const ALL: [Defence; 2] = [Defence::FoobarLbBlockList, Defence::NftablesIngressDrop];

    pub fn label(self) -> &'static str {
        match self {
            Defence::FoobarLbBlockList => "foobar-lb block list [generic]",
            Defence::NftablesIngressDrop => "nftables ingress drop + DNAT",
        }
    }

    /// Sets up the balancer with the attacker blocked: the peer and its drop count so far.
    fn start(self, topo: &Topology, src: &str) -> Result<(Peer, u64)> {
        match self {
            Defence::FoobarLbBlockList => {
                let list = topo.dir.join("attackers.txt");
                std::fs::write(&list, format!("{ATTACKER_IP}\n"))?;
                let socket = topo.dir.join("control.sock");
                let cfg = topo.write_config(mode_name(XdpMode::Generic), &socket)?;
                let text = std::fs::read_to_string(&cfg)?.replacen(
                    "\n[[service]]",
                    &format!(
                        "\n[firewall]\nblocklists = [\"{}\"]\n\n[[service]]",
                        list.display()
                    ),
                    1,
                );
                std::fs::write(&cfg, text)?;
                let d = Daemon::start(&topo.lb, &cfg, &socket)?;
                let drops = d.stats().verdict("drop_blocklist");
                Ok((Peer::FoobarLb(d), drops))
            }
            Defence::NftablesIngressDrop => {
                let peer = PeerKind::NftablesDnat.start(topo, src)?;
                let rules = format!(
                    "table netdev foobarguard {{\n  chain ingress {{\n    type filter hook ingress device eth0 priority -500;\n    ip saddr {ATTACKER_IP} counter drop\n  }}\n}}\n"
                );
                let file = topo.dir.join("guard.nft");
                std::fs::write(&file, rules)?;
                run(topo.lb.cmd("nft").arg("-f").arg(&file))?;
                Ok((peer, 0))
            }
        }
    }

    fn stop(self, peer: Peer, topo: &Topology) {
        if self == Defence::NftablesIngressDrop {
            let _ = run(topo
                .lb
                .cmd("nft")
                .args(["delete", "table", "netdev", "foobarguard"]));
        }
        peer.stop(topo);
    }
}

// The report's JSON keeps the label, as before the enum.
impl Serialize for Defence {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

pub fn run_attack(topo: &Topology, s: &Settings) -> Result<Vec<AttackRow>> {
    let attacker = &topo.extra[0];
    let mut rows = Vec::new();
    for (n, defence) in Defence::ALL.into_iter().enumerate() {
        let src = fresh_source(topo, 20 + n as u8)?;
        let (peer, drops_before) = defence.start(topo, &src)?;
        println!(
            "bench attack: {}: SYN flood from {ATTACKER_IP} for {} s with wrk...",
            defence.label(),
            s.seconds + 2
        );
        let mut flood = attacker
            .cmd("timeout")
            .args([
                &(s.seconds + 2).to_string(),
                "hping3",
                "--flood",
                "-q",
                "-S",
                "-p",
                "80",
                VIP4,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start hping3")?;
        thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        let (drops0, result) = (
            drop_count(&peer, topo).unwrap_or(drops_before),
            wrk(
                &topo.client,
                &format!("http://{VIP4}/"),
                ConnMode::NewConnectionPerRequest,
                s,
            ),
        );
        let drops1 = drop_count(&peer, topo).unwrap_or(drops0);
        let dt = t0.elapsed().as_secs_f64();
        let _ = flood.wait();
        let (rps, _, _, errors) = result?;
        rows.push(AttackRow {
            defence,
            legit_requests_per_sec: rps,
            flood_drops_per_sec: (drops1 - drops0) as f64 / dt,
            errors,
        });
        defence.stop(peer, topo);
        release_source(topo, &src);
    }
    Ok(rows)
}

/// Flood packets dropped so far by the defence in place.
fn drop_count(peer: &Peer, topo: &Topology) -> Option<u64> {
    match peer {
        Peer::FoobarLb(d) => Some(d.stats().verdict("drop_blocklist")),
        Peer::Nftables => {
            let out = run(topo
                .lb
                .cmd("nft")
                .args(["list", "table", "netdev", "foobarguard"]))
            .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split("packets ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }
        _ => None,
    }
}
