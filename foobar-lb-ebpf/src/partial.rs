//! Frames whose TCP/UDP checksum is partial (the kernel's `CHECKSUM_PARTIAL`): a sender on
//! this host with `tx` checksum offload on (veth, tap: the default) leaves only the
//! pseudo-header's sum in the field for whoever transmits the frame last to finish. XDP sees
//! the bytes, never that state, and NAT's incremental update (RFC 1624) is only right for a
//! full checksum. So each NAT rewrite notes whether the field held exactly the arriving
//! pseudo-header's sum ([`note`], a few instructions), and the program's exit, once, for a
//! frame it sends ([`finish`]): sums the sent segment; if that is a valid full checksum the
//! frame had one (it equals the pseudo-header's sum once in 65,536) and the update was right;
//! otherwise it was partial, and the field becomes what its receiver needs:
//! - generic mode (`IFACE_GENERIC` on the receiving interface): the frame stays the skb, its
//!   partial state goes on with it, and the field must be the new pseudo-header's sum;
//! - native mode: the frame reaches its receiver with no checksum state and is verified
//!   there, so the field gets the full checksum.
//!
//! DEVELOPING.md "Checksum offload and XDP" has the kernel paths. The arithmetic is
//! `foobar_lb_common::csum::{pseudo, complete}` (host-tested).

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use foobar_lb_common::{csum, Addr, FAMILY_V4, IFACE_GENERIC, PROTO_UDP, SUM_CHUNK};

use crate::{
    maps::{IFACES, NAT_SCRATCH, SUM_SCRATCH},
    parse::Packet,
};

/// An action bit beside `rewrite::EGRESS`: the frame's checksum looked partial on arrival
/// ([`note`]); the program's exit finishes it ([`finish`]).
pub const PARTIAL: u32 = 1 << 17;

/// Segments of this length or longer are not summed (the verifier walks every chunk): in
/// generic mode such a frame (a GSO or GRO one: a full checksum never arrives on one) keeps
/// its partial state; native mode sees no frame this long on a 1500-byte veth.
const SUMMED: u32 = 8 * SUM_CHUNK as u32;

/// The TCP/UDP segment's length by the IP header (the frame may carry padding after it).
/// The caller has checked 20 (IPv4) or 40 (IPv6) bytes at `l3`.
#[inline(always)]
unsafe fn l4_len(l3: usize, l4: usize, v4: bool) -> u32 {
    let hdrs = (l4 - l3) as u32;
    if v4 {
        (u16::from_be(*((l3 + 2) as *const u16)) as u32).wrapping_sub(hdrs)
    } else {
        (u16::from_be(*((l3 + 4) as *const u16)) as u32 + 40).wrapping_sub(hdrs)
    }
}

/// [`PARTIAL`] if `pkt`'s checksum field holds exactly its pseudo-header's sum (as it arrived:
/// call before the rewrite), else 0. Passed through the NAT scratch and read back, so the
/// verifier sees one unknown value rather than two constants to verify every later step
/// with.
#[inline(always)]
pub fn note(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(s) = NAT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    // Bounded for the verifier as in `rewrite::translate`.
    let l3 = start + (pkt.l3_off as usize & 0x3f);
    let l4 = start + (pkt.l4_off as usize & 0x1fff);
    let k = &pkt.key;
    let v4 = k.family == FAMILY_V4;
    let check_at = if k.proto == PROTO_UDP {
        l4 + 6
    } else {
        l4 + 16
    };
    let mut partial = 0;
    // SAFETY: packet reads in bounds (checked here); the scratch is this CPU's (see
    // `nat::normalize`).
    unsafe {
        if check_at + 2 <= end && l3 + 20 <= end && (v4 || l3 + 40 <= end) {
            let field = *(check_at as *const u16);
            let len = l4_len(l3, l4, v4);
            let p = csum::pseudo(&k.src, &k.dst, if v4 { 1 } else { 4 }, k.proto, len);
            // (An IPv4 UDP checksum of 0 is "none"; a partial one is never 0: the sum of a
            // non-zero protocol number folds to non-zero.)
            partial = (field == csum::fold(p)) as u8;
        }
        (*s).partial = partial;
        (core::ptr::read_volatile(&(*s).partial) as u32 & 1) * PARTIAL
    }
}

/// At the program's exit, for a sent frame [`note`] marked: finishes its checksum (see the
/// module's doc). The frame's offsets and protocol are in the NAT scratch, where every NAT
/// path's `nat::normalize` wrote them for this packet.
#[inline(always)]
pub fn finish(ctx: &XdpContext) {
    let Some(s) = NAT_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch element (see `nat::normalize`).
    let (l3_off, l4_off, family, proto) =
        unsafe { ((*s).l3_off, (*s).l4_off, (*s).key.family, (*s).key.proto) };
    let generic = IFACES
        .get(ctx.ingress_ifindex() as u32)
        .is_some_and(|i| i.flags & IFACE_GENERIC != 0);
    let (start, end) = (ctx.data(), ctx.data_end());
    let l3 = start + (l3_off as usize & 0x3f);
    let l4 = start + (l4_off as usize & 0x1fff);
    let v4 = family == FAMILY_V4;
    let udp = proto == PROTO_UDP;
    let check_at = if udp { l4 + 6 } else { l4 + 16 };
    if check_at + 2 > end {
        return;
    }
    // SAFETY: in bounds (checked here, above and in `sum`).
    unsafe {
        let mut src: Addr = [0; 4];
        let mut dst: Addr = [0; 4];
        let words = if v4 {
            if l3 + 20 > end {
                return;
            }
            src[0] = *((l3 + 12) as *const u32);
            dst[0] = *((l3 + 16) as *const u32);
            1
        } else {
            if l3 + 40 > end {
                return;
            }
            let (a, b) = ((l3 + 8) as *const u32, (l3 + 24) as *const u32);
            for i in 0..4 {
                src[i] = *a.add(i);
                dst[i] = *b.add(i);
            }
            4
        };
        let len = l4_len(l3, l4, v4);
        let p = csum::pseudo(&src, &dst, words, proto, len);
        let check = check_at as *mut u16;
        let sum = sum(ctx, l4_off as u32 & 0x1fff, len);
        if let Some(c) = csum::complete(p, *check, sum, generic, udp) {
            *check = c;
        }
    }
}

/// The one's-complement sum (not folded) of the `len` bytes at `l4_off`, or None if they are
/// not all in the frame or `len` is [`SUMMED`] or more. Copied into the scratch by the helper
/// ([`SUM_CHUNK`] at a time, the last chunk padded with zeros to whole words, as the checksum
/// pads an odd last byte), which checks the bounds itself: a loop of packet reads costs the
/// verifier its every iteration for each state reaching it.
#[inline(always)]
unsafe fn sum(ctx: &XdpContext, l4_off: u32, len: u32) -> Option<u32> {
    if len >= SUMMED {
        return None;
    }
    let buf = SUM_SCRATCH.get_ptr_mut(0)? as *mut u8;
    let chunk = SUM_CHUNK as u32;
    let mut s = 0u32;
    let mut off = 0u32;
    while off < SUMMED {
        if off >= len {
            break;
        }
        let n = if len - off > chunk { chunk } else { len - off };
        // 1..=SUM_CHUNK, and the last word's offset, in forms the verifier can bound.
        let n = ((n - 1) & (chunk - 1)) + 1;
        let last = (n - 1) & (chunk - 4);
        let words = last + 4;
        // The word the last bytes share with the padding, zeroed before they are copied in.
        *(buf.add(last as usize) as *mut u32) = 0;
        if bpf_xdp_load_bytes(ctx.ctx, l4_off + off, buf as *mut _, n) != 0 {
            return None;
        }
        // The helper adds the seed with end-around carry: the running sum never overflows.
        s = bpf_csum_diff(core::ptr::null_mut(), 0, buf as *mut u32, words, s) as u32;
        off += chunk;
    }
    Some(s)
}
