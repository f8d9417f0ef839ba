//! `foobar-lb keepalived-config`: prints one node's keepalived.conf (see `foobar_lb::keepalived`).

use std::{net::IpAddr, path::Path};

use anyhow::Context;
use clap::Args as ClapArgs;
use foobar_lb::keepalived::PairNode;

#[derive(ClapArgs)]
pub struct Args {
    /// The interface that carries the VIPs (the one XDP runs on).
    #[arg(long)]
    interface: String,
    /// A virtual address the pair serves (repeat for several; both families may be mixed).
    #[arg(long = "vip", required = true)]
    vips: Vec<IpAddr>,
    /// A full-NAT service's SNAT address (its `snat`), moved with the VIPs: the backends
    /// answer it (repeat for several).
    #[arg(long = "snat")]
    snat: Vec<IpAddr>,
    /// ADDRESS[/PREFIX]: an address NAT backends route clients through (their default
    /// gateway), moved with the VIPs (repeat for several; default prefix /32 or /128).
    #[arg(long = "gateway", value_parser = parse_gateway)]
    gateways: Vec<(IpAddr, u8)>,
    /// The other node's address on the interface (repeat for more nodes).
    #[arg(long = "peer", required = true)]
    peers: Vec<IpAddr>,
    /// This node's priority, 1..=254: the higher one wins the first election.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    priority: u8,
    /// VRRP virtual router id, 1..=255, the same on both nodes and unique on the segment.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=255))]
    router_id: u8,
    /// Advertisement interval in ms (VRRPv3: multiples of 10; takeover after about 3.5 of them).
    #[arg(long, default_value_t = 200)]
    advert_ms: u32,
    /// VRRPv2 simple password: only with whole-second --advert-ms and IPv4 peers.
    #[arg(long)]
    auth_pass: Option<String>,
    /// This node's own address for the adverts (default: the interface's primary address).
    #[arg(long)]
    source: Option<IpAddr>,
    /// The foobar-lb binary keepalived runs for the readiness check (default: this one).
    #[arg(long)]
    binary: Option<String>,
}

/// `ADDRESS[/PREFIX]`.
fn parse_gateway(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let len = match len {
        Some(l) => l
            .parse()
            .map_err(|_| format!("{l:?} is not a prefix length"))?,
        None if addr.is_ipv4() => 32,
        None => 128,
    };
    Ok((addr, len))
}

/// `socket` is the global `--socket`: the readiness check asks the daemon there.
pub fn run(socket: &Path, args: Args) -> anyhow::Result<()> {
    let binary = match args.binary {
        Some(b) => b,
        None => std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .context("cannot tell where this binary is: pass --binary")?
            .to_string_lossy()
            .into_owned(),
    };
    let node = PairNode {
        interface: args.interface,
        vips: args.vips,
        snat: args.snat,
        gateways: args.gateways,
        peers: args.peers,
        source: args.source,
        priority: args.priority,
        router_id: args.router_id,
        advert_ms: args.advert_ms,
        auth_pass: args.auth_pass,
        binary,
        socket: socket.to_string_lossy().into_owned(),
    };
    print!("{}", node.render()?);
    Ok(())
}
