//! `foobar-lb bird-config`: prints one node's bird.conf (see `foobar_lb::bird`).

use std::net::IpAddr;

use clap::Args as ClapArgs;
use foobar_lb::bird::BgpNode;

#[derive(ClapArgs)]
pub struct Args {
    /// This node's IPv4 address on the routers' segment (BGP source and BIRD's router id).
    #[arg(long)]
    local: IpAddr,
    /// A router to announce to (repeat for several; an IPv6 address gets an IPv6 session).
    #[arg(long = "router", required = true)]
    routers: Vec<IpAddr>,
    /// This node's AS number (the same on every node, so routers treat the paths as equal).
    #[arg(long, default_value_t = 65001)]
    local_as: u32,
    /// The routers' AS number.
    #[arg(long, default_value_t = 65000)]
    router_as: u32,
    /// The interface facing the routers.
    #[arg(long)]
    interface: String,
    /// Where the daemon keeps the VIPs (`[announce] interface`).
    #[arg(long, default_value = "lbvips")]
    announce_interface: String,
    /// BFD interval in ms (a dead node is noticed after three); 0 turns BFD off.
    #[arg(long, default_value_t = 100)]
    bfd_ms: u32,
    /// BGP hold time in seconds.
    #[arg(long, default_value_t = 3)]
    hold: u16,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let node = BgpNode {
        local: args.local,
        routers: args.routers,
        local_as: args.local_as,
        router_as: args.router_as,
        announce_interface: args.announce_interface,
        interface: args.interface,
        bfd_ms: args.bfd_ms,
        hold_s: args.hold,
    };
    print!("{}", node.render()?);
    Ok(())
}
