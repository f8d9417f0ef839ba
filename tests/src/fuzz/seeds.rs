//! Valid frames of every class, built field by field with correct lengths and checksums:
//! TCP (every flag combination a connection uses, and some it must not), UDP, ICMP and
//! ICMPv6 (echo, errors, neighbour discovery), ICMP errors quoting the services' connections,
//! IPv4 with options, IPv6 with extension headers and chains longer than the parser walks,
//! fragments (to VIPs, and to host addresses with the port rules' ports), one, two and three
//! VLAN tags (VLANs the interface balances and others), ARP and other EtherTypes; to VIPs, to
//! non-VIP addresses, in frames for other MACs, from allowed, blocked and martian sources.

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
    /// The IP header an ICMP error quotes: offset and whether it is IPv6.
    pub quoted: Option<(usize, bool)>,
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
        5..=10 => fragment_to_host(rng, w),
        11..=16 => icmp_error(rng, w),
        17..=20 => long_chain(rng, w),
        _ => ip(rng, w, &Shape::default()),
    }
}

/// What [`ip`] is told to build instead of drawing it.
#[derive(Debug, Clone, Default)]
struct Shape {
    v6: Option<bool>,
    src: Option<IpAddr>,
    /// A destination (then the frame is not drawn as a service's traffic).
    dst: Option<IpAddr>,
    proto: Option<u8>,
    dport: Option<u16>,
    /// IPv4 flags+offset, or IPv6 fragment header offset+M (the header is added).
    frag: Option<u16>,
    /// Cut the L4 header short (a tiny first fragment).
    cut_l4: bool,
    /// IPv6 hop-by-hop/routing/destination-options headers (before any fragment header),
    /// and one more extension header after them (e.g. mobility, 135).
    exts: Option<(usize, Option<u8>)>,
    class: Option<&'static str>,
}

/// A fragment (first, middle, last, tiny first; IPv4 or IPv6) to a host address, mostly, from
/// the sources and to the ports the firewall rules name: the rules judge it on what it shows.
fn fragment_to_host(rng: &mut Rng, w: &World) -> Seed {
    let v6 = rng.chance(40);
    let (hosts, vips) = if v6 {
        (&w.hosts6, &w.vips6)
    } else {
        (&w.hosts4, &w.vips4)
    };
    let dst = if rng.chance(85) {
        *rng.pick(hosts)
    } else {
        *rng.pick(vips)
    };
    let sources: &[&str] = if v6 {
        &["fd00:bad::9", "2001:db8::5", "fd00::1", "fd00:dead::7"]
    } else {
        &[
            "198.51.100.4",
            "192.0.2.9",
            "10.66.0.1",
            "172.16.5.5",
            "100.64.1.1",
            "203.0.113.200",
            "10.1.2.3",
            "10.99.1.1",
        ]
    };
    let src = rng.pick(sources).parse().unwrap();
    let icmp = if v6 { 58 } else { 1 };
    let proto = *rng.pick(&[6u8, 6, 6, 17, 17, icmp, 47]);
    let dport = *rng.pick(&[22u16, 23, 8050, 5353, 443, 80, 53]);
    let n = 1 + rng.below(100) as u16;
    let (frag, cut_l4) = match rng.below(5) {
        0 => (if v6 { 0x0001 } else { 0x2000 }, false),
        1 => (if v6 { 0x0001 } else { 0x2000 }, true),
        2 => (if v6 { n << 3 | 1 } else { 0x2000 | n }, false),
        3 => (if v6 { n << 3 } else { n }, false),
        // IPv6: an atomic fragment (offset 0, no M); IPv4: DF, not a fragment.
        _ => (if v6 { 0 } else { 0x4000 }, false),
    };
    ip(
        rng,
        w,
        &Shape {
            v6: Some(v6),
            src: Some(src),
            dst: Some(dst),
            proto: Some(proto),
            dport: Some(dport),
            frag: Some(frag),
            cut_l4,
            class: Some("frag/host"),
            ..Shape::default()
        },
    )
}

/// An IPv6 packet whose extension-header chain is longer than the parser walks (or just as
/// long), maybe ending in a header it does not walk (mobility, HIP, shim6, experimental) or a
/// fragment header: to VIPs and hosts.
fn long_chain(rng: &mut Rng, w: &World) -> Seed {
    let n = rng.range(2, 7);
    let last = if rng.chance(40) {
        Some(*rng.pick(&[135u8, 139, 140, 253, 254]))
    } else {
        None
    };
    let frag = rng
        .chance(20)
        .then(|| *rng.pick(&[0x0001u16, 0x0100, 0x0000]));
    let dst = if rng.chance(30) {
        Some(*rng.pick(&w.hosts6))
    } else {
        None
    };
    ip(
        rng,
        w,
        &Shape {
            v6: Some(true),
            dst,
            frag,
            exts: Some((n, last)),
            class: Some("v6/long-chain"),
            ..Shape::default()
        },
    )
}

/// An ICMP error (IPv4 destination unreachable, any code; ICMPv6 destination unreachable or
/// packet too big; sometimes a kind that is not forwarded) to a VIP, quoting the reply a
/// backend sent on one of the services' connections as the frames draw them (so often a
/// connection in the flow table), sometimes another connection or address.
fn icmp_error(rng: &mut Rng, w: &World) -> Seed {
    let v6 = rng.chance(40);
    let of_family: Vec<_> = w.services.iter().filter(|s| s.0.is_ipv6() == v6).collect();
    let &(vip, port, proto) = *rng.pick(&of_family);
    let clients = if v6 { &w.clients6 } else { &w.clients4 };
    // The clients and source ports most frames use.
    let client = *rng.pick(&clients[..3]);
    let cport = 1000 + rng.below(16) as u16;
    let quoted_src = if rng.chance(90) {
        vip
    } else {
        *rng.pick(if v6 { &w.vips6 } else { &w.vips4 })
    };
    let quoted_proto = if rng.chance(90) {
        proto
    } else {
        *rng.pick(&[6u8, 17, 1])
    };
    let (kind, code) = if v6 {
        (*rng.pick(&[1u8, 1, 2, 2, 3, 4, 128]), rng.below(5) as u8)
    } else {
        (
            *rng.pick(&[3u8, 3, 3, 11, 12, 5, 8]),
            *rng.pick(&[4u8, 3, 1, 0, 13]),
        )
    };
    // The quoted packet: its IP header and the first 8 bytes of its L4 header (RFC 792), or
    // as much as fits (RFC 4443).
    let mut q = Vec::new();
    let mut l4 = Vec::new();
    l4.extend(port.to_be_bytes());
    l4.extend(cport.to_be_bytes());
    l4.extend((rng.next_u64() as u32).to_be_bytes());
    let l4_more = if v6 { 12 + rng.below(20) } else { 0 };
    l4.extend(rng.bytes(l4_more));
    let orig_len = 40 + rng.below(1400);
    match (quoted_src, client) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0];
            h.extend((orig_len as u16).to_be_bytes());
            h.extend((rng.next_u64() as u16).to_be_bytes());
            h.extend([0x40, 0, 64, quoted_proto, 0, 0]);
            h.extend(s.octets());
            h.extend(d.octets());
            let sum = checksum(&h, 0);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            q.extend(h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            q.extend([0x60, 0, 0, 0]);
            q.extend((orig_len as u16).to_be_bytes());
            q.extend([quoted_proto, 64]);
            q.extend(s.octets());
            q.extend(d.octets());
        }
        _ => unreachable!("one family"),
    }
    q.extend(l4);
    let router: IpAddr = if v6 { "2001:db8:ff::1" } else { "192.0.2.254" }
        .parse()
        .unwrap();
    let src = match rng.below(10) {
        0 => *rng.pick(clients),
        1 => *rng.pick(if v6 { &w.martians6 } else { &w.martians4 }),
        _ => router,
    };
    let dst = if rng.chance(90) {
        vip
    } else {
        *rng.pick(if v6 { &w.hosts6 } else { &w.hosts4 })
    };
    let mut msg = vec![kind, code, 0, 0];
    let rest: u32 = if kind == 2 || (kind == 3 && code == 4) {
        *rng.pick(&[1280u32, 1400, 576])
    } else {
        0
    };
    msg.extend(rest.to_be_bytes());
    msg.extend(q);
    let mut seed = ip(
        rng,
        w,
        &Shape {
            v6: Some(v6),
            src: Some(src),
            dst: Some(dst),
            proto: Some(if v6 { 58 } else { 1 }),
            class: Some(if v6 { "v6/icmp-error" } else { "v4/icmp-error" }),
            ..Shape::default()
        },
    );
    // Replace the drawn ICMP message with this one, the lengths and checksums made right.
    let Some((l4_off, _)) = seed.layout.l4 else {
        return seed;
    };
    let (l3, _) = seed.layout.l3.expect("IP");
    let f = &mut seed.frame;
    f.truncate(l4_off);
    fill_l4_checksum(&mut msg, if v6 { 58 } else { 1 }, src, dst);
    f.extend(&msg);
    if v6 {
        let plen = (f.len() - l3 - 40) as u16;
        f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    } else {
        let ihl = seed.layout.l3_len;
        let tot = (f.len() - l3) as u16;
        f[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
        f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let sum = checksum(&f[l3..l3 + ihl], 0);
        f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    }
    seed.layout.quoted = Some((l4_off + 8, v6));
    seed
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
        4 if rng.chance(25) => 3,
        _ => 0,
    };
    for i in 0..tags {
        let tpid: u16 = if tags >= 2 && i == 0 && rng.chance(50) {
            0x88a8
        } else {
            0x8100
        };
        f.extend(tpid.to_be_bytes());
        layout.tags.push(f.len());
        // The interface balances VLANs 0, 42 and 100 (world.rs).
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

fn ip(rng: &mut Rng, w: &World, shape: &Shape) -> Seed {
    let v6 = rng.chance(40);
    let v6 = shape.v6.unwrap_or(v6);
    let (mut src, mut dst) = addresses(rng, w, v6);
    // Traffic for a service most of the time, the rest anything.
    let service = if rng.chance(70) && shape.dst.is_none() {
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
    dst = shape.dst.unwrap_or(dst);
    src = shape.src.unwrap_or(src);
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
    let proto = shape.proto.unwrap_or(proto);
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
    let dport = shape.dport.unwrap_or(dport);
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
    if shape.cut_l4 {
        let keep = rng.below(8);
        l4.truncate(keep);
    }
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
            let frag = shape.frag.unwrap_or(frag);
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
            let (n, last) = shape.exts.unwrap_or((n, None));
            let mut kinds: Vec<u8> = (0..n).map(|_| *rng.pick(&[0u8, 60, 43, 60])).collect();
            kinds.extend(last);
            let frag = rng.chance(15);
            if shape.frag.is_some() || frag && shape.exts.is_none() {
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
                    let off = shape.frag.unwrap_or(off);
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
    if let Some(c) = shape.class {
        class = c;
    }
    if layout.tags.len() == 3 {
        class = "vlan/triple";
    } else if layout.tags.len() == 2 {
        class = "vlan/double";
    } else if !layout.tags.is_empty() && shape.class.is_none() {
        class = "vlan/single";
    }
    Seed {
        frame: f,
        layout,
        class,
    }
}

/// Fills the L4 checksum, if the header holds its checksum field (a tiny first fragment's
/// may not).
fn fill_l4_checksum(l4: &mut [u8], proto: u8, src: IpAddr, dst: IpAddr) {
    let at = match proto {
        6 => 16,
        17 => 6,
        1 | 58 => 2,
        _ => return,
    };
    if l4.len() < at + 2 {
        return;
    }
    let at = match proto {
        1 => {
            let sum = checksum(l4, 0);
            l4[2..4].copy_from_slice(&sum.to_be_bytes());
            return;
        }
        _ => at,
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
