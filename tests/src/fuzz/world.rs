//! The provisioned state the fuzzer runs against, and the address and port pools its frames
//! draw from: several services (IPv4 and IPv6, TCP and UDP, round robin and Maglev), many
//! backends with draining and down ones, services with no usable backend, firewall rules with
//! allow/drop, ports and protocols, a block list with an allow-rule exception, the VIP policy
//! `drop` and a VLAN allow-list on the interface.

use std::net::IpAddr;

use foobar_lb::{
    desired::BackendState,
    firewall::{Action, RuleConfig, RuleProtocol},
};

use crate::{model::firewall::filter_bit, packet::Mac};

pub const CONFIG: &str = r#"
interfaces = ["lo"]
vlans = { lo = [0, 42, 100] }

[[service]]
name = "www"
vip = "10.0.0.100"
port = 80
[[service.backend]]
address = "10.0.0.11"
[[service.backend]]
address = "10.0.0.12"
[[service.backend]]
address = "10.0.0.13"
weight = 3
[[service.backend]]
address = "10.0.0.14"
role = "backup"

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"
[[service.backend]]
address = "10.0.0.21"
[[service.backend]]
address = "10.0.0.22"

[[service]]
name = "www6"
vip = "fd00::100"
port = 80
[[service.backend]]
address = "fd00::11"
[[service.backend]]
address = "fd00::12"
[[service.backend]]
address = "fd00::13"

[[service]]
name = "dns6"
vip = "fd00::100"
port = 53
protocol = "udp"
[[service.backend]]
address = "fd00::21"

[[service]]
name = "empty"
vip = "10.0.0.101"
port = 80

[[service]]
name = "api"
vip = "10.0.0.102"
port = 443
[[service.backend]]
address = "10.0.0.31"
[[service.backend]]
address = "10.0.0.32"
[[service.backend]]
address = "10.0.0.33"
[[service.backend]]
address = "10.0.0.34"
[[service.backend]]
address = "10.0.0.35"
[[service.backend]]
address = "10.0.0.36"
[[service.backend]]
address = "10.0.0.37"
[[service.backend]]
address = "10.0.0.38"
[[service.backend]]
address = "10.0.0.39"
[[service.backend]]
address = "10.0.0.40"
[[service.backend]]
address = "10.0.0.41"
[[service.backend]]
address = "10.0.0.42"
[[service.backend]]
address = "10.0.0.43"
[[service.backend]]
address = "10.0.0.44"
[[service.backend]]
address = "10.0.0.45"
[[service.backend]]
address = "10.0.0.46"

[[service]]
name = "gone6"
vip = "fd00::102"
port = 443
[[service.backend]]
address = "fd00::31"

[[service]]
name = "mag"
vip = "10.0.0.104"
port = 8443
scheduler = "maglev"
[[service.backend]]
address = "10.0.0.51"
[[service.backend]]
address = "10.0.0.52"
weight = 2
[[service.backend]]
address = "10.0.0.53"
[[service.backend]]
address = "10.0.0.54"
weight = 3

[[service]]
name = "mag6"
vip = "fd00::104"
port = 8443
protocol = "udp"
scheduler = "maglev"
maglev_table_size = 1021
[[service.backend]]
address = "fd00::51"
[[service.backend]]
address = "fd00::52"
[[service.backend]]
address = "fd00::53"
"#;

/// Backends set to a state other than the config's after provisioning.
pub const STATES: &[(&str, &str, BackendState)] = &[
    ("www", "10.0.0.12", BackendState::Draining),
    ("api", "10.0.0.45", BackendState::Down),
    ("api", "10.0.0.46", BackendState::Draining),
    ("gone6", "fd00::31", BackendState::Down),
    ("mag", "10.0.0.53", BackendState::Draining),
];

/// Every backend's MAC: unique, so the output frame names the backend.
pub fn macs() -> Vec<(String, Mac)> {
    let config = foobar_lb::config::Config::parse(CONFIG).expect("fuzz config");
    config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .enumerate()
        .map(|(i, a)| (a.to_string(), [0x02, 0xbe, 0, 0, (i >> 8) as u8, i as u8]))
        .collect()
}

fn rule(action: Action, source: &str, protocol: RuleProtocol, port: &str, dst: &str) -> RuleConfig {
    RuleConfig {
        action,
        source: source.into(),
        protocol,
        port: port.into(),
        destination: dst.into(),
    }
}

pub fn rules() -> Vec<RuleConfig> {
    use Action::*;
    use RuleProtocol::*;
    vec![
        rule(Allow, "192.0.2.0/24", Any, "any", "any"),
        rule(Drop, "198.51.100.0/24", Tcp, "22", "any"),
        rule(Drop, "any", Tcp, "23", "any"),
        rule(Drop, "10.66.0.0/16", Udp, "any", "10.0.0.100"),
        rule(Drop, "10.77.0.0/16", Icmp, "any", "any"),
        rule(Drop, "fd00:bad::/32", Any, "any", "any"),
        rule(Drop, "any", Tcp, "8000-8100", "10.0.0.9"),
        rule(Allow, "203.0.113.128/25", Tcp, "443", "any"),
        rule(Drop, "any", Udp, "5000-5999", "fd00::/16"),
        // A protocol without ports: matches fragments of known protocol either way.
        rule(Allow, "100.64.0.0/10", Udp, "any", "any"),
        rule(Drop, "172.16.0.0/12", Udp, "any", "10.0.0.10"),
    ]
}

pub const BLOCKLIST: &str =
    "203.0.113.0/24\n10.99.0.0/16\n192.0.2.0/24\nfd00:dead::/48\n2001:db8:bad::/48\n";

/// Prefixes fuzz events add to and remove from the block list: each blocks a client that
/// otherwise gets through, so established flows meet the change.
pub const TOGGLED_BLOCKS: &[&str] = &["10.1.0.0/16", "2001:db8::/64", "172.16.5.5/32"];

/// Address and port pools for frames.
pub struct World {
    pub vips4: Vec<IpAddr>,
    pub vips6: Vec<IpAddr>,
    /// Not VIPs: the host's own and other addresses, including ones sharing a VIP's prefilter
    /// bit.
    pub hosts4: Vec<IpAddr>,
    pub hosts6: Vec<IpAddr>,
    pub clients4: Vec<IpAddr>,
    pub clients6: Vec<IpAddr>,
    pub martians4: Vec<IpAddr>,
    pub martians6: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// (VIP, port, protocol) of every service.
    pub services: Vec<(IpAddr, u16, u8)>,
}

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// The first address counting up from `start` that is not a VIP but shares a VIP's
/// prefilter bit.
pub fn prefilter_collision(start: IpAddr, vips: &[IpAddr]) -> IpAddr {
    let bits: Vec<u32> = vips.iter().map(|v| filter_bit(*v)).collect();
    let next = |a: IpAddr| match a {
        IpAddr::V4(v) => IpAddr::from(std::net::Ipv4Addr::from(u32::from(v) + 1)),
        IpAddr::V6(v) => IpAddr::from(std::net::Ipv6Addr::from(u128::from(v) + 1)),
    };
    let mut a = start;
    while vips.contains(&a) || !bits.contains(&filter_bit(a)) {
        a = next(a);
    }
    a
}

impl World {
    pub fn new() -> World {
        let vips4 = addrs(&["10.0.0.100", "10.0.0.101", "10.0.0.102", "10.0.0.104"]);
        let vips6 = addrs(&["fd00::100", "fd00::102", "fd00::104"]);
        let all: Vec<IpAddr> = vips4.iter().chain(&vips6).copied().collect();
        let mut hosts4 = addrs(&["10.0.0.9", "10.0.0.10", "10.0.0.103"]);
        hosts4.push(prefilter_collision("10.0.1.0".parse().unwrap(), &all));
        let mut hosts6 = addrs(&["fd00::9", "fd00::101"]);
        hosts6.push(prefilter_collision("fd00::1:0".parse().unwrap(), &all));
        World {
            vips4,
            vips6,
            hosts4,
            hosts6,
            clients4: addrs(&[
                "10.0.0.1",
                "10.1.2.3",
                "172.16.5.5",
                "100.64.1.1",
                "203.0.113.7",
                "203.0.113.200",
                "10.99.1.1",
                "192.0.2.9",
                "198.51.100.4",
                "10.66.0.1",
                "10.77.1.1",
            ]),
            clients6: addrs(&[
                "fd00::1",
                "2001:db8::5",
                "2001:db8:1::7",
                "fd00:dead::7",
                "2001:db8:bad::1",
                "fd00:bad::9",
            ]),
            martians4: addrs(&[
                "127.0.0.1",
                "0.0.0.1",
                "224.0.0.5",
                "240.1.1.1",
                "255.255.255.255",
            ]),
            martians6: addrs(&["::1", "::", "ff02::1", "::ffff:10.0.0.1"]),
            ports: vec![80, 53, 443, 8443, 22, 23, 8080, 8050, 5353, 0, 65535],
            services: foobar_lb::config::Config::parse(CONFIG)
                .expect("fuzz config")
                .services
                .iter()
                .map(|s| (s.vip, s.port, s.protocol.number()))
                .collect(),
        }
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}
