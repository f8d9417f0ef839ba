//! What the program's parser makes of a frame (`foobar-lb-ebpf/src/parse.rs`), over a byte
//! slice: Ethernet with up to two VLAN tags, IPv4 honouring IHL, IPv6 skipping a bounded chain
//! of extension headers, then TCP/UDP ports checked against the IP lengths; for what cannot be
//! balanced, what it shows the firewall (README "Packet handling", fragments).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foobar_lb_common::verdict;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// [`FlowKey::proto`] of a suspect packet whose L4 protocol is unknown (a later IPv6
/// fragment, a chain longer than the walk, a malformed IP header).
pub const PROTO_UNKNOWN: u8 = 0;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;

/// Hop-by-hop, routing and destination-options headers the parser skips before it gives up
/// on finding the L4 header (a longer chain is `drop_ext_headers` for a VIP).
pub const MAX_V6_EXT_HEADERS: usize = 3;
/// VLAN tags the parser reads; a frame with more is not IP to it.
pub const MAX_VLAN_TAGS: usize = 2;

/// IPv6 extension headers that may precede the L4 header (RFC 8200's registry less ESP and
/// AH, which are protocols of their own): one left after the walk hides the L4 header.
pub fn ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        HOPOPTS | ROUTING | FRAGMENT | DSTOPTS | 135 | 139 | 140 | 253 | 254
    )
}

/// The frame's VLAN tags as the receiving interface judges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tags {
    None,
    /// One 802.1Q/802.1ad tag with this VLAN id.
    One(u16),
    /// Two tags (QinQ): never balanced.
    Two,
}

/// The parser's view of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not IP (or too short to name a destination): the kernel gets it untouched.
    NotIp,
    /// IP, but unusable for balancing: dropped with `reason` if for a VIP in a frame the
    /// interface balances; otherwise it meets the firewall on what it shows.
    Suspect(Suspect),
    /// TCP or UDP with a whole header.
    Flow(Packet),
    /// IP, neither TCP nor UDP (ports 0).
    Other(Packet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    pub reason: u32,
    pub tags: Tags,
    /// What the firewall sees: addresses always; the protocol, or [`PROTO_UNKNOWN`]; ports,
    /// or 0 where unknown.
    pub key: FlowKey,
    /// The protocol and ports in `key` are the real ones (a first fragment with a whole
    /// TCP/UDP header, or a protocol without ports): rules match as for any packet. Otherwise
    /// the ports are unknown (README: a `drop` rule that may apply matches, an `allow` rule
    /// only on fields the packet has).
    pub whole: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    /// TCP flags byte, 0 for others.
    pub tcp_flags: u8,
    pub tags: Tags,
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

impl FlowKey {
    /// The program's key: address words and ports in wire order (as `flow_hash` reads them).
    pub fn wire(&self) -> foobar_lb_common::FlowKey {
        let (src, family) = super::firewall::words(self.src);
        let (dst, _) = super::firewall::words(self.dst);
        foobar_lb_common::FlowKey {
            src,
            dst,
            sport: self.sport.to_be(),
            dport: self.dport.to_be(),
            proto: self.proto,
            family,
            _pad: [0; 2],
        }
    }
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

fn v4(f: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]))
}

fn v6(f: &[u8], at: usize) -> IpAddr {
    let b: [u8; 16] = f[at..at + 16].try_into().unwrap();
    IpAddr::V6(Ipv6Addr::from(b))
}

pub fn parse(f: &[u8]) -> Parsed {
    if !has(f, 0, 14) {
        return Parsed::NotIp;
    }
    let mut ether_type = be16(f, 12);
    let mut off = 14;
    let mut vids = Vec::new();
    while ether_type == 0x8100 || ether_type == 0x88a8 {
        if vids.len() == MAX_VLAN_TAGS || !has(f, off, 4) {
            return Parsed::NotIp;
        }
        vids.push(be16(f, off) & 0x0fff);
        ether_type = be16(f, off + 2);
        off += 4;
    }
    let tags = match vids[..] {
        [] => Tags::None,
        [vid] => Tags::One(vid),
        _ => Tags::Two,
    };
    match ether_type {
        0x0800 => parse_v4(f, off, tags),
        0x86dd => parse_v6(f, off, tags),
        _ => Parsed::NotIp,
    }
}

fn parse_v4(f: &[u8], off: usize, tags: Tags) -> Parsed {
    if !has(f, off, 20) {
        return Parsed::NotIp;
    }
    let (src, dst) = (v4(f, off + 12), v4(f, off + 16));
    let suspect = |reason| {
        let (key, whole) = suspect_view_v4(f, off);
        Parsed::Suspect(Suspect {
            reason,
            tags,
            key,
            whole,
        })
    };
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
    match l4(
        f,
        src,
        dst,
        proto,
        tags,
        off,
        off + hdr_len,
        tot_len - hdr_len,
    ) {
        Some(p) => p,
        None => suspect(verdict::DROP_MALFORMED),
    }
}

/// Skips up to [`MAX_V6_EXT_HEADERS`] hop-by-hop / routing / destination-options headers:
/// (next header, L4 offset, bytes skipped), `None` if one is cut before its length byte.
fn walk_v6(f: &[u8], mut next: u8, mut at: usize) -> Option<(u8, usize, usize)> {
    let mut ext_len = 0;
    for _ in 0..MAX_V6_EXT_HEADERS {
        if next != HOPOPTS && next != ROUTING && next != DSTOPTS {
            break;
        }
        if !has(f, at, 2) {
            return None;
        }
        next = f[at];
        let len = (f[at + 1] as usize + 1) * 8;
        at += len;
        ext_len += len;
    }
    Some((next, at, ext_len))
}

fn parse_v6(f: &[u8], off: usize, tags: Tags) -> Parsed {
    if !has(f, off, 40) {
        return Parsed::NotIp;
    }
    let (src, dst) = (v6(f, off + 8), v6(f, off + 24));
    let suspect = |reason| {
        let (key, whole) = suspect_view_v6(f, off);
        Parsed::Suspect(Suspect {
            reason,
            tags,
            key,
            whole,
        })
    };
    let payload_len = be16(f, off + 4) as usize;
    let available = f.len() - off - 40;
    if f[off] >> 4 != 6 || payload_len > available {
        return suspect(verdict::DROP_MALFORMED);
    }
    let Some((next, at, ext_len)) = walk_v6(f, f[off + 6], off + 40) else {
        return suspect(verdict::DROP_MALFORMED);
    };
    if next == FRAGMENT {
        return suspect(verdict::DROP_FRAGMENT);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        if ipv6_ext(next) {
            return suspect(verdict::DROP_EXT_HEADERS);
        }
        // Checked before the lengths: an unknown protocol is not the parser's to judge.
        return l4(f, src, dst, next, tags, off, at, 0).expect("no ports to read");
    }
    if ext_len > payload_len {
        return suspect(verdict::DROP_MALFORMED);
    }
    match l4(f, src, dst, next, tags, off, at, payload_len - ext_len) {
        Some(p) => p,
        None => suspect(verdict::DROP_MALFORMED),
    }
}

/// The L4 part: ports for TCP/UDP when the header is whole in the frame and within the IP
/// payload (`l4_len`), a TCP data offset of at least 5 words that fits, a UDP length of at
/// least 8 that fits; `None` if malformed.
#[allow(clippy::too_many_arguments)]
fn l4(
    f: &[u8],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    tags: Tags,
    l3_off: usize,
    l4_off: usize,
    l4_len: usize,
) -> Option<Parsed> {
    let packet = |sport, dport, tcp_flags| Packet {
        key: FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        },
        tcp_flags,
        tags,
        l3_off,
        l4_off,
    };
    let (min, flags) = match proto {
        PROTO_TCP => {
            if !has(f, l4_off, 20) {
                return None;
            }
            let doff = f[l4_off + 12] >> 4;
            if doff < 5 {
                return None;
            }
            (doff as usize * 4, f[l4_off + 13])
        }
        PROTO_UDP => {
            if !has(f, l4_off, 8) {
                return None;
            }
            let ulen = be16(f, l4_off + 4) as usize;
            if ulen < 8 || ulen > l4_len {
                return None;
            }
            (8, 0)
        }
        _ => return Some(Parsed::Other(packet(0, 0, 0))),
    };
    if l4_len < min {
        return None;
    }
    Some(Parsed::Flow(packet(
        be16(f, l4_off),
        be16(f, l4_off + 2),
        flags,
    )))
}

/// Ports of a first fragment's TCP/UDP header at `at` if its fixed part (20/8 bytes) is in
/// the frame and within the fragment's `l4_len` bytes of payload.
fn first_fragment_ports(f: &[u8], at: usize, proto: u8, l4_len: usize) -> Option<(u16, u16)> {
    let min = if proto == PROTO_TCP { 20 } else { 8 };
    (has(f, at, min) && l4_len >= min).then(|| (be16(f, at), be16(f, at + 2)))
}

fn view(src: IpAddr, dst: IpAddr, proto: u8, ports: Option<(u16, u16)>) -> (FlowKey, bool) {
    let (sport, dport) = ports.unwrap_or((0, 0));
    (
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        },
        ports.is_some(),
    )
}

/// What an unusable IPv4 packet shows the firewall (README: a first fragment whose TCP/UDP
/// header is whole is judged on its ports; a later fragment keeps its protocol, not its
/// ports; a malformed header shows only its addresses).
fn suspect_view_v4(f: &[u8], off: usize) -> (FlowKey, bool) {
    let (src, dst) = (v4(f, off + 12), v4(f, off + 16));
    let hdr_len = (f[off] & 0x0f) as usize * 4;
    let tot_len = be16(f, off + 2) as usize;
    let available = f.len() - off;
    if f[off] >> 4 != 4 || hdr_len < 20 || tot_len < hdr_len || tot_len > available {
        return view(src, dst, PROTO_UNKNOWN, None);
    }
    let proto = f[off + 9];
    let ported = proto == PROTO_TCP || proto == PROTO_UDP;
    let frag = be16(f, off + 6);
    let first_fragment = frag & 0x3fff != 0 && frag & 0x1fff == 0;
    if !ported {
        return view(src, dst, proto, Some((0, 0)));
    }
    if !first_fragment {
        // A later fragment, or not a fragment at all (its L4 header is malformed).
        return view(src, dst, proto, None);
    }
    let ports = first_fragment_ports(f, off + hdr_len, proto, tot_len - hdr_len);
    view(src, dst, proto, ports)
}

/// The same for IPv6: a later fragment does not show even its protocol (reassembly takes it
/// from the first), nor does a chain longer than the walk.
fn suspect_view_v6(f: &[u8], off: usize) -> (FlowKey, bool) {
    let (src, dst) = (v6(f, off + 8), v6(f, off + 24));
    let unknown = view(src, dst, PROTO_UNKNOWN, None);
    let payload_len = be16(f, off + 4) as usize;
    let available = f.len() - off - 40;
    if f[off] >> 4 != 6 || payload_len > available {
        return unknown;
    }
    let Some((mut next, mut at, mut ext_len)) = walk_v6(f, f[off + 6], off + 40) else {
        return unknown;
    };
    let mut fragment = false;
    if next == FRAGMENT {
        // Next header, reserved, offset << 3 | M.
        if !has(f, at, 4) || be16(f, at + 2) & 0xfff8 != 0 {
            return unknown;
        }
        fragment = true;
        next = f[at];
        at += 8;
        ext_len += 8;
    }
    if ipv6_ext(next) {
        return unknown;
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return view(src, dst, next, Some((0, 0)));
    }
    if !fragment || ext_len > payload_len {
        return view(src, dst, next, None);
    }
    let ports = first_fragment_ports(f, at, next, payload_len - ext_len);
    view(src, dst, next, ports)
}

/// An ICMPv6 neighbour-discovery message (types 133-137) at the L4 offset.
pub fn is_nd(f: &[u8], p: &Packet) -> bool {
    p.key.proto == PROTO_ICMPV6
        && p.key.dst.is_ipv6()
        && has(f, p.l4_off, 2)
        && (133..=137).contains(&f[p.l4_off])
}

/// For an ICMP error README names (IPv4 destination unreachable, any code; ICMPv6 destination
/// unreachable or packet too big) quoting a TCP/UDP packet the error's destination sent: the
/// flow-table key of that packet's connection (the quoted packet reversed). The quoted headers
/// are read as far as the frame has them (their own lengths are not checked: the program reads
/// the quoted ports wherever the frame still holds them).
pub fn icmp_error_flow(f: &[u8], p: &Packet) -> Option<FlowKey> {
    let k = &p.key;
    let at = p.l4_off;
    if !has(f, at, 2) {
        return None;
    }
    let kind = f[at];
    let (src, dst, proto, ports_at) = if k.dst.is_ipv4() {
        if k.proto != PROTO_ICMP || kind != 3 || !has(f, at + 8, 20) {
            return None;
        }
        let ip = at + 8;
        let ihl = (f[ip] & 0x0f) as usize * 4;
        if f[ip] >> 4 != 4 || ihl < 20 {
            return None;
        }
        (v4(f, ip + 12), v4(f, ip + 16), f[ip + 9], ip + ihl)
    } else {
        if k.proto != PROTO_ICMPV6 || (kind != 1 && kind != 2) || !has(f, at + 8, 40) {
            return None;
        }
        let ip = at + 8;
        (v6(f, ip + 8), v6(f, ip + 24), f[ip + 6], ip + 40)
    };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || src != k.dst || !has(f, ports_at, 4) {
        return None;
    }
    Some(FlowKey {
        src: dst,
        dst: src,
        sport: be16(f, ports_at + 2),
        dport: be16(f, ports_at),
        proto,
    })
}
