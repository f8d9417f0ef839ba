//! Packet rewrites, one function per forwarding mode, picked by the backend's `fwd_mode` on
//! every forwarded packet (new and established flows alike). Checksum arithmetic for modes that
//! change L3/L4 fields lives in `foobar_lb_common::csum` (host-tested).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use foobar_lb_common::{
    csum, verdict, Addr, Backend, Iface, FAMILY_V4, FWD_DSR, FWD_FULLNAT, FWD_NAT, PROTO_UDP,
};
use network_types::eth::EthHdr;

use crate::parse::Packet;

/// Rewrites the frame for `backend`; returns the XDP action that sends it (XDP_TX, or
/// XDP_REDIRECT for a NAT or full-NAT backend reached through another interface). A mode this
/// program does not know is never guessed at: the packet is aborted (counted) rather than
/// sent somewhere wrong.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    iface: &Iface,
    backend: &Backend,
) -> Result<u32, u32> {
    match backend.fwd_mode {
        FWD_DSR => set_macs(ctx, &backend.mac, &iface.mac).map(|_| xdp_action::XDP_TX),
        // Destination NAT: the connection is tracked (`nat::open`) before its first packet
        // gets here.
        FWD_NAT => crate::nat::forward(ctx, pkt, iface, backend),
        // Full NAT: the connection (`nat::open` or `nat::established`) left its addresses,
        // ports and next hop in the NAT scratch.
        FWD_FULLNAT => crate::nat::forward_full(ctx, pkt),
        _ => Err(verdict::ABORTED),
    }
}

/// The action that sends a rewritten frame out of `ifindex`: XDP_TX on the interface it came
/// in on, else XDP_REDIRECT through the devmap of our interfaces (`EGRESS`); XDP_ABORTED if
/// `ifindex` is not one of them.
#[inline(always)]
pub fn out_by(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        crate::maps::EGRESS
            .redirect(ifindex, xdp_action::XDP_ABORTED as u64)
            .unwrap_or(xdp_action::XDP_ABORTED)
    }
}

/// An action [`forward`] returns instead of XDP_TX for a NAT backend on another interface
/// than the receiving one (a two-arm balancer): "send out of interface
/// `action & EGRESS_IFINDEX`", done by [`redirect`] at the program's exit. Above every XDP
/// action; the interfaces of ours are below `MAX_IFINDEX`.
pub const EGRESS: u32 = 1 << 16;
pub const EGRESS_IFINDEX: u32 = EGRESS - 1;
const _: () = assert!(foobar_lb_common::MAX_IFINDEX == EGRESS);

/// The action that sends a rewritten frame out of interface `ifindex` (0: the receiving one,
/// XDP_TX; another: marked with [`EGRESS`] for [`redirect`] at the program's exit). The one
/// choice of the way out for NAT forwarding (`Backend::ifindex`), replies (`NatRev::ifindex`)
/// and the ICMP errors about their connections.
#[inline(always)]
pub fn egress(ifindex: u32) -> u32 {
    if ifindex == 0 {
        xdp_action::XDP_TX
    } else {
        EGRESS | (ifindex & EGRESS_IFINDEX)
    }
}

/// Sends a frame [`forward`] marked with [`EGRESS`] out of that interface, with the
/// interface's MAC as its source (XDP_REDIRECT); XDP_TX if it is the receiving interface
/// after all. An interface that is not ours aborts.
#[inline(always)]
pub fn redirect(ctx: &XdpContext, action: u32) -> u32 {
    let ifindex = action & EGRESS_IFINDEX;
    if ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    let Some(iface) = crate::maps::IFACES.get(ifindex) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    if iface.flags & foobar_lb_common::IFACE_ACTIVE == 0 || start + EthHdr::LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the Ethernet header is in bounds (checked above); see `set_macs`.
    unsafe {
        let p = start as *mut u8;
        let own = iface.mac.as_ptr();
        *(p.add(6) as *mut u32) = *(own as *const u32);
        *(p.add(10) as *mut u16) = *(own.add(4) as *const u16);
    }
    out_by(ctx, ifindex)
}

/// Which end of the packet a NAT translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (client -> backend).
    Dst,
    /// Source address and port (the backend's reply -> client).
    Src,
}

/// Replaces one side's address (`old` -> `new`) and port (network order) and updates the IPv4
/// header checksum and the TCP/UDP checksum incrementally (RFC 1624: the pseudo-header covers
/// the addresses). An IPv4 UDP checksum of zero means "none" and stays zero; a computed zero
/// is sent as 0xffff (RFC 768). Only TCP and UDP reach here (the parser's `Flow`).
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    pkt: &Packet,
    side: Side,
    old: &Addr,
    new: &Addr,
    old_port: u16,
    new_port: u16,
) -> Result<(), u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    // The IP header is at 14, 18 or 22; the L4 header within the IPv6 walk's reach. The masks
    // tell the verifier so (offsets from the stack are otherwise unbounded).
    let l3 = start + (pkt.l3_off as usize & 0x3f);
    let l4 = start + (pkt.l4_off as usize & 0x1fff);
    let v4 = pkt.key.family == FAMILY_V4;
    let udp = pkt.key.proto == PROTO_UDP;
    if l4 + 8 > end {
        return Err(verdict::ABORTED);
    }
    let check_at = if udp {
        l4 + 6
    } else {
        if l4 + 20 > end {
            return Err(verdict::ABORTED);
        }
        l4 + 16
    };
    let port_at = if side == Side::Dst { l4 + 2 } else { l4 };
    // SAFETY: every access below is within [start, end) (checked here and above); packet
    // loads and stores need no alignment where XDP runs (the verifier enforces it if they did).
    unsafe {
        if v4 {
            if l3 + 20 > end {
                return Err(verdict::ABORTED);
            }
            let addr_at = if side == Side::Dst { l3 + 16 } else { l3 + 12 };
            let ip_check = (l3 + 10) as *mut u16;
            *ip_check = csum::replace32(*ip_check, old[0], new[0]);
            *(addr_at as *mut u32) = new[0];
        } else {
            if l3 + 40 > end {
                return Err(verdict::ABORTED);
            }
            let a = (if side == Side::Dst { l3 + 24 } else { l3 + 8 }) as *mut u32;
            *a = new[0];
            *a.add(1) = new[1];
            *a.add(2) = new[2];
            *a.add(3) = new[3];
        }
        *(port_at as *mut u16) = new_port;
        let check = check_at as *mut u16;
        let c = *check;
        // An IPv4 UDP checksum of 0 means none was computed: it stays so.
        if !(udp && v4 && c == 0) {
            let words = if v4 { 1 } else { 4 };
            let mut c = csum::replace_addr(c, old, new, words);
            c = csum::replace16(c, old_port, new_port);
            if udp && c == 0 {
                c = 0xffff;
            }
            *check = c;
        }
    }
    Ok(())
}

/// Full NAT's [`translate`] of both ends at once: the source becomes `src`:`sport` and the
/// destination `dst`:`dport` (network order; the old values are `pkt.key`'s). The changes
/// are summed (`csum::delta32`/`delta16`) and each checksum is read and written once, where
/// two [`translate`] calls read, update and write both twice (and check the bounds twice).
/// Zero IPv4 UDP checksums as in [`translate`].
#[inline(always)]
pub fn translate_both(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &Addr,
    sport: u16,
    dst: &Addr,
    dport: u16,
) -> Result<(), u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Bounded for the verifier as in `translate`.
    let l3 = start + (pkt.l3_off as usize & 0x3f);
    let l4 = start + (pkt.l4_off as usize & 0x1fff);
    let k = &pkt.key;
    let v4 = k.family == FAMILY_V4;
    let udp = k.proto == PROTO_UDP;
    if l4 + 8 > end {
        return Err(verdict::ABORTED);
    }
    let check_at = if udp {
        l4 + 6
    } else {
        if l4 + 20 > end {
            return Err(verdict::ABORTED);
        }
        l4 + 16
    };
    // SAFETY: every access below is within [start, end) (checked here and above), as in
    // `translate`.
    unsafe {
        // The addresses' change (the IPv4 header's and the pseudo-header's).
        let mut d = 0u32;
        if v4 {
            if l3 + 20 > end {
                return Err(verdict::ABORTED);
            }
            d = csum::delta32(k.src[0], src[0]) + csum::delta32(k.dst[0], dst[0]);
            let ip_check = (l3 + 10) as *mut u16;
            *ip_check = csum::apply(*ip_check, d);
            *((l3 + 12) as *mut u32) = src[0];
            *((l3 + 16) as *mut u32) = dst[0];
        } else {
            if l3 + 40 > end {
                return Err(verdict::ABORTED);
            }
            let (s, t) = ((l3 + 8) as *mut u32, (l3 + 24) as *mut u32);
            for i in 0..4 {
                d += csum::delta32(k.src[i], src[i]) + csum::delta32(k.dst[i], dst[i]);
                *s.add(i) = src[i];
                *t.add(i) = dst[i];
            }
        }
        *(l4 as *mut u16) = sport;
        *((l4 + 2) as *mut u16) = dport;
        let check = check_at as *mut u16;
        let c = *check;
        // An IPv4 UDP checksum of 0 means none was computed: it stays so.
        if !(udp && v4 && c == 0) {
            let d = d + csum::delta16(k.sport, sport) + csum::delta16(k.dport, dport);
            let mut c = csum::apply(c, d);
            if udp && c == 0 {
                c = 0xffff;
            }
            *check = c;
        }
    }
    Ok(())
}

/// Sets the frame's destination MAC to `dst` and its source to `src` (the interface's own, so
/// switches learn the load balancer's port for it). Used by direct server return (LVS "DR"),
/// where the backend holds the VIP and answers the client itself, so only the Ethernet header
/// changes and no checksum needs touching, and by NAT after its translation.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), u32> {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return Err(verdict::ABORTED);
    }
    // Word moves (u32 + u16 per MAC): a [u8; 6] assignment becomes 12 byte moves. The MACs
    // in map values are 4-byte aligned; packet accesses need no alignment where XDP runs (the
    // verifier enforces it only under strict alignment), as in every C XDP program.
    // SAFETY: the 14-byte Ethernet header is in bounds (checked above).
    unsafe {
        let p = start as *mut u8;
        let (own, to) = (src.as_ptr(), dst.as_ptr());
        *(p as *mut u32) = *(to as *const u32);
        *(p.add(4) as *mut u16) = *(to.add(4) as *const u16);
        *(p.add(6) as *mut u32) = *(own as *const u32);
        *(p.add(10) as *mut u16) = *(own.add(4) as *const u16);
    }
    Ok(())
}
