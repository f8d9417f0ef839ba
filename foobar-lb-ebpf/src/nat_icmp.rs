//! ICMP errors about NAT and full-NAT connections (IPv4 destination unreachable, any code,
//! including fragmentation needed; ICMPv6 destination unreachable and packet too big), as
//! Linux's NAT translates them: path-MTU discovery and connection failures of translated
//! connections depend on it.
//!
//! - Towards the backend ([`to_backend`]): an error for the VIP quoting a reply the client was
//!   sent (VIP:vport -> client:cport). The outer destination becomes the backend and the quoted
//!   source backend:bport, as the backend sent it; full NAT also turns the outer source and the
//!   quoted destination into the connection's SNAT address (and port).
//! - Towards the client ([`to_client`]): an error from a backend, or a router on its path,
//!   quoting a packet the balancer forwarded (client:cport or snat:sport -> backend:bport),
//!   addressed to the quoted sender. The outer source (backend or router) becomes the VIP and
//!   the quoted destination VIP:vport; full NAT also turns the outer destination and the quoted
//!   source back into the client. A destination unreachable from the backend itself, quoting
//!   a TCP connection it has never answered, is a refusal (`DROP_SYN_REFUSED`) as a RST is.
//!
//! The program's main path only hands such packets over ([`defer`]: the packet and its
//! direction in `NAT_SCRATCH`, verdict [`TRANSLATE`]); its exit runs [`run`], which looks
//! the connection up and rewrites: one copy, reading its inputs back from the scratch (as
//! `nat::forget_refused`), rather than one per way there (that cost ~200,000 verified
//! instructions; this ~60,000: see DEVELOPING.md before making it larger).
//! Checksums are updated incrementally (RFC 1624): the outer IPv4 header's, the ICMP one (which
//! covers the quote, and for ICMPv6 the outer addresses), the quoted IPv4 header's and the
//! quoted TCP/UDP one when the quote holds it (a quote may stop after 8 bytes of L4 header).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use foobar_lb_common::{
    csum, owner_service, verdict, Addr, FlowKey, NatIcmp, NatScratch, VipKey, BACKEND_ACTIVE,
    BACKEND_DRAINING, FAMILY_V4, FW_HAS_SNAT, ICMP_QUOTE_DST, ICMP_QUOTE_SRC, ICMP_TO_BACKEND,
    NAT_FULL, NAT_REPLIED, PROTO_TCP, PROTO_UDP,
};

use crate::{
    firewall,
    maps::{BACKENDS, IFACES, NAT_FWD, NAT_REV, NAT_SCRATCH, SNAT_ADDRS},
    nat, parse,
    parse::Packet,
    rewrite, stats,
};

/// The verdict [`defer`] hands the program's exit, which then runs [`run`] (below the
/// firewall-check marker, `u32::MAX`).
pub const TRANSLATE: u32 = u32::MAX - 1;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Hands an ICMP packet that may be an error about a NAT connection to the program's exit
/// ([`run`]): going `toward` the backend ([`ICMP_TO_BACKEND`]) or the client (0), with the
/// verdict it gets if it is about none (`fallback`: `PASS`, or a drop). The lookups and the
/// rewrite are then verified once, not once per way here (which cost 200,000 verified
/// instructions when they were done here).
#[inline(always)]
pub fn defer(pkt: &Packet, toward: u32, fallback: u32) -> Result<(u32, u32), u32> {
    let s = NAT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
    // SAFETY: this CPU's scratch element; XDP runs with preemption off.
    unsafe {
        (*s).key = pkt.key;
        (*s).l3_off = pkt.l3_off;
        (*s).l4_off = pkt.l4_off;
        (*s).tcp_flags = pkt.tcp_flags;
        (*s).icmp.toward = toward;
        (*s).icmp.fallback = fallback;
    }
    Ok((xdp_action::XDP_PASS, TRANSLATE))
}

/// At the program's exit, for a packet [`defer`] left: decides (see [`to_backend`],
/// [`to_client`]) and translates, or returns the fallback verdict.
#[inline(always)]
pub fn run(ctx: &XdpContext, len: u64) -> Result<(u32, u32), u32> {
    let s = NAT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
    // SAFETY: this CPU's scratch element; read back (volatile): the values are unknown to the
    // verifier, so every way here is one state.
    let (pkt, toward, fallback) = unsafe {
        (
            Packet {
                key: core::ptr::read_volatile(&(*s).key),
                tcp_flags: 0,
                l3_off: core::ptr::read_volatile(&(*s).l3_off),
                l4_off: core::ptr::read_volatile(&(*s).l4_off),
                // Only `parse::ipv4_header_ok` (a VIP packet's sanity check) reads it, never
                // on this copy: an error for a VIP was checked before, one towards a client
                // is not for a VIP and is not checked.
                ip_sum: 0,
            },
            core::ptr::read_volatile(&(*s).icmp.toward),
            core::ptr::read_volatile(&(*s).icmp.fallback),
        )
    };
    // Plain verdicts, not `Option<Result<..>>`: LLVM merges the paths of such a value with its
    // payload undefined on some, and the verifier refuses to read an unset register.
    let decided = if toward == ICMP_TO_BACKEND {
        to_backend(ctx, &pkt, s, len)
    } else {
        to_client(ctx, &pkt, s)
    };
    if decided == SEND {
        return translate(ctx);
    }
    if decided != NO_CONN {
        return Err(decided);
    }
    if fallback == verdict::PASS {
        Ok((xdp_action::XDP_PASS, verdict::PASS))
    } else {
        Err(fallback)
    }
}

/// [`to_backend`] and [`to_client`]: the error is about no NAT connection.
const NO_CONN: u32 = u32::MAX;
/// [`to_backend`] and [`to_client`]: translate and send it. (Other values: a drop reason.)
const SEND: u32 = u32::MAX - 1;

/// Towards the backend: an error for a VIP quoting the reply of a client connection (see
/// `parse::icmp_error_flow`) that a NAT connection whose backend still serves tracks: its
/// translation is decided (and counted for its service and backend as forwarded).
// The key is passed to the map helper by reference into the scratch (`&*key`): the by-value
// form clippy suggests copies it onto the stack first.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, s: *mut NatScratch, len: u64) -> u32 {
    // The client's 5-tuple: the quoted reply's reverse (see `parse::icmp_error_flow`).
    let Some((_, q)) = parse::icmp_error_quote(ctx, pkt) else {
        return NO_CONN;
    };
    // SAFETY: this CPU's scratch element (see `defer`); the key is looked up from there.
    let key = unsafe { &mut (*s).rkey };
    key.set_reverse_of(&q);
    let Some(f) = (unsafe { NAT_FWD.get(&*key) }) else {
        return NO_CONN;
    };
    let Some(b) = BACKENDS.get(f.backend_id) else {
        return NO_CONN;
    };
    if b.owner != f.owner || (b.state != BACKEND_ACTIVE && b.state != BACKEND_DRAINING) {
        return NO_CONN;
    }
    let i = unsafe { &mut (*s).icmp };
    i.quote.src = f.backend_addr;
    i.quote.sport = f.backend_port;
    i.changes = ICMP_QUOTE_SRC;
    if f.flags & NAT_FULL != 0 {
        i.quote.dst = f.snat_addr;
        i.quote.dport = f.snat_port;
        i.changes |= ICMP_QUOTE_DST;
        i.ifindex = f.ifindex;
        i.dst_mac = f.next_mac;
        i.src_mac = f.src_mac;
    } else {
        // Out of the backend's interface, as `nat::forward` sends its packets (two-arm: not
        // the one the error came in on); the exit's redirect then sets that one's MAC.
        i.ifindex = b.ifindex;
        i.dst_mac = b.mac;
        let Some(own) = IFACES.get(ctx.ingress_ifindex() as u32) else {
            return verdict::ABORTED;
        };
        i.src_mac = own.mac;
    }
    i.verdict = verdict::TX;
    stats::count_forward(owner_service(f.owner), f.backend_id, len);
    SEND
}

/// Towards the client: an ICMP or ICMPv6 packet not for a VIP (after the firewall's rules)
/// that is an error quoting a packet the balancer forwarded for a tracked NAT connection,
/// addressed to its sender: its translation is decided (`Ok`), or it is a refusal
/// (`Err(DROP_SYN_REFUSED)`, see the module's doc). An error to a SNAT address quoting a port
/// of its range that no connection uses is `Err(DROP_SNAT_STRAY)`. `None`: the host's.
// The key is passed to the map helper by reference into the scratch (`&*key`): the by-value
// form clippy suggests copies it onto the stack first.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet, s: *mut NatScratch) -> u32 {
    let v4 = pkt.key.family == FAMILY_V4;
    // Addressed to the quoted packet's sender: the client (NAT) or a SNAT address (full NAT).
    let Some((kind, q)) = parse::icmp_error_quote(ctx, pkt) else {
        return NO_CONN;
    };
    if nat::maybe_backend(&q.dst, q.family) {
        // The reply 5-tuple (backend:bport -> client:cport or snat:sport), built in the
        // scratch and looked up from there (no copy on the stack).
        // SAFETY: this CPU's scratch element (see `defer`).
        let rkey = unsafe { &mut (*s).rkey };
        rkey.set_reverse_of(&q);
        if let Some(r) = unsafe { NAT_REV.get(&*rkey) } {
            let Ok(iface) = crate::prog::receiver(ctx, pkt.l3_off) else {
                return NO_CONN;
            };
            // Destination unreachable but not "fragmentation needed" (a SYN is never too big).
            let unreachable = if v4 {
                kind[0] == 3 && kind[1] != 4
            } else {
                kind[0] == 1
            };
            if unreachable
                && q.proto == PROTO_TCP
                && pkt.key.src == q.dst
                && r.seen & NAT_REPLIED == 0
            {
                // `nat::forget_refused` finds the connection from the reply 5-tuple there.
                unsafe { (*s).key = *rkey };
                return verdict::DROP_SYN_REFUSED;
            }
            let i = unsafe { &mut (*s).icmp };
            i.quote.dst = r.vip;
            i.quote.dport = r.vport;
            i.changes = ICMP_QUOTE_DST;
            i.dst_mac = r.client_mac;
            if r.flags & NAT_FULL != 0 {
                i.quote.src = r.client;
                i.quote.sport = r.cport;
                i.changes |= ICMP_QUOTE_SRC;
            }
            // Out of the client's interface, as `nat::reply` sends the replies (two-arm: not
            // the one the error came in on); the exit's redirect then sets that one's MAC.
            i.ifindex = r.ifindex;
            i.src_mac = iface.mac;
            i.verdict = verdict::TX_NAT_REPLY;
            return SEND;
        }
    }
    if firewall::state().flags & FW_HAS_SNAT != 0 && stray(&q) {
        return verdict::DROP_SNAT_STRAY;
    }
    NO_CONN
}

/// Whether quoted packet `q` left a SNAT address from a port of its range (no tracked
/// connection did, or `to_client` would have found it): as `nat::stray` for TCP and UDP.
#[inline(always)]
fn stray(q: &FlowKey) -> bool {
    let addr = VipKey {
        addr: q.src,
        family: q.family,
        _pad: [0; 3],
    };
    let Some(range) = (unsafe { SNAT_ADDRS.get(addr) }).copied() else {
        return false;
    };
    let port = u16::from_be(q.sport) as u32;
    port >= range & 0xffff && port <= range >> 16
}

/// Rewrites the ICMP error `NAT_SCRATCH` describes (see [`to_backend`], [`to_client`]) and
/// sends it: `(action, verdict)`.
#[inline(always)]
fn translate(ctx: &XdpContext) -> Result<(u32, u32), u32> {
    let s = NAT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
    // SAFETY: this CPU's scratch element; read back (volatile) so the verifier knows nothing
    // of the values and checks this once.
    let (l3_off, l4_off, family) = unsafe {
        (
            core::ptr::read_volatile(&(*s).l3_off),
            core::ptr::read_volatile(&(*s).l4_off),
            core::ptr::read_volatile(&(*s).key.family),
        )
    };
    let i = unsafe { &(*s).icmp };
    // One copy per family: the bounds each proves stay with the accesses they allow.
    if family == FAMILY_V4 {
        rewrite_error::<true>(ctx, l3_off, l4_off, i)?;
    } else {
        rewrite_error::<false>(ctx, l3_off, l4_off, i)?;
    }
    rewrite::set_macs(ctx, &i.dst_mac, &i.src_mac)?;
    // The way out as for the connection's own packets (`rewrite::egress`): another interface
    // is redirected to, with its MAC as the source, by the program's exit.
    Ok((rewrite::egress(i.ifindex), i.verdict))
}

/// [`translate`]'s rewrite of the IP header at `l3_off` and the ICMP message at `l4_off`.
#[inline(always)]
fn rewrite_error<const V4: bool>(
    ctx: &XdpContext,
    l3_off: u16,
    l4_off: u16,
    i: &NatIcmp,
) -> Result<(), u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    // The IP header is at 14, 18 or 22; the ICMP header within the IPv6 walk's reach.
    let l3 = start + (l3_off as usize & 0x3f);
    let icmp = start + (l4_off as usize & 0x1fff);
    let q3 = icmp + 8;
    let ip_len = if V4 { 20 } else { 40 };
    if l3 + ip_len > end || icmp + 8 > end || q3 + ip_len > end {
        return Err(verdict::ABORTED);
    }
    // SAFETY: every access is within [start, end): checked above and below before use.
    unsafe {
        // (version/IHL, TOS) and (TTL, protocol) / (next header, hop limit): 2-byte loads.
        let (q4, proto) = if V4 {
            let ihl = (*(q3 as *const u16)).to_ne_bytes()[0] as usize & 0x0f;
            (q3 + ihl * 4, (*((q3 + 8) as *const u16)).to_ne_bytes()[1])
        } else {
            (q3 + 40, (*((q3 + 6) as *const u16)).to_ne_bytes()[0])
        };
        if q4 + 4 > end {
            return Err(verdict::ABORTED);
        }
        // Address words: destination at 16 / 24, source at 12 / 8.
        let (dst, src) = if V4 { (16, 12) } else { (24, 8) };
        // The one's-complement changes of the ICMP message and of the quoted L4 checksum.
        let (mut di, mut dl) = (0u32, 0u32);
        if i.changes & ICMP_QUOTE_SRC != 0 {
            let (a, b) = pair::<V4>(l3, q3, l3 + dst, q3 + src, q4, &i.quote.src, i.quote.sport);
            di += a;
            dl += b;
        }
        if i.changes & ICMP_QUOTE_DST != 0 {
            let (a, b) = pair::<V4>(
                l3,
                q3,
                l3 + src,
                q3 + dst,
                q4 + 2,
                &i.quote.dst,
                i.quote.dport,
            );
            di += a;
            dl += b;
        }
        // The quoted TCP/UDP checksum, if the quote holds it (an error may quote only 8 bytes
        // of the L4 header). An IPv4 UDP checksum of 0 means none was computed: it stays so.
        let udp = proto == PROTO_UDP;
        let l4c = if udp { q4 + 6 } else { q4 + 16 };
        if l4c + 2 <= end {
            let c = l4c as *mut u16;
            let old = *c;
            if !(udp && V4 && old == 0) {
                let mut new = csum::apply(old, dl);
                if udp && new == 0 {
                    new = 0xffff;
                }
                *c = new;
                di += csum::delta16(old, new);
            }
        }
        let ic = (icmp + 2) as *mut u16;
        *ic = csum::apply(*ic, di);
    }
    Ok(())
}

/// One address of the outer header (at `outer`) and of the quote (at `quote`, its port at
/// `port`) become `new` and `new_port` (network order). The outer and quoted IPv4 header
/// checksums are updated here; returns the changes for the ICMP checksum (the quote's words,
/// and for ICMPv6 the outer address, which its pseudo-header covers) and for the quoted L4
/// checksum (its pseudo-header's address and the port).
///
/// # Safety
/// The IP headers at `l3` and `q3`, and the 2 bytes at `port`, are in bounds.
#[inline(always)]
unsafe fn pair<const V4: bool>(
    l3: usize,
    q3: usize,
    outer: usize,
    quote: usize,
    port: usize,
    new: &Addr,
    new_port: u16,
) -> (u32, u32) {
    let (mut di, mut dl) = (0u32, 0u32);
    let (o, q) = (outer as *mut u32, quote as *mut u32);
    let words = if V4 { 1 } else { 4 };
    for k in 0..words {
        let (old_o, old_q, w) = (*o.add(k), *q.add(k), new[k & 3]);
        *o.add(k) = w;
        *q.add(k) = w;
        let dq = csum::delta32(old_q, w);
        if V4 {
            let c = (l3 + 10) as *mut u16;
            *c = csum::replace32(*c, old_o, w);
            let qc = (q3 + 10) as *mut u16;
            let old_qc = *qc;
            let new_qc = csum::replace32(old_qc, old_q, w);
            *qc = new_qc;
            di += csum::delta16(old_qc, new_qc);
        } else {
            di += csum::delta32(old_o, w);
        }
        di += dq;
        dl += dq;
    }
    let p = port as *mut u16;
    let old_p = *p;
    *p = new_port;
    let dp = csum::delta16(old_p, new_port);
    (di + dp, dl + dp)
}
