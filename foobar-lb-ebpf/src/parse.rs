//! Header parsing: Ethernet (+ up to two 802.1Q/802.1ad tags), IPv4 (honouring IHL) or IPv6 (skipping
//! common extension headers), then TCP or UDP ports. Every read is bounds-checked against
//! `data_end`.
//!
//! What cannot be balanced (fragments, malformed headers, an IPv6 chain longer than the walk)
//! still shows the firewall its addresses and as much of its L4 identity as is known
//! ([`suspect_view`]): nothing reaches the host unjudged by being hard to parse.

use core::mem;

use aya_ebpf::programs::XdpContext;
use foobar_lb_common::{verdict, Addr, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

/// What the parser found; the packet's fields are in the [`Packet`] it filled.
pub enum Parsed {
    /// Not TCP/UDP over IP: not ours to judge, the kernel stack gets it untouched.
    NotOurs,
    /// Unusable for balancing (malformed, truncated, fragmented, L4 header out of reach): drop
    /// with `reason` if addressed to a VIP on this interface; otherwise the firewall judges
    /// what it shows ([`suspect_view`]). Only the family and the IP header's place are filled:
    /// the fast path does not pay for assembling what only this slow path needs.
    Suspect { reason: u32 },
    /// A complete 5-tuple.
    Flow,
    /// IP but neither TCP nor UDP (ICMP, ...): ports are zero. Firewall rules apply; never
    /// balanced.
    Other,
}

/// Filled in place by [`parse`] (the caller's stack slot): returned inside an enum, the
/// packet's fields were merged across the parser's exits by LLVM into dozens of stack stores
/// per packet. 8-byte aligned for [`Packet::zeroed`]'s stores (the verifier wants aligned
/// stack writes).
#[repr(C, align(8))]
pub struct Packet {
    /// Exactly the flow-table key; its (dst, dport, proto, family) prefix is the service key.
    pub key: FlowKey,
    /// The TCP flags byte (0 for UDP and other protocols).
    pub tcp_flags: u8,
    /// Offsets from the frame start of the IP header and of the L4 header (after IPv4 options or
    /// IPv6 extension headers): what a rewrite that touches L3/L4 fields needs.
    pub l3_off: u16,
    pub l4_off: u16,
    /// IPv4: the one's-complement sum of the fixed header's five words, taken while parsing had
    /// them in registers, so that [`ipv4_header_ok`] need not read them again.
    pub ip_sum: u64,
}

impl Packet {
    /// Zeroes `slot` as 8-byte stores and returns it as a packet for [`parse`] to fill
    /// (`Default` would be a call to memset, a BPF subprogram).
    #[inline(always)]
    pub fn zeroed(slot: &mut mem::MaybeUninit<Packet>) -> &mut Packet {
        const WORDS: usize = mem::size_of::<Packet>() / 8;
        const _: () = assert!(mem::size_of::<Packet>().is_multiple_of(8));
        let w = slot.as_mut_ptr() as *mut u64;
        for i in 0..WORDS {
            // SAFETY: within the slot; u64 stores of zero make every field valid.
            unsafe { core::ptr::write_volatile(w.add(i), 0) };
        }
        unsafe { slot.assume_init_mut() }
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn syn(&self) -> bool {
        self.tcp_flags & 0x12 == 0x02
    }

    /// A TCP FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn fin(&self) -> bool {
        self.tcp_flags & 0x05 != 0
    }

    /// The `FlowValue::seen` bits this packet sets: FIN and/or RST.
    #[inline(always)]
    pub fn closing_bits(&self) -> u32 {
        // FIN is bit 0 of the flags byte, RST bit 2: moved to FLOW_FIN (30) and FLOW_RST (31).
        let f = self.tcp_flags as u32;
        ((f & 0x01) << 30) | ((f & 0x04) << 29)
    }
}

/// `FlowKey::proto` in a [`suspect_view`] whose L4 protocol is unknown. (Protocol 0 is IPv6
/// hop-by-hop options, never an L4 protocol.)
pub const PROTO_UNKNOWN: u8 = 0;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv4 flags+offset: "more fragments" bit and the 13-bit offset.
const IPV4_MF_OFFSET_MASK: u16 = 0x3fff;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// IPv6 extension headers that may come before the L4 header (RFC 8200's registry, less ESP
/// and AH, which are judged as protocols of their own as in IPv4): a chain still holding one
/// after the walk hides its L4 header.
#[inline(always)]
fn ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_DSTOPTS
            | 135
            | 139
            | 140
            | 253
            | 254
    )
}

/// A pointer to a `T` at `offset` in the frame, if it ends within it.
///
/// Reading a word type (`u32`, `[u16; N]`, ...) through it is one load per word: LLVM reads
/// byte arrays a byte at a time. Packet data is often only 2-byte aligned (the IP header at
/// 14); the verifier allows unaligned packet loads where the CPU does them efficiently (x86,
/// arm64: every architecture XDP offload aside runs on), and the JITs emit plain loads.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn vlan_tag(ether_type: u16) -> bool {
    ether_type == EtherType::Ieee8021q as u16 || ether_type == EtherType::Ieee8021ad as u16
}

/// The VLAN id of a frame's (first) tag; callers know from the L3 offset that it has one.
#[inline(always)]
pub fn vlan_id(ctx: &XdpContext) -> Option<u16> {
    // The tag control word is one 2-byte load at 14.
    let tci = unsafe { *ptr_at::<u16>(ctx, EthHdr::LEN)? };
    Some(u16::from_be(tci) & 0x0fff)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::NotOurs;
    };
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    if vlan_tag(ether_type) {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, offset) else {
            return Parsed::NotOurs;
        };
        ether_type = unsafe { (*vlan).ether_type };
        offset += mem::size_of::<VlanHdr>();
        // Double-tagged (QinQ): never balanced, but judged by the firewall like any frame.
        if vlan_tag(ether_type) {
            let Some(vlan) = ptr_at::<VlanHdr>(ctx, offset) else {
                return Parsed::NotOurs;
            };
            ether_type = unsafe { (*vlan).ether_type };
            offset += mem::size_of::<VlanHdr>();
        }
    }
    pkt.l3_off = offset as u16;
    if ether_type == EtherType::Ipv4 as u16 {
        pkt.key.family = FAMILY_V4;
        parse_v4(ctx, offset, pkt)
    } else if ether_type == EtherType::Ipv6 as u16 {
        pkt.key.family = FAMILY_V6;
        parse_v6(ctx, offset, pkt)
    } else {
        Parsed::NotOurs
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, offset: usize, pkt: &mut Packet) -> Parsed {
    // Too short to hold a destination address: cannot be judged as ours.
    let Some(words) = ptr_at::<[u32; 5]>(ctx, offset) else {
        return Parsed::NotOurs;
    };
    // The fixed header as five 4-byte loads (see [`ptr_at`]): field by field, LLVM reads the
    // byte arrays a byte at a time and reassembles each address with shifts.
    let w = unsafe { *words };
    let [vihl, _tos, len_hi, len_lo] = w[0].to_ne_bytes();
    let [_, _, frag_hi, frag_lo] = w[1].to_ne_bytes();
    let proto = w[2].to_ne_bytes()[1];
    pkt.key.src[0] = w[3];
    pkt.key.dst[0] = w[4];
    pkt.ip_sum = w[0] as u64 + w[1] as u64 + w[2] as u64 + w[3] as u64 + w[4] as u64;
    let hdr_len = ((vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([len_hi, len_lo]) as usize;
    let available = ctx.data_end() - ctx.data() - offset;
    if vihl >> 4 != 4 || hdr_len < Ipv4Hdr::LEN || tot_len < hdr_len || tot_len > available {
        return Parsed::Suspect {
            reason: verdict::DROP_MALFORMED,
        };
    }
    if u16::from_be_bytes([frag_hi, frag_lo]) & IPV4_MF_OFFSET_MASK != 0 {
        return Parsed::Suspect {
            reason: verdict::DROP_FRAGMENT,
        };
    }
    pkt.key.proto = proto;
    pkt.l4_off = (offset + hdr_len) as u16;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Other;
    }
    l4(ctx, offset + hdr_len, proto, tot_len - hdr_len, pkt)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, offset: usize, pkt: &mut Packet) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Parsed::NotOurs;
    };
    let ip = unsafe { &*ip };
    pkt.key.dst = addr6(&ip.dst_addr);
    pkt.key.src = addr6(&ip.src_addr);
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let available = ctx.data_end() - ctx.data() - offset - Ipv6Hdr::LEN;
    let malformed = Parsed::Suspect {
        reason: verdict::DROP_MALFORMED,
    };
    if ip.vcf[0] >> 4 != 6 || payload_len > available {
        return malformed;
    }
    let Some((next, l4_off, ext_len)) = walk_v6(ctx, ip.next_hdr, offset + Ipv6Hdr::LEN) else {
        return malformed;
    };
    if next == IPPROTO_FRAGMENT {
        return Parsed::Suspect {
            reason: verdict::DROP_FRAGMENT,
        };
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        if ipv6_ext(next) {
            // More headers than walked: the L4 header is out of reach.
            return Parsed::Suspect {
                reason: verdict::DROP_EXT_HEADERS,
            };
        }
        pkt.key.proto = next;
        pkt.l4_off = l4_off as u16;
        return Parsed::Other;
    }
    if ext_len > payload_len {
        return malformed;
    }
    pkt.key.proto = next;
    pkt.l4_off = l4_off as u16;
    l4(ctx, l4_off, next, payload_len - ext_len, pkt)
}

/// Fills the ports and TCP flags from the TCP or UDP header at `offset`: [`Parsed::Flow`], or
/// a malformed [`Parsed::Suspect`] (see [`ports`]).
#[inline(always)]
fn l4(ctx: &XdpContext, offset: usize, proto: u8, l4_len: usize, pkt: &mut Packet) -> Parsed {
    match ports(ctx, offset, proto, l4_len) {
        Some((sport, dport, flags)) => {
            pkt.key.sport = sport;
            pkt.key.dport = dport;
            pkt.tcp_flags = flags;
            Parsed::Flow
        }
        None => Parsed::Suspect {
            reason: verdict::DROP_MALFORMED,
        },
    }
}

/// Skips up to three hop-by-hop / routing / destination-options headers from `l4` (bounded
/// loop): (next header, L4 offset, bytes skipped), `None` if one is cut.
#[inline(always)]
fn walk_v6(ctx: &XdpContext, mut next: u8, mut l4: usize) -> Option<(u8, usize, usize)> {
    let mut ext_len = 0usize;
    for _ in 0..3 {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS {
            break;
        }
        let ext = unsafe { *ptr_at::<[u8; 2]>(ctx, l4)? };
        next = ext[0];
        let len = (ext[1] as usize + 1) * 8;
        l4 += len;
        ext_len += len;
    }
    Some((next, l4, ext_len))
}

/// What a [`Parsed::Suspect`] packet shows the firewall, read again from its IP header at
/// `l3_off` (slow path only): the key with its addresses, and whether its protocol and ports
/// are the real ones (`true`: a first fragment whose TCP/UDP header is whole, or a fragment of
/// a protocol without ports). Otherwise the ports are zero and unknown, and the protocol is
/// [`PROTO_UNKNOWN`] where not even that is known: a later IPv6 fragment (reassembly takes the
/// protocol from the first fragment), an IPv6 chain longer than the walk, a malformed IP header.
/// IPv4 fragments keep their protocol: all fragments of a datagram share it.
#[inline(always)]
pub fn suspect_view(ctx: &XdpContext, family: u8, l3_off: usize) -> Option<(FlowKey, bool)> {
    let key = |src, dst, proto, ports: Option<(u16, u16, u8)>| {
        let (sport, dport, _) = ports.unwrap_or((0, 0, 0));
        let k = FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            family,
            _pad: [0; 2],
        };
        Some((k, ports.is_some()))
    };
    let whole = Some((0, 0, 0));
    if family == FAMILY_V4 {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3_off)? };
        let src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
        let dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
        let hdr_len = ((ip.vihl & 0x0f) as usize) * 4;
        let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
        let available = ctx.data_end() - ctx.data() - l3_off;
        if ip.vihl >> 4 != 4 || hdr_len < Ipv4Hdr::LEN || tot_len < hdr_len || tot_len > available {
            return key(src, dst, PROTO_UNKNOWN, None);
        }
        let proto = ip.proto;
        let ported = proto == PROTO_TCP || proto == PROTO_UDP;
        let frags = u16::from_be_bytes(ip.frags);
        if frags & IPV4_MF_OFFSET_MASK == 0 || frags & IPV4_OFFSET_MASK != 0 {
            // Not a fragment (its L4 header is malformed), or a later one: no ports.
            return key(src, dst, proto, if ported { None } else { whole });
        }
        if !ported {
            return key(src, dst, proto, whole);
        }
        let ports = first_fragment_ports(ctx, l3_off + hdr_len, proto, tot_len - hdr_len);
        return key(src, dst, proto, ports);
    }
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3_off)? };
    let src = addr6(&ip.src_addr);
    let dst = addr6(&ip.dst_addr);
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let available = ctx.data_end() - ctx.data() - l3_off - Ipv6Hdr::LEN;
    if ip.vcf[0] >> 4 != 6 || payload_len > available {
        return key(src, dst, PROTO_UNKNOWN, None);
    }
    let Some((mut next, mut l4, mut ext_len)) = walk_v6(ctx, ip.next_hdr, l3_off + Ipv6Hdr::LEN)
    else {
        return key(src, dst, PROTO_UNKNOWN, None);
    };
    let mut fragment = false;
    if next == IPPROTO_FRAGMENT {
        // (next header, reserved, offset << 3 | M): one 4-byte load.
        let Some(frag) = ptr_at::<[u8; 4]>(ctx, l4) else {
            return key(src, dst, PROTO_UNKNOWN, None);
        };
        let frag = unsafe { *frag };
        if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
            return key(src, dst, PROTO_UNKNOWN, None);
        }
        fragment = true;
        next = frag[0];
        l4 += 8;
        ext_len += 8;
    }
    if ipv6_ext(next) {
        return key(src, dst, PROTO_UNKNOWN, None);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return key(src, dst, next, whole);
    }
    if !fragment || ext_len > payload_len {
        // A malformed L4 header.
        return key(src, dst, next, None);
    }
    let ports = first_fragment_ports(ctx, l4, next, payload_len - ext_len);
    key(src, dst, next, ports)
}

/// Ports of a first fragment's TCP or UDP header at `offset`, if its fixed part is whole in the
/// fragment (`l4_len` bytes of payload). A UDP length covers the whole datagram, so it is not
/// checked against this fragment; anything shorter hides its ports.
#[inline(always)]
fn first_fragment_ports(
    ctx: &XdpContext,
    offset: usize,
    proto: u8,
    l4_len: usize,
) -> Option<(u16, u16, u8)> {
    // The frame bounds check first, as in `ports`.
    let (hdr, min) = if proto == PROTO_TCP {
        (ptr_at::<[u8; 20]>(ctx, offset)? as *const [u8; 4], 20)
    } else {
        (ptr_at::<[u8; 8]>(ctx, offset)? as *const [u8; 4], 8)
    };
    if l4_len < min {
        return None;
    }
    let hdr = unsafe { *hdr };
    Some((
        u16::from_ne_bytes([hdr[0], hdr[1]]),
        u16::from_ne_bytes([hdr[2], hdr[3]]),
        0,
    ))
}

/// Ports (network byte order) and TCP flags of a TCP or UDP header at `offset`, if the header
/// is whole both in the frame and within the IP payload (`l4_len`): a TCP data offset beyond
/// the segment, or a UDP length below 8 or beyond the payload, is malformed.
///
/// The frame bounds check comes first on purpose: done after the `l4_len` check, LLVM proves it
/// redundant from the earlier IP length checks and drops it, and the verifier rejects the read.
#[inline(always)]
fn ports(ctx: &XdpContext, offset: usize, proto: u8, l4_len: usize) -> Option<(u16, u16, u8)> {
    // Halfword loads (see [`ptr_at`]): the ports, then (data offset, flags) or UDP's length.
    let (hdr, min, flags) = if proto == PROTO_TCP {
        let tcp = ptr_at::<[u16; 10]>(ctx, offset)?;
        let tcp = unsafe { *tcp };
        let [off, flags] = tcp[6].to_ne_bytes();
        // Data offset below 5 words is not a TCP header.
        let doff = off >> 4;
        if doff < 5 {
            return None;
        }
        ([tcp[0], tcp[1]], doff as usize * 4, flags)
    } else {
        let udp = unsafe { *ptr_at::<[u16; 4]>(ctx, offset)? };
        let ulen = u16::from_be(udp[2]) as usize;
        if ulen < 8 || ulen > l4_len {
            return None;
        }
        ([udp[0], udp[1]], 8, 0)
    };
    if l4_len < min {
        return None;
    }
    Some((hdr[0], hdr[1], flags))
}

/// An ICMPv6 neighbour-discovery message (router/neighbour solicitation and advertisement,
/// redirect: types 133-137). Reads type and code as one 2-byte load (see `source_route`).
#[inline(always)]
pub fn is_nd(ctx: &XdpContext, pkt: &Packet) -> bool {
    // Bounded for the verifier: three extension headers of at most 2 KiB each.
    let off = pkt.l4_off as usize & 0x1fff;
    match ptr_at::<[u8; 2]>(ctx, off) {
        Some(p) => (133..=137).contains(&unsafe { (*p)[0] }),
        None => false,
    }
}

/// For an ICMP error that path-MTU discovery and connection failure rely on (IPv4 destination
/// unreachable, type 3, any code including fragmentation needed; ICMPv6 destination unreachable
/// or packet too big, types 1 and 2): the flow-table key of the connection its embedded packet
/// belongs to. That packet is one the VIP sent (a backend's reply, source = the VIP the error
/// is addressed to), so the key is it reversed. `None` for other messages, an embedded packet
/// of another address, protocol or family, or one cut short of its ports.
#[inline(always)]
pub fn icmp_error_flow(ctx: &XdpContext, pkt: &Packet) -> Option<FlowKey> {
    let (_, q) = icmp_error_quote(ctx, pkt)?;
    let mut flow = q;
    flow.set_reverse_of(&q);
    Some(flow)
}

/// The ICMP errors [`icmp_error_flow`] names: (type, code) and the 5-tuple of the TCP or UDP
/// packet it quotes, as that packet was sent, if the error is addressed to that packet's
/// sender. `None` for other messages, a quote of another sender, protocol or family, or one
/// cut short of its ports.
#[inline(always)]
pub fn icmp_error_quote(ctx: &XdpContext, pkt: &Packet) -> Option<([u8; 2], FlowKey)> {
    let key = &pkt.key;
    // Bounded for the verifier: IPv4 headers end by 22 + 60; IPv6 ones as in `is_nd`.
    let off = if key.family == FAMILY_V4 {
        pkt.l4_off as usize & 0xff
    } else {
        pkt.l4_off as usize & 0x1fff
    };
    // Type and code in one 2-byte load (see `source_route`).
    let kind = unsafe { *ptr_at::<[u8; 2]>(ctx, off)? };
    let (src, dst, proto, ports_off) = if key.family == FAMILY_V4 {
        if kind[0] != 3 {
            return None;
        }
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, off + 8)? };
        let ihl = (ip.vihl & 0x0f) as usize * 4;
        if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
            return None;
        }
        (
            [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
            [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0],
            ip.proto,
            off + 8 + ihl,
        )
    } else {
        if kind[0] != 1 && kind[0] != 2 {
            return None;
        }
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, off + 8)? };
        (
            addr6(&ip.src_addr),
            addr6(&ip.dst_addr),
            ip.next_hdr,
            off + 8 + Ipv6Hdr::LEN,
        )
    };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || src != key.dst {
        return None;
    }
    let ports = unsafe { *ptr_at::<[u16; 2]>(ctx, ports_off)? };
    Some((
        kind,
        FlowKey {
            src,
            dst,
            sport: ports[0],
            dport: ports[1],
            proto,
            family: key.family,
            _pad: [0; 2],
        },
    ))
}

/// TCP flag combinations Linux conntrack accepts in some state (`tcp_valid_flags`), PSH, ECE
/// and CWR ignored: bit `f` set means flags `f` (FIN 1, SYN 2, RST 4, ACK 16, URG 32) are valid.
const VALID_TCP_FLAGS: u64 = (1 << 0x02) // SYN
    | (1 << 0x22) // SYN+URG
    | (1 << 0x12) // SYN+ACK
    | (1 << 0x04) // RST
    | (1 << 0x14) // RST+ACK
    | (1 << 0x11) // FIN+ACK
    | (1 << 0x31) // FIN+ACK+URG
    | (1 << 0x10) // ACK
    | (1 << 0x30); // ACK+URG

/// Whether a TCP flags byte is a combination some connection state allows (NULL, SYN+FIN,
/// SYN+RST, FIN without ACK, XMAS... are not).
#[inline(always)]
pub fn tcp_flags_valid(flags: u8) -> bool {
    let f = flags & 0x37; // drop PSH (0x08), ECE (0x40), CWR (0x80)
    (VALID_TCP_FLAGS >> f) & 1 != 0
}

/// IPv4 header checks left out of parsing so that traffic not for a VIP does not pay for them:
/// the header checksum, and source-route options (LSRR/SSRR), which a host must not honour.
#[inline(always)]
pub fn ipv4_header_ok(ctx: &XdpContext, pkt: &Packet) -> Result<(), u32> {
    let mut sum = pkt.ip_sum;
    // The IP header is at 14, 18 or 22 (VLAN tags); the mask tells the verifier so.
    let l3_off = pkt.l3_off as usize & 0x3f;
    // The header's length in words, as parsing found it (no packet read).
    let ihl = (pkt.l4_off.wrapping_sub(pkt.l3_off) as usize >> 2) & 0x0f;
    if ihl > 5 {
        // Options (rare): up to 10 more words; parse_v4 checked that the header fits.
        for i in 5..15 {
            if i >= ihl {
                break;
            }
            let word = ptr_at::<u32>(ctx, l3_off + i * 4).ok_or(verdict::DROP_MALFORMED)?;
            sum += unsafe { *word } as u64;
        }
        source_route(ctx, l3_off + 20, (ihl - 5) * 4)?;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    if foobar_lb_common::csum::fold(sum as u32) != 0xffff {
        return Err(verdict::DROP_BAD_CHECKSUM);
    }
    Ok(())
}

/// Most options [`source_route`] walks (NOPs count). Real headers carry a few; one with more
/// is dropped as malformed rather than forwarded unjudged. The bound keeps the verifier's
/// exploration of the walk (one path per option layout) small.
pub const MAX_IPV4_OPTIONS: usize = 4;

/// Walks IPv4 options (`len` bytes at `offset`) for LSRR (131) or SSRR (137).
///
/// (kind, length) is one 2-byte load: the options are followed by at least an L4 header, and a
/// 1-byte load's bounds check is rewritten by LLVM into a form the verifier rejects.
#[inline(always)]
fn source_route(ctx: &XdpContext, offset: usize, len: usize) -> Result<(), u32> {
    let mut at = 0usize;
    for _ in 0..MAX_IPV4_OPTIONS {
        if at >= len {
            return Ok(());
        }
        let pair = unsafe { *ptr_at::<[u8; 2]>(ctx, offset + at).ok_or(verdict::DROP_MALFORMED)? };
        match pair[0] {
            0 => return Ok(()), // end of options
            1 => at += 1,       // no-op
            0x83 | 0x89 => return Err(verdict::DROP_SOURCE_ROUTE),
            _ if pair[1] < 2 => return Err(verdict::DROP_MALFORMED),
            _ => at += pair[1] as usize,
        }
    }
    // More options than walked, or one running past the header.
    if at == len {
        Ok(())
    } else {
        Err(verdict::DROP_MALFORMED)
    }
}

/// Source addresses no packet to a VIP may carry: unspecified, loopback, multicast and
/// reserved (IPv4 0/8, 127/8, 224/4, 240/4 incl. broadcast; IPv6 ::, ::1, ff00::/8 and
/// v4-mapped ::ffff:0:0/96).
#[inline(always)]
pub fn martian(src: &Addr, family: u8) -> bool {
    let first = src[0].to_ne_bytes()[0];
    if family == FAMILY_V4 {
        return first == 0 || first == 127 || first >= 224;
    }
    let v4_mapped = u32::from_be(src[2]) == 0x0000_ffff;
    first == 0xff
        || (src[0] == 0 && src[1] == 0 && (v4_mapped || (src[2] == 0 && u32::from_be(src[3]) <= 1)))
}

#[inline(always)]
fn addr6(a: &[u8; 16]) -> Addr {
    // Four 4-byte loads (see [`ptr_at`]) instead of sixteen byte loads and their shifts;
    // volatile so that LLVM does not turn the copy into a call to memcpy (a BPF subprogram).
    let w = a.as_ptr() as *const u32;
    unsafe {
        [
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
            core::ptr::read_volatile(w.add(2)),
            core::ptr::read_volatile(w.add(3)),
        ]
    }
}
