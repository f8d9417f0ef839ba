//! Valid frames of every class, built field by field with correct lengths and checksums:
//! TCP (every flag combination a connection uses, and some it must not), UDP, ICMP and
//! ICMPv6 (echo, errors, neighbour discovery), IPv4 with options, IPv6 with extension headers,
//! fragments, single and double VLAN tags, ARP and other EtherTypes; to VIPs, to non-VIP
//! addresses, in frames for other MACs, from allowed, blocked and martian sources.

use std::net::IpAddr;

use super::{rng::Rng, world::World};
use crate::packet::{checksum, Mac, CLIENT_MAC, LB_MAC};

/// Where a seed's headers are, for mutations that rewrite fields.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Offsets of VLAN tags (their TCI).
    pub tags: Vec<usize>,
    /// Offset of the EtherType that names L3.
    pub ether_type: usize,
    /// IP header offset and whether it is IPv6.
    pub l3: Option<(usize, bool)>,
    /// IPv4 header length (with options) or 40.
    pub l3_len: usize,
    /// IPv6 extension headers (offset of each), a fragment header included.
    pub exts: Vec<usize>,
    /// L4 header offset and protocol.
    pub l4: Option<(usize, u8)>,
}

#[derive(Debug, Clone)]
pub struct Seed {
    pub frame: Vec<u8>,
    pub layout: Layout,
    pub class: &'static str,
}

/// Flags a connection uses (SYNs and ACKs the most).
const VALID_TCP_FLAGS: &[u8] = &[
    0x02, 0x02, 0x02, 0xc2, 0x10, 0x10, 0x10, 0x18, 0x18, 0x11, 0x04, 0x14, 0x12, 0x30, 0x31, 0x22,
];
/// Flags no connection state allows.
const INVALID_TCP_FLAGS: &[u8] = &[0x00, 0x01, 0x03, 0x06, 0x05, 0x29, 0x3f, 0x13, 0x08];

/// A seed frame drawn from `rng`.
pub fn seed(rng: &mut Rng, w: &World) -> Seed {
    let kind = rng.below(100);
    match kind {
        0..=2 => arp(rng),
        3..=4 => other_ether_type(rng),
        _ => ip(rng, w),
    }
}

fn dst_mac(rng: &mut Rng) -> Mac {
    match rng.below(32) {
        0 => [0xff; 6],
        1 => [0x01, 0x00, 0x5e, 0, 0, rng.byte() & 0x7f],
        2 => [0x33, 0x33, 0xff, 0, 0, rng.byte()],
        3 => [0x02, 0, 0, 0, 0, 0x77],
        _ => LB_MAC,
    }
}

fn eth(rng: &mut Rng, f: &mut Vec<u8>, layout: &mut Layout, ether_type: u16) {
    f.extend(dst_mac(rng));
    f.extend(CLIENT_MAC);
    let tags = match rng.below(25) {
        0..=2 => 1,
        3 => 2,
        _ => 0,
    };
    for i in 0..tags {
        let tpid: u16 = if tags == 2 && i == 0 && rng.chance(50) {
            0x88a8
        } else {
            0x8100
        };
        f.extend(tpid.to_be_bytes());
        layout.tags.push(f.len());
        let vid = *rng.pick(&[1u16, 5, 42, 100, 4095, 0]);
        f.extend(vid.to_be_bytes());
    }
    layout.ether_type = f.len();
    f.extend(ether_type.to_be_bytes());
}

fn arp(rng: &mut Rng) -> Seed {
    let mut f = Vec::new();
    let mut layout = Layout::default();
    eth(rng, &mut f, &mut layout, 0x0806);
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend(CLIENT_MAC);
    f.extend([10, 0, 0, 1]);
    f.extend([0; 6]);
    f.extend([10, 0, 0, 100]);
    Seed {
        frame: f,
        layout,
        class: "arp",
    }
}

fn other_ether_type(rng: &mut Rng) -> Seed {
    let mut f = Vec::new();
    let mut layout = Layout::default();
    let et = *rng.pick(&[0x88cc, 0x8847, 0x0842, 0x86dd ^ 1, 0x0801, 0x05dc]);
    eth(rng, &mut f, &mut layout, et);
    let n = rng.range(0, 60);
    f.extend(rng.bytes(n));
    Seed {
        frame: f,
        layout,
        class: "non-ip",
    }
}

/// Source and destination: mostly clients to VIPs, sometimes other hosts, martians, VIPs.
fn addresses(rng: &mut Rng, w: &World, v6: bool) -> (IpAddr, IpAddr) {
    let (vips, hosts, clients, martians) = if v6 {
        (&w.vips6, &w.hosts6, &w.clients6, &w.martians6)
    } else {
        (&w.vips4, &w.hosts4, &w.clients4, &w.martians4)
    };
    let dst = if rng.chance(75) {
        *rng.pick(vips)
    } else {
        *rng.pick(hosts)
    };
    let src = match rng.below(20) {
        0 => *rng.pick(martians),
        1 => *rng.pick(vips),
        _ => *rng.pick(clients),
    };
    (src, dst)
}

fn ip(rng: &mut Rng, w: &World) -> Seed {
    let v6 = rng.chance(40);
    let (mut src, mut dst) = addresses(rng, w, v6);
    // Traffic for a service most of the time, the rest anything.
    let service = if rng.chance(70) {
        let of_family: Vec<_> = w.services.iter().filter(|s| s.0.is_ipv6() == v6).collect();
        let s = **rng.pick(&of_family);
        dst = s.0;
        if rng.chance(90) {
            let clients = if v6 { &w.clients6 } else { &w.clients4 };
            // Mostly the clients no firewall stage stops.
            src = if rng.chance(70) {
                *rng.pick(&clients[..3])
            } else {
                *rng.pick(clients)
            };
        }
        Some(s)
    } else {
        None
    };
    // L4 first: its bytes decide the IP lengths.
    let proto = match (service, rng.below(20)) {
        (Some(s), 0..=17) => s.2,
        (_, 0..=8) => 6,
        (_, 9..=13) => 17,
        (_, 14..=16) => {
            if v6 {
                58
            } else {
                1
            }
        }
        (_, 17) => {
            if v6 {
                1
            } else {
                58
            }
        }
        _ => *rng.pick(&[47u8, 50, 132, 4, 41, 0, 43, 60]),
    };
    let sport = if rng.chance(80) {
        1000 + rng.below(16) as u16
    } else {
        rng.next_u64() as u16
    };
    let dport = match service {
        Some(s) if rng.chance(90) => s.1,
        _ if rng.chance(85) => *rng.pick(&w.ports),
        _ => rng.next_u64() as u16,
    };
    let payload_len = *rng.pick(&[0usize, 0, 1, 12, 100, 600]);
    let mut l4 = Vec::new();
    let class;
    match proto {
        6 => {
            class = if v6 { "v6/tcp" } else { "v4/tcp" };
            let opts: &[u8] = if rng.chance(30) {
                &[2, 4, 5, 0xb4, 1, 1, 4, 2] // MSS, NOP, NOP, SACK permitted
            } else {
                &[]
            };
            l4.extend(sport.to_be_bytes());
            l4.extend(dport.to_be_bytes());
            l4.extend((rng.next_u64() as u32).to_be_bytes());
            l4.extend((rng.next_u64() as u32).to_be_bytes());
            l4.push(((5 + opts.len() / 4) as u8) << 4);
            l4.push(if rng.chance(85) {
                *rng.pick(VALID_TCP_FLAGS)
            } else {
                *rng.pick(INVALID_TCP_FLAGS)
            });
            l4.extend(64240u16.to_be_bytes());
            l4.extend([0, 0, 0, 0]);
            l4.extend(opts);
        }
        17 => {
            class = if v6 { "v6/udp" } else { "v4/udp" };
            l4.extend(sport.to_be_bytes());
            l4.extend(dport.to_be_bytes());
            l4.extend(((8 + payload_len) as u16).to_be_bytes());
            l4.extend([0, 0]);
        }
        1 | 58 => {
            class = if v6 { "v6/icmp" } else { "v4/icmp" };
            let kind = if proto == 58 {
                *rng.pick(&[128u8, 129, 1, 2, 3, 133, 134, 135, 136, 137, 143])
            } else {
                *rng.pick(&[8u8, 0, 3, 11, 5])
            };
            l4.extend([kind, if kind == 3 { 4 } else { 0 }, 0, 0, 0, 0, 0x05, 0xdc]);
        }
        _ => {
            class = if v6 { "v6/other" } else { "v4/other" };
        }
    }
    l4.extend(rng.bytes(payload_len));
    let l4_proto = proto;
    let mut f = Vec::new();
    let mut layout = Layout::default();
    eth(rng, &mut f, &mut layout, if v6 { 0x86dd } else { 0x0800 });
    let l3 = f.len();
    layout.l3 = Some((l3, v6));
    let mut class = class;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let opts: Vec<u8> = match rng.below(20) {
                0 => vec![1, 1, 1, 0],
                1 => vec![7, 7, 4, 0, 0, 0, 0, 0],
                2 => vec![1, 1, 1, 68, 5, 5, 0, 0],
                3 => vec![*rng.pick(&[0x83u8, 0x89]), 7, 4, 10, 0, 0, 1, 0],
                4 => vec![0x94, 4, 0, 0], // router alert
                _ => vec![],
            };
            if !opts.is_empty() {
                class = "v4/options";
            }
            let frag: u16 = match rng.below(24) {
                0 => 0x2000,
                1 => 1 + rng.below(100) as u16, // a later fragment, no MF
                2 => 0x2000 | (1 + rng.below(100) as u16),
                3 | 4 => 0x4000,
                _ => 0,
            };
            if frag & 0x3fff != 0 {
                class = "v4/fragment";
            }
            let ihl = 5 + opts.len() / 4;
            let mut h = vec![0x40 | ihl as u8, 0];
            h.extend(((ihl * 4 + l4.len()) as u16).to_be_bytes());
            h.extend((rng.next_u64() as u16).to_be_bytes());
            h.extend(frag.to_be_bytes());
            h.extend([64, proto, 0, 0]);
            h.extend(s.octets());
            h.extend(d.octets());
            h.extend(&opts);
            let sum = checksum(&h, 0);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            layout.l3_len = h.len();
            f.extend(h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // Extension headers: none mostly, else a chain of up to 5 (maybe a fragment).
            let n = match rng.below(10) {
                0..=5 => 0,
                6 | 7 => 1,
                8 => rng.range(2, 3),
                _ => rng.range(4, 5),
            };
            let mut kinds: Vec<u8> = (0..n).map(|_| *rng.pick(&[0u8, 60, 43, 60])).collect();
            if rng.chance(15) {
                kinds.push(44);
            }
            let mut exts = Vec::new();
            for (i, &k) in kinds.iter().enumerate() {
                let next = kinds.get(i + 1).copied().unwrap_or(proto);
                if k == 44 {
                    let off: u16 = if rng.chance(50) {
                        0x0001
                    } else {
                        rng.below(100) as u16 * 8
                    };
                    exts.push(vec![next, 0]);
                    let e = exts.last_mut().unwrap();
                    e.extend(off.to_be_bytes());
                    e.extend((rng.next_u64() as u32).to_be_bytes());
                } else {
                    let units = if rng.chance(80) { 0 } else { rng.range(1, 3) };
                    let mut e = vec![next, units as u8];
                    let len = (units + 1) * 8;
                    // PadN over the rest.
                    e.extend([1, (len - 4) as u8]);
                    e.extend(vec![0; len - 4]);
                    exts.push(e);
                }
            }
            if !kinds.is_empty() {
                class = if kinds.contains(&44) {
                    "v6/fragment"
                } else {
                    "v6/ext-headers"
                };
            }
            let ext_len: usize = exts.iter().map(Vec::len).sum();
            f.extend([0x60, 0, 0, 0]);
            f.extend(((ext_len + l4.len()) as u16).to_be_bytes());
            f.push(kinds.first().copied().unwrap_or(proto));
            f.push(64);
            f.extend(s.octets());
            f.extend(d.octets());
            layout.l3_len = 40;
            for e in exts {
                layout.exts.push(f.len());
                f.extend(e);
            }
        }
        _ => unreachable!("one family"),
    }
    let l4_off = f.len();
    if matches!(l4_proto, 6 | 17 | 1 | 58) {
        layout.l4 = Some((l4_off, l4_proto));
        fill_l4_checksum(&mut l4, l4_proto, src, dst);
    }
    f.extend(l4);
    if layout.tags.len() == 2 {
        class = "vlan/double";
    } else if !layout.tags.is_empty() {
        class = "vlan/single";
    }
    Seed {
        frame: f,
        layout,
        class,
    }
}

fn fill_l4_checksum(l4: &mut [u8], proto: u8, src: IpAddr, dst: IpAddr) {
    let at = match proto {
        6 => 16,
        17 => 6,
        58 => 2,
        1 => {
            let sum = checksum(l4, 0);
            l4[2..4].copy_from_slice(&sum.to_be_bytes());
            return;
        }
        _ => return,
    };
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
        }
        _ => return,
    }
    pseudo.extend([0, proto]);
    pseudo.extend((l4.len() as u32).to_be_bytes());
    let initial: u32 = pseudo
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    let sum = checksum(l4, initial);
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}
