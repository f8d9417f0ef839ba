//! Header parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4 (honouring IHL) or IPv6 (skipping
//! common extension headers), then TCP or UDP ports. Every read is bounds-checked against
//! `data_end`.

use core::mem;

use aya_ebpf::programs::XdpContext;
use foobar_lb_common::{verdict, Addr, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

/// What the parser found.
pub enum Parsed {
    /// Not TCP/UDP over IP: not ours to judge, the kernel stack gets it untouched.
    NotOurs,
    /// Unusable for balancing (malformed, truncated, fragmented): drop with `reason` if `dst`
    /// is a VIP, pass otherwise.
    Suspect { family: u8, dst: Addr, reason: u32 },
    /// A complete 5-tuple.
    Flow(Packet),
    /// IP but neither TCP nor UDP (ICMP, ...): ports are zero. Firewall rules apply; never
    /// balanced.
    Other(Packet),
}

pub struct Packet {
    /// Exactly the flow-table key; its (dst, dport, proto, family) prefix is the service key.
    pub key: FlowKey,
    /// A TCP SYN without ACK: the first packet of a new connection.
    pub syn: bool,
    /// A TCP FIN or RST: the connection is closing.
    pub fin: bool,
    /// Offsets from the frame start of the IP header and of the L4 header (after IPv4 options or
    /// IPv6 extension headers): what a rewrite that touches L3/L4 fields needs.
    #[allow(dead_code)] // read by rewrites other than DSR (none yet)
    pub l3_off: u16,
    #[allow(dead_code)]
    pub l4_off: u16,
}

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv4 flags+offset: "more fragments" bit and the 13-bit offset.
const IPV4_MF_OFFSET_MASK: u16 = 0x3fff;

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::NotOurs;
    };
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    if ether_type == EtherType::Ieee8021q as u16 || ether_type == EtherType::Ieee8021ad as u16 {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, offset) else {
            return Parsed::NotOurs;
        };
        ether_type = unsafe { (*vlan).ether_type };
        offset += mem::size_of::<VlanHdr>();
    }
    if ether_type == EtherType::Ipv4 as u16 {
        parse_v4(ctx, offset)
    } else if ether_type == EtherType::Ipv6 as u16 {
        parse_v6(ctx, offset)
    } else {
        Parsed::NotOurs
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, offset: usize) -> Parsed {
    // Too short to hold a destination address: cannot be judged as ours.
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return Parsed::NotOurs;
    };
    let ip = unsafe { &*ip };
    let dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    let suspect = |reason| Parsed::Suspect {
        family: FAMILY_V4,
        dst,
        reason,
    };
    let hdr_len = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let available = ctx.data_end() - ctx.data() - offset;
    if ip.vihl >> 4 != 4 || hdr_len < Ipv4Hdr::LEN || tot_len < hdr_len || tot_len > available {
        return suspect(verdict::DROP_MALFORMED);
    }
    if u16::from_be_bytes(ip.frags) & IPV4_MF_OFFSET_MASK != 0 {
        return suspect(verdict::DROP_FRAGMENT);
    }
    let proto = ip.proto;
    let src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Other(Packet {
            key: FlowKey {
                src,
                dst,
                sport: 0,
                dport: 0,
                proto,
                family: FAMILY_V4,
                _pad: [0; 2],
            },
            syn: false,
            fin: false,
            l3_off: offset as u16,
            l4_off: (offset + hdr_len) as u16,
        });
    }
    match ports(ctx, offset + hdr_len, proto, tot_len - hdr_len) {
        Some((sport, dport, syn, fin)) => Parsed::Flow(Packet {
            key: FlowKey {
                src,
                dst,
                sport,
                dport,
                proto,
                family: FAMILY_V4,
                _pad: [0; 2],
            },
            syn,
            fin,
            l3_off: offset as u16,
            l4_off: (offset + hdr_len) as u16,
        }),
        None => suspect(verdict::DROP_MALFORMED),
    }
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Parsed::NotOurs;
    };
    let ip = unsafe { &*ip };
    let dst = addr6(&ip.dst_addr);
    let suspect = |reason| Parsed::Suspect {
        family: FAMILY_V6,
        dst,
        reason,
    };
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let available = ctx.data_end() - ctx.data() - offset - Ipv6Hdr::LEN;
    if ip.vcf[0] >> 4 != 6 || payload_len > available {
        return suspect(verdict::DROP_MALFORMED);
    }
    let mut next = ip.next_hdr;
    let mut l4 = offset + Ipv6Hdr::LEN;
    let mut ext_len = 0usize;
    // Skip up to three hop-by-hop / routing / destination-options headers (bounded loop).
    for _ in 0..3 {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS {
            break;
        }
        let Some(ext) = ptr_at::<[u8; 2]>(ctx, l4) else {
            return suspect(verdict::DROP_MALFORMED);
        };
        let ext = unsafe { *ext };
        next = ext[0];
        let len = (ext[1] as usize + 1) * 8;
        l4 += len;
        ext_len += len;
    }
    if next == IPPROTO_FRAGMENT {
        return suspect(verdict::DROP_FRAGMENT);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return Parsed::Other(Packet {
            key: FlowKey {
                src: addr6(&ip.src_addr),
                dst,
                sport: 0,
                dport: 0,
                proto: next,
                family: FAMILY_V6,
                _pad: [0; 2],
            },
            syn: false,
            fin: false,
            l3_off: offset as u16,
            l4_off: l4 as u16,
        });
    }
    if ext_len > payload_len {
        return suspect(verdict::DROP_MALFORMED);
    }
    match ports(ctx, l4, next, payload_len - ext_len) {
        Some((sport, dport, syn, fin)) => Parsed::Flow(Packet {
            key: FlowKey {
                src: addr6(&ip.src_addr),
                dst,
                sport,
                dport,
                proto: next,
                family: FAMILY_V6,
                _pad: [0; 2],
            },
            syn,
            fin,
            l3_off: offset as u16,
            l4_off: l4 as u16,
        }),
        None => suspect(verdict::DROP_MALFORMED),
    }
}

/// Source and destination ports (network byte order) of a TCP or UDP header at `offset`, if the
/// whole fixed header is present both in the frame and within the IP payload (`l4_len`).
///
/// The frame bounds check comes first on purpose: done after the `l4_len` check, LLVM proves it
/// redundant from the earlier IP length checks and drops it, and the verifier rejects the read.
#[inline(always)]
fn ports(
    ctx: &XdpContext,
    offset: usize,
    proto: u8,
    l4_len: usize,
) -> Option<(u16, u16, bool, bool)> {
    let (hdr, min, syn, fin) = if proto == PROTO_TCP {
        let tcp = unsafe { &*ptr_at::<[u8; 20]>(ctx, offset)? };
        // Data offset below 5 words is not a TCP header.
        if tcp[12] >> 4 < 5 {
            return None;
        }
        // SYN set and ACK clear: a new connection. FIN or RST: it is closing.
        let flags = tcp[13];
        (
            [tcp[0], tcp[1], tcp[2], tcp[3]],
            20,
            flags & 0x12 == 0x02,
            flags & 0x05 != 0,
        )
    } else {
        let udp = unsafe { &*ptr_at::<[u8; 8]>(ctx, offset)? };
        ([udp[0], udp[1], udp[2], udp[3]], 8, false, false)
    };
    if l4_len < min {
        return None;
    }
    Some((
        u16::from_ne_bytes([hdr[0], hdr[1]]),
        u16::from_ne_bytes([hdr[2], hdr[3]]),
        syn,
        fin,
    ))
}

#[inline(always)]
fn addr6(a: &[u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
