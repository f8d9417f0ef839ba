//! The bench's network namespaces: a client, the load balancer, two nginx backends with access
//! logs, and an attacker; plus per-run client source addresses.

use anyhow::Result;
use foobar_lb_tests::netns::Topology;

pub fn topology() -> Result<Topology> {
    let mut topo = Topology::new("bn", 2)?;
    topo.access_log = true;
    topo.start_web(1)?;
    topo.start_web(2)?;
    topo.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    topo.add_client(99)?; // the attacker
    Ok(topo)
}

/// Requests web`i` has logged so far.
pub fn access_count(topo: &Topology, i: usize) -> u64 {
    std::fs::read_to_string(topo.dir.join(format!("web{i}.access")))
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

/// Gives the client a fresh source address so TIME_WAIT of the last run does not interfere.
pub fn fresh_source(topo: &Topology, n: u8) -> Result<String> {
    let src = format!("10.111.0.{}", 60 + n);
    topo.client
        .ip(&["addr", "add", &format!("{src}/24"), "dev", "eth0", "nodad"])?;
    topo.client.ip(&[
        "route",
        "replace",
        "10.111.0.0/24",
        "dev",
        "eth0",
        "src",
        &src,
    ])?;
    Ok(src)
}

/// Drops the backends' return route to `src`, if a peer added one.
pub fn release_source(topo: &Topology, src: &str) {
    for w in &topo.webs {
        let _ = w.ip(&["route", "del", &format!("{src}/32")]);
    }
}
