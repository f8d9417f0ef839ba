//! What the program's parser makes of a frame (`foobar-lb-ebpf/src/parse.rs`), over a byte
//! slice: Ethernet with one VLAN tag, IPv4 honouring IHL, IPv6 skipping a bounded chain of
//! extension headers, then TCP/UDP ports checked against the IP lengths.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foobar_lb_common::verdict;

use super::pending;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;

/// The parser's view of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not IP (or too short to name a destination): the kernel gets it untouched.
    NotIp,
    /// IP, but unusable for balancing: dropped with `reason` if for a VIP.
    Suspect { dst: IpAddr, reason: u32 },
    /// TCP or UDP with a whole header.
    Flow(Packet),
    /// IP, neither TCP nor UDP (ports 0).
    Other(Packet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    /// TCP flags byte, 0 for others.
    pub tcp_flags: u8,
    /// VLAN id when tagged.
    pub vlan: Option<u16>,
    /// Offsets of the IP header and of what follows IPv4 options / IPv6 extension headers.
    pub l3_off: usize,
    pub l4_off: usize,
}

/// A flow: the program's flow-table key (ports in host order here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Packet {
    /// SYN without ACK.
    pub fn syn(&self) -> bool {
        self.tcp_flags & 0x12 == 0x02
    }
    /// FIN or RST.
    pub fn fin(&self) -> bool {
        self.tcp_flags & 0x05 != 0
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Bytes `at..at + n` exist.
fn has(f: &[u8], at: usize, n: usize) -> bool {
    at + n <= f.len()
}

pub fn parse(f: &[u8]) -> Parsed {
    if !has(f, 0, 14) {
        return Parsed::NotIp;
    }
    let mut ether_type = be16(f, 12);
    let mut off = 14;
    let mut vlan = None;
    let mut tags = 0;
    while ether_type == 0x8100 || ether_type == 0x88a8 {
        if tags == pending::MAX_VLAN_TAGS || !has(f, off, 4) {
            return Parsed::NotIp;
        }
        vlan = Some(be16(f, off) & 0x0fff);
        ether_type = be16(f, off + 2);
        off += 4;
        tags += 1;
    }
    match ether_type {
        0x0800 => parse_v4(f, off, vlan),
        0x86dd => parse_v6(f, off, vlan),
        _ => Parsed::NotIp,
    }
}

fn parse_v4(f: &[u8], off: usize, vlan: Option<u16>) -> Parsed {
    if !has(f, off, 20) {
        return Parsed::NotIp;
    }
    let dst = IpAddr::V4(Ipv4Addr::new(
        f[off + 16],
        f[off + 17],
        f[off + 18],
        f[off + 19],
    ));
    let src = IpAddr::V4(Ipv4Addr::new(
        f[off + 12],
        f[off + 13],
        f[off + 14],
        f[off + 15],
    ));
    let suspect = |reason| Parsed::Suspect { dst, reason };
    let hdr_len = (f[off] & 0x0f) as usize * 4;
    let tot_len = be16(f, off + 2) as usize;
    let available = f.len() - off;
    if f[off] >> 4 != 4 || hdr_len < 20 || tot_len < hdr_len || tot_len > available {
        return suspect(verdict::DROP_MALFORMED);
    }
    if be16(f, off + 6) & 0x3fff != 0 {
        return suspect(verdict::DROP_FRAGMENT);
    }
    let proto = f[off + 9];
    l4(
        f,
        src,
        dst,
        proto,
        vlan,
        off,
        off + hdr_len,
        tot_len - hdr_len,
    )
}

fn parse_v6(f: &[u8], off: usize, vlan: Option<u16>) -> Parsed {
    if !has(f, off, 40) {
        return Parsed::NotIp;
    }
    let addr = |at: usize| {
        let b: [u8; 16] = f[at..at + 16].try_into().unwrap();
        IpAddr::V6(Ipv6Addr::from(b))
    };
    let (src, dst) = (addr(off + 8), addr(off + 24));
    let suspect = |reason| Parsed::Suspect { dst, reason };
    let payload_len = be16(f, off + 4) as usize;
    let available = f.len() - off - 40;
    if f[off] >> 4 != 6 || payload_len > available {
        return suspect(verdict::DROP_MALFORMED);
    }
    let mut next = f[off + 6];
    let mut at = off + 40;
    let mut ext_len = 0;
    for _ in 0..pending::MAX_V6_EXT_HEADERS {
        if next != HOPOPTS && next != ROUTING && next != DSTOPTS {
            break;
        }
        if !has(f, at, 2) {
            return suspect(verdict::DROP_MALFORMED);
        }
        next = f[at];
        let len = (f[at + 1] as usize + 1) * 8;
        at += len;
        ext_len += len;
    }
    if next == FRAGMENT {
        return suspect(verdict::DROP_FRAGMENT);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        // Checked before the lengths: an unknown protocol is not the parser's to judge.
        return l4(f, src, dst, next, vlan, off, at, 0);
    }
    if ext_len > payload_len {
        return suspect(verdict::DROP_MALFORMED);
    }
    l4(f, src, dst, next, vlan, off, at, payload_len - ext_len)
}

/// The L4 part: ports for TCP/UDP when the header is whole in the frame and within the IP
/// payload (`l4_len`), a TCP data offset of at least 5 words that fits, a UDP length of at
/// least 8 that fits.
#[allow(clippy::too_many_arguments)]
fn l4(
    f: &[u8],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    vlan: Option<u16>,
    l3_off: usize,
    l4_off: usize,
    l4_len: usize,
) -> Parsed {
    let packet = |sport, dport, tcp_flags| Packet {
        key: FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        },
        tcp_flags,
        vlan,
        l3_off,
        l4_off,
    };
    let malformed = Parsed::Suspect {
        dst,
        reason: verdict::DROP_MALFORMED,
    };
    let (min, flags) = match proto {
        PROTO_TCP => {
            if !has(f, l4_off, 20) {
                return malformed;
            }
            let doff = f[l4_off + 12] >> 4;
            if doff < 5 {
                return malformed;
            }
            (doff as usize * 4, f[l4_off + 13])
        }
        PROTO_UDP => {
            if !has(f, l4_off, 8) {
                return malformed;
            }
            let ulen = be16(f, l4_off + 4) as usize;
            if ulen < 8 || ulen > l4_len {
                return malformed;
            }
            (8, 0)
        }
        _ => return Parsed::Other(packet(0, 0, 0)),
    };
    if l4_len < min {
        return malformed;
    }
    Parsed::Flow(packet(be16(f, l4_off), be16(f, l4_off + 2), flags))
}

/// An ICMPv6 neighbour-discovery message (types 133-137) at the L4 offset.
pub fn is_nd(f: &[u8], p: &Packet) -> bool {
    p.key.proto == PROTO_ICMPV6
        && matches!(p.key.dst, IpAddr::V6(_))
        && has(f, p.l4_off, 2)
        && (133..=137).contains(&f[p.l4_off])
}
