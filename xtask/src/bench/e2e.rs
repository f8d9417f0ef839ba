//! End to end, side by side: wrk from the client through each peer to two nginx backends,
//! keep-alive and one new connection per request. One peer at a time, each with its own client
//! source address (TIME_WAIT).

use std::{collections::BTreeMap, thread, time::Duration};

use anyhow::{Context, Result};
use foobar_lb_tests::netns::{tcp_counter, Topology};
use serde::Serialize;

use super::{
    peers::PeerKind,
    topology::{access_count, fresh_source, release_source},
    wrk::{wrk, ConnMode, Settings},
};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub peer: PeerKind,
    pub mode: ConnMode,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Requests answered by web1 and web2 during the run (from their access logs).
    pub web1: u64,
    pub web2: u64,
}

/// Runs every peer `which` accepts, in [`PeerKind::ALL`]'s order.
pub fn run_peers(
    topo: &Topology,
    s: &Settings,
    which: impl Fn(PeerKind) -> bool,
) -> Result<Vec<Row>> {
    // XDP_TX from the load balancer in native mode needs a program on its bridge port.
    let _pass = topo.attach_lb_peer_pass()?;
    let mut rows = Vec::new();
    for (n, kind) in PeerKind::ALL.into_iter().enumerate() {
        if !which(kind) {
            continue;
        }
        let label = kind.label();
        let src = fresh_source(topo, n as u8)?;
        let peer = kind
            .start(topo, &src)
            .with_context(|| format!("starting {label}"))?;
        let url = peer.target();
        for mode in ConnMode::ALL {
            println!("bench e2e: {label}, {}, {} s...", mode.label(), s.seconds);
            let (a1, a2) = (access_count(topo, 1), access_count(topo, 2));
            let retrans = tcp_counter(&topo.client, "RetransSegs").unwrap_or(0);
            let (rps, p50, p99, errors) = wrk(&topo.client, &url, mode, s)?;
            let retrans = tcp_counter(&topo.client, "RetransSegs").unwrap_or(0) - retrans;
            if retrans > 0 {
                // A lost SYN waits a second: wrk's latency does not show it, its rate does.
                println!("bench e2e: {label}: the client retransmitted {retrans} segments");
            }
            // nginx flushes its access log buffer every second.
            thread::sleep(Duration::from_millis(1200));
            rows.push(Row {
                peer: kind,
                mode,
                requests_per_sec: rps,
                p50_ms: p50,
                p99_ms: p99,
                errors,
                web1: access_count(topo, 1) - a1,
                web2: access_count(topo, 2) - a2,
            });
            // TIME_WAIT of new-connection runs: the next run gets another source address.
            if mode == ConnMode::NewConnectionPerRequest {
                thread::sleep(Duration::from_millis(200));
            }
        }
        let verdicts = peer.verdicts();
        if !verdicts.is_empty() {
            println!("bench e2e: {label}: {verdicts}; {}", veth_errors(topo));
        }
        peer.stop(topo);
        release_source(topo, &src);
    }
    Ok(rows)
}

/// The balancer's veth error counters that are not zero (`ethtool -S eth0`): frames the
/// driver dropped after the program's verdict are lost to it.
fn veth_errors(topo: &Topology) -> String {
    let out = topo.lb.cmd("ethtool").args(["-S", "eth0"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, v)| (k.contains("err") || k.contains("drop")) && *v != "0")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Shares of the two backends in a run, for the "does it really balance" check.
pub fn spread(rows: &[Row]) -> BTreeMap<String, (u64, u64)> {
    rows.iter()
        .map(|r| {
            let key = format!("{} / {}", r.peer.label(), r.mode.label());
            (key, (r.web1, r.web2))
        })
        .collect()
}
