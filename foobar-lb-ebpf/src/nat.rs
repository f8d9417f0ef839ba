//! Destination NAT (`FWD_NAT`, one arm): connection tracking in two plain hash maps, never
//! evicted (the controller's sweeper deletes idle pairs).
//!
//! - `NAT_FWD`, by the client's 5-tuple (client -> VIP:vport): the backend. Consulted after
//!   the DSR flow table misses ([`established`]), so DSR's established path costs no more.
//! - `NAT_REV`, by the reply's 5-tuple (backend:bport -> client:cport): the VIP, port and
//!   next-hop MAC the reply goes back with ([`reply`]). Replies are not for a VIP, so they
//!   would take the pass-through path: main.rs checks for them first, but only when some
//!   service uses NAT (`FW_HAS_NAT`, in the word every packet reads) and the source may be a
//!   NAT backend (`NAT_SRC_FILTER`, one array read).
//!
//! A new connection ([`open`]) inserts its reverse entry first with `BPF_NOEXIST`, so a reply
//! 5-tuple already tracked (a collision) or a full table drops the packet, counted, before
//! anything is sent. Each direction writes only its own entry (time and FIN/RST bits), so the
//! two CPUs handling the two directions never write the same cache line.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use foobar_lb_common::{
    nat_reply_key, verdict, vip_filter_bit, Addr, Backend, Iface, NatFwd, NatRev, BACKEND_ACTIVE,
    BACKEND_DRAINING, FLOW_FIN, FLOW_RST, FLOW_TIME_MASK, FW_HAS_NAT, NAT_REPLIED, NAT_TIME_MASK,
    VIP_FILTER_WORDS,
};

use crate::{
    firewall,
    maps::{BACKENDS, NAT_FWD, NAT_REV, NAT_SCRATCH, NAT_SRC_FILTER},
    parse::Packet,
    rewrite::{self, Side},
    select::flow_now,
};

const EEXIST: i32 = 17;

/// The packet as read back from `NAT_SCRATCH`: equal to `pkt`, but unknown to the verifier,
/// so every parse outcome reaching a NAT path is verified as one (see the map's doc).
#[inline(always)]
fn normalize(pkt: &Packet) -> Option<Packet> {
    let s = NAT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch element; XDP runs with preemption off, so nothing else
    // writes it between these stores and loads.
    unsafe {
        (*s).key = pkt.key;
        (*s).l3_off = pkt.l3_off;
        (*s).l4_off = pkt.l4_off;
        (*s).tcp_flags = pkt.tcp_flags;
        Some(Packet {
            key: core::ptr::read_volatile(&(*s).key),
            tcp_flags: core::ptr::read_volatile(&(*s).tcp_flags),
            l3_off: core::ptr::read_volatile(&(*s).l3_off),
            l4_off: core::ptr::read_volatile(&(*s).l4_off),
        })
    }
}

/// `rewrite::forward`'s NAT arm: destination address and port become the backend's.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    iface: &Iface,
    backend: &Backend,
) -> Result<(), u32> {
    let pkt = normalize(pkt).ok_or(verdict::ABORTED)?;
    let k = &pkt.key;
    rewrite::translate(
        ctx,
        &pkt,
        Side::Dst,
        &k.dst,
        &backend.addr,
        k.dport,
        backend.port,
    )?;
    rewrite::set_macs(ctx, &backend.mac, &iface.mac)
}

/// Whether `src` may be a NAT backend's address: a clear filter bit proves it is not.
#[inline(always)]
fn maybe_backend(src: &Addr, family: u8) -> bool {
    let bit = vip_filter_bit(src, family) as usize;
    match NAT_SRC_FILTER.get(0) {
        Some(f) => f[(bit >> 6) & (VIP_FILTER_WORDS - 1)] & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// For a packet not for a VIP, after the firewall's rules (which judge a reply as any such
/// packet): if it is a backend's reply to a tracked connection, addressed to this interface,
/// it is translated back (source -> VIP:vport, destination MAC -> the client's next hop,
/// source MAC -> ours) and sent out (one arm: the interface it came in on). `None`: not one.
///
/// Called where the destination is proved no VIP: by the prefilter, or (for a client whose
/// address shares a VIP's prefilter bit) by the exact VIP set after both flow tables missed.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    pkt: &Packet,
    fw: firewall::State,
) -> Option<Result<(u32, u32), u32>> {
    // Without NAT services this costs one bit test of a word already read.
    if fw.flags & FW_HAS_NAT == 0 || !maybe_backend(&pkt.key.src, pkt.key.family) {
        return None;
    }
    let pkt = normalize(pkt)?;
    let rev = NAT_REV.get_ptr_mut(pkt.key)?;
    let iface = crate::prog::receiver(ctx, pkt.l3_off).ok()?;
    Some(reply_tx(ctx, &pkt, iface, rev))
}

#[inline(always)]
fn reply_tx(
    ctx: &XdpContext,
    pkt: &Packet,
    iface: &Iface,
    rev: *mut NatRev,
) -> Result<(u32, u32), u32> {
    // SAFETY: a live element of a preallocated hash map; the sweeper may delete it meanwhile,
    // and the slot then holds another connection's values at worst for this one packet, as
    // with any preallocated map (see the sweeper's race note in the controller).
    let r = unsafe { *rev };
    let next = (r.seen & (FLOW_FIN | FLOW_RST))
        | NAT_REPLIED
        | pkt.closing_bits()
        | (flow_now() & NAT_TIME_MASK);
    if next != r.seen {
        unsafe { (*rev).seen = next };
    }
    let k = &pkt.key;
    rewrite::translate(ctx, pkt, Side::Src, &k.src, &r.vip, k.sport, r.vport)?;
    rewrite::set_macs(ctx, &r.client_mac, &iface.mac)?;
    Ok((
        aya_ebpf::bindings::xdp_action::XDP_TX,
        verdict::TX_NAT_REPLY,
    ))
}

/// The backend of a tracked NAT connection, if this client packet belongs to one whose
/// backend still serves (active or draining), with the firewall re-checked once per
/// generation as for DSR flows. A connection whose backend is gone, or a SYN on the 5-tuple
/// of a closed one, is forgotten (both entries) and `None` sends the packet to scheduling.
#[inline(always)]
pub fn established(
    pkt: &Packet,
    fw: firewall::State,
    checked: bool,
    len: u64,
) -> Result<Option<(u32, Backend)>, u32> {
    let Some(pkt) = normalize(pkt) else {
        return Ok(None);
    };
    let key = &pkt.key;
    let Some(fwd) = NAT_FWD.get_ptr_mut(key) else {
        return Ok(None);
    };
    // SAFETY: a live element of a preallocated hash map (see `reply`).
    let f = unsafe { *fwd };
    let serving = match BACKENDS.get(f.backend_id) {
        Some(b)
            if b.owner == f.owner && (b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING) =>
        {
            Some(*b)
        }
        _ => None,
    };
    let rkey = nat_reply_key(key, &f);
    // Either side's FIN or RST closed it (a SYN retransmitted before the answer is no reopening).
    let reopened = pkt.syn()
        && (f.seen & (FLOW_FIN | FLOW_RST) != 0
            || unsafe { NAT_REV.get(rkey) }.is_some_and(|r| r.seen & (FLOW_FIN | FLOW_RST) != 0));
    let Some(backend) = serving.filter(|_| !reopened) else {
        let _ = NAT_REV.remove(rkey);
        let _ = NAT_FWD.remove(key);
        return Ok(None);
    };
    if fw.flags != 0 && !checked && f.fw_gen != fw.gen {
        firewall::filter(fw, key, len)?;
        unsafe { (*fwd).fw_gen = fw.gen };
    }
    let next = (f.seen & !FLOW_TIME_MASK) | pkt.closing_bits() | flow_now();
    if next != f.seen {
        unsafe { (*fwd).seen = next };
    }
    Ok(Some((f.backend_id, backend)))
}

/// Tracks a new connection to `backend` (id `id`), scheduled for this packet: the reverse
/// entry first (`BPF_NOEXIST`: a reply 5-tuple already in use is a collision), then the
/// forward one. The caller then forwards the packet as any other (`rewrite::forward`).
#[inline(always)]
pub fn open(
    ctx: &XdpContext,
    pkt: &Packet,
    id: u32,
    backend: &Backend,
    gen: u32,
) -> Result<(), u32> {
    let key = &pkt.key;
    let now = flow_now();
    let fwd = NatFwd {
        backend_addr: backend.addr,
        backend_id: id,
        owner: backend.owner,
        fw_gen: gen,
        seen: now | pkt.closing_bits(),
        backend_port: backend.port,
        _pad: [0; 6],
    };
    let mut rev = NatRev {
        vip: key.dst,
        client_mac: [0; 6],
        vport: key.dport,
        ifindex: ctx.ingress_ifindex() as u32,
        seen: now & NAT_TIME_MASK,
    };
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return Err(verdict::ABORTED);
    }
    // The frame's source MAC, as a 4-byte and a 2-byte word.
    // SAFETY: bytes 6..12 are in bounds (checked above).
    unsafe {
        let m = rev.client_mac.as_mut_ptr();
        *(m as *mut u32) = *((start + 6) as *const u32);
        *(m.add(4) as *mut u16) = *((start + 10) as *const u16);
    }
    let rkey = nat_reply_key(key, &fwd);
    if let Err(e) = NAT_REV.insert(rkey, rev, BPF_NOEXIST as u64) {
        return Err(if e == -EEXIST {
            verdict::DROP_NAT_COLLISION
        } else {
            verdict::DROP_NAT_TABLE_FULL
        });
    }
    if NAT_FWD.insert(key, fwd, 0).is_err() {
        let _ = NAT_REV.remove(rkey);
        return Err(verdict::DROP_NAT_TABLE_FULL);
    }
    Ok(())
}
