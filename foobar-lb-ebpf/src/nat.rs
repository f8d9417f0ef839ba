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
//!
//! Full NAT (`FWD_FULLNAT`, entries marked `NAT_FULL`) uses the same maps and paths: the
//! source also becomes a SNAT address of the service's pool (`SNAT_POOLS`, picked by the flow
//! hash) and a port allocated at open by inserting the reverse entry (backend:bport ->
//! snat:sport) with `BPF_NOEXIST` for up to `SNAT_PORT_TRIES` candidate ports, so two
//! connections never share a reply 5-tuple. The backend's next hop comes from one FIB lookup
//! at open, kept in the forward entry: a connection's packets then cost no helper call, and
//! the next hop of a connection does not change under it (a moved backend is a new
//! connection's business). The reply's destination becomes the client again, and it leaves
//! by the client's interface to the MAC the client's first frame came from, as for NAT.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_NOEXIST},
    programs::XdpContext,
    EbpfContext,
};
use foobar_lb_common::{
    nat_reply_key, verdict, vip_filter_bit, Addr, Backend, FlowKey, Iface, NatFwd, NatRev, VipKey,
    BACKEND_ACTIVE, BACKEND_DRAINING, FAMILY_V4, FLOW_FIN, FLOW_RST, FLOW_TIME_MASK, FWD_FULLNAT,
    FW_HAS_NAT, FW_HAS_SNAT, MAX_SNAT_ADDRS, NAT_FULL, NAT_REPLIED, NAT_TIME_MASK, PROTO_TCP,
    PROTO_UDP, SNAT_PORT_TRIES, VIP_FILTER_WORDS,
};

use crate::{
    firewall,
    maps::{
        BACKENDS, BACKEND_REFUSED, IFACES, NAT_FWD, NAT_REV, NAT_SCRATCH, NAT_SRC_FILTER,
        SNAT_ADDRS, SNAT_POOLS,
    },
    parse::Packet,
    partial,
    rewrite::{self, Side},
    select::flow_now,
};

const EEXIST: i32 = 17;
/// The TCP header's RST flag (`Packet::tcp_flags`; 0 for other protocols).
const TCP_RST: u8 = 0x04;

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
            // Only `parse::ipv4_header_ok` (a VIP packet's sanity check) reads it, and no NAT
            // path calls that on this copy: the client's packets were checked before, the
            // backends' replies are not for a VIP and are not checked.
            ip_sum: 0,
        })
    }
}

/// `rewrite::forward`'s NAT arm: destination address and port become the backend's; out of
/// the backend's interface (`Backend::ifindex`, 0: the receiving one). Another interface is
/// only named in the returned action ([`rewrite::EGRESS`]): the program's exit sends it there
/// ([`rewrite::redirect`]), once rather than in each of this function's inlined call sites
/// (where the source MAC lookup and the helper call cost the verifier ~50k instructions; this
/// way ~25k).
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    iface: &Iface,
    backend: &Backend,
) -> Result<u32, u32> {
    let pkt = normalize(pkt).ok_or(verdict::ABORTED)?;
    let partial = partial::note(ctx, &pkt);
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
    rewrite::set_macs(ctx, &backend.mac, &iface.mac)?;
    Ok(rewrite::egress(backend.ifindex) | partial)
}

/// The source MAC of a frame sent out of `ifindex`: the receiving interface's (`iface`), or
/// another interface of ours (a two-arm balancer).
#[inline(always)]
fn own_mac<'a>(ctx: &XdpContext, iface: &'a Iface, ifindex: u32) -> Result<&'a [u8; 6], u32> {
    if ifindex == ctx.ingress_ifindex() as u32 {
        Ok(&iface.mac)
    } else {
        Ok(&IFACES.get(ifindex).ok_or(verdict::ABORTED)?.mac)
    }
}

/// `rewrite::forward`'s full-NAT arm: destination -> backend address and port, source -> the
/// connection's SNAT address and port, MACs -> the next hop's and the egress interface's, as
/// the connection in the scratch (written by [`established`] or [`open`] for this packet)
/// holds them; out of the interface the FIB lookup chose.
#[inline(always)]
pub fn forward_full(ctx: &XdpContext, pkt: &Packet) -> Result<u32, u32> {
    let pkt = normalize(pkt).ok_or(verdict::ABORTED)?;
    let s = NAT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
    // SAFETY: this CPU's scratch element (see `normalize`); read in place, not copied (stack).
    let c = unsafe { &(*s).conn };
    if c.flags & NAT_FULL == 0 {
        return Err(verdict::ABORTED);
    }
    let partial = partial::note(ctx, &pkt);
    rewrite::translate_both(
        ctx,
        &pkt,
        &c.snat_addr,
        c.snat_port,
        &c.backend_addr,
        c.backend_port,
    )?;
    rewrite::set_macs(ctx, &c.next_mac, &c.src_mac)?;
    Ok(rewrite::out_by(ctx, c.ifindex) | partial)
}

/// Whether `src` may be a NAT backend's address: a clear filter bit proves it is not.
#[inline(always)]
pub fn maybe_backend(src: &Addr, family: u8) -> bool {
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
    if fw.flags & FW_HAS_NAT == 0 {
        return None;
    }
    let backend = maybe_backend(&pkt.key.src, pkt.key.family);
    let snat = fw.flags & FW_HAS_SNAT != 0;
    if !backend && !snat {
        return None;
    }
    let pkt = normalize(pkt)?;
    if backend {
        if let Some(rev) = NAT_REV.get_ptr_mut(pkt.key) {
            let iface = crate::prog::receiver(ctx, pkt.l3_off).ok()?;
            // A refusal (see `forget_refused`, which the program's exit calls for this verdict).
            // SAFETY: as in `reply_tx`.
            if pkt.tcp_flags & TCP_RST != 0 && unsafe { (*rev).seen } & NAT_REPLIED == 0 {
                return Some(Err(verdict::DROP_SYN_REFUSED));
            }
            return Some(reply_tx(ctx, &pkt, iface, rev));
        }
    }
    if snat {
        return stray(&pkt.key).map(Err);
    }
    None
}

/// After a `DROP_SYN_REFUSED` verdict of [`reply`] (a RST answering a connection that has had
/// no reply yet: the backend refused the client's SYN, nothing listens there), called once at
/// the program's exit rather than inside `reply`'s two inlined call sites (that doubled the
/// verifier's work there, past its budget): the connection is forgotten (both entries) so the
/// client's SYN retransmission is scheduled anew, and the refusal is counted for the backend
/// (`BACKEND_REFUSED`, read by the controller's passive health). The reply's 5-tuple is still
/// in the scratch (`normalize` wrote it; nothing since has). The client's 5-tuple is built in
/// the scratch too, not on the stack.
// By reference into the scratch (`&*fk`), as in `open`: the by-value form clippy suggests
// copies the key onto the stack first.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn forget_refused() {
    let Some(s) = NAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch element (see `normalize`).
    let (rkey, fk) = unsafe { (&(*s).key, &mut (*s).rkey) };
    let Some(r) = (unsafe { NAT_REV.get(rkey) }) else {
        return;
    };
    // The client's 5-tuple: the reply's destination under NAT; kept in the entry under full NAT.
    if r.flags & NAT_FULL != 0 {
        fk.set(&r.client, r.cport, &r.vip, r.vport, rkey);
    } else {
        fk.set(&rkey.dst, rkey.dport, &r.vip, r.vport, rkey);
    }
    if let Some(f) = unsafe { NAT_FWD.get(&*fk) } {
        if let Some(c) = BACKEND_REFUSED.get_ptr_mut(f.backend_id) {
            // SAFETY: this CPU's counter.
            unsafe { *c += 1 };
        }
    }
    let _ = NAT_FWD.remove(&*fk);
    let _ = NAT_REV.remove(rkey);
}

/// `DROP_SNAT_STRAY` for TCP or UDP to a SNAT address on a port of its range (no tracked
/// connection's reply, or [`reply`] would have taken it): such a port belongs to the
/// balancer's connections, never to the host. Other ports of the address are the host's.
#[inline(always)]
fn stray(key: &FlowKey) -> Option<u32> {
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return None;
    }
    let addr = VipKey {
        addr: key.dst,
        family: key.family,
        _pad: [0; 3],
    };
    let range = unsafe { SNAT_ADDRS.get(addr) }.copied()?;
    let port = u16::from_be(key.dport) as u32;
    (port >= range & 0xffff && port <= range >> 16).then_some(verdict::DROP_SNAT_STRAY)
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
    let r = unsafe { &*rev };
    let next = (r.seen & (FLOW_FIN | FLOW_RST))
        | NAT_REPLIED
        | pkt.closing_bits()
        | (flow_now() & NAT_TIME_MASK);
    let (seen, full, ifindex) = (r.seen, r.flags & NAT_FULL != 0, r.ifindex);
    if next != seen {
        unsafe { (*rev).seen = next };
    }
    let k = &pkt.key;
    let partial = partial::note(ctx, pkt);
    // Not `translate_both` for full NAT, as `forward_full` does: the two copies here (one per
    // mode) cost ~8,000 verified instructions for ~6 ns per full-NAT reply (README).
    rewrite::translate(ctx, pkt, Side::Src, &k.src, &r.vip, k.sport, r.vport)?;
    if full {
        // Full NAT: the destination (SNAT address and port) becomes the client again.
        rewrite::translate(ctx, pkt, Side::Dst, &k.dst, &r.client, k.dport, r.cport)?;
    }
    // Out of the client's interface (two-arm: not the one the reply came in on).
    rewrite::set_macs(ctx, &r.client_mac, own_mac(ctx, iface, ifindex)?)?;
    Ok((
        rewrite::out_by(ctx, ifindex) | partial,
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
    // SAFETY: a live element of a preallocated hash map (see `reply`); read in place.
    let f = unsafe { &*fwd };
    let serving = match BACKENDS.get(f.backend_id) {
        Some(b)
            if b.owner == f.owner && (b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING) =>
        {
            Some(*b)
        }
        _ => None,
    };
    let rkey = nat_reply_key(key, f);
    // Either side's FIN or RST closed it (a SYN retransmitted before the answer is no reopening).
    let reopened = pkt.syn()
        && (f.seen & (FLOW_FIN | FLOW_RST) != 0
            || unsafe { NAT_REV.get(rkey) }.is_some_and(|r| r.seen & (FLOW_FIN | FLOW_RST) != 0));
    let Some(backend) = serving.filter(|_| !reopened) else {
        let _ = NAT_REV.remove(rkey);
        let _ = NAT_FWD.remove(key);
        return Ok(None);
    };
    let (fw_gen, seen, full, backend_id) =
        (f.fw_gen, f.seen, f.flags & NAT_FULL != 0, f.backend_id);
    if full {
        let s = NAT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
        // SAFETY: this CPU's scratch element (see `normalize`); a map-to-map copy.
        unsafe { (*s).conn = *fwd };
    }
    if fw.flags != 0 && !checked && fw_gen != fw.gen {
        firewall::filter(fw, key, len)?;
        unsafe { (*fwd).fw_gen = fw.gen };
    }
    let next = (seen & !FLOW_TIME_MASK) | pkt.closing_bits() | flow_now();
    if next != seen {
        unsafe { (*fwd).seen = next };
    }
    Ok(Some((backend_id, backend)))
}

/// Tracks a new connection to `backend` (id `id`) of service `service_id`, scheduled for this
/// packet: the reverse entry first (`BPF_NOEXIST`: a reply 5-tuple already in use is a
/// collision), then the forward one. The caller then forwards the packet as any other
/// (`rewrite::forward`). The entries are built in the NAT scratch, not on the stack.
// The entries are passed to the map helpers by reference into the scratch (`&*rkey`): the
// by-value form clippy suggests copies them onto the stack first, which has no room for them.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn open(
    ctx: &XdpContext,
    pkt: &Packet,
    service_id: u32,
    id: u32,
    backend: &Backend,
    gen: u32,
) -> Result<(), u32> {
    let now = flow_now();
    let s = NAT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
    // SAFETY: this CPU's scratch element (see `normalize`). The key is read from there too
    // (its values unknown to the verifier, and no copy on the stack).
    let (fwd, rev, rkey, key) = unsafe {
        (*s).key = pkt.key;
        (&mut (*s).conn, &mut (*s).rev, &mut (*s).rkey, &(*s).key)
    };
    fwd.backend_addr = backend.addr;
    fwd.backend_id = id;
    fwd.owner = backend.owner;
    fwd.fw_gen = gen;
    fwd.seen = now | pkt.closing_bits();
    fwd.backend_port = backend.port;
    fwd.snat_port = 0;
    fwd.ifindex = 0;
    fwd.snat_addr = [0; 4];
    fwd.next_mac = [0; 6];
    fwd.src_mac = [0; 6];
    fwd.flags = 0;
    rev.vip = key.dst;
    rev.vport = key.dport;
    rev.ifindex = ctx.ingress_ifindex() as u32;
    rev.seen = now & NAT_TIME_MASK;
    rev.client = [0; 4];
    rev.cport = 0;
    rev._pad = 0;
    rev.flags = 0;
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
    if backend.fwd_mode == FWD_FULLNAT {
        return open_full(ctx, key, service_id, fwd, rev, rkey, s);
    }
    *rkey = nat_reply_key(key, fwd);
    if let Err(e) = NAT_REV.insert(&*rkey, &*rev, BPF_NOEXIST as u64) {
        return Err(if e == -EEXIST {
            verdict::DROP_NAT_COLLISION
        } else {
            verdict::DROP_NAT_TABLE_FULL
        });
    }
    if NAT_FWD.insert(key, &*fwd, 0).is_err() {
        let _ = NAT_REV.remove(&*rkey);
        return Err(verdict::DROP_NAT_TABLE_FULL);
    }
    Ok(())
}

/// [`open`] for full NAT: a SNAT address from the service's pool (by the flow hash), a
/// source port whose reply 5-tuple is free (up to `SNAT_PORT_TRIES` candidates from the
/// hash, each claimed by inserting the reverse entry with `BPF_NOEXIST`), then the FIB lookup
/// of the backend from that address; the forward entry last. The connection stays in the
/// scratch (`conn`) for [`forward_full`].
// The entries are passed to the map helpers by reference into the scratch (`&*rkey`): the
// by-value form clippy suggests copies them onto the stack first, which has no room for them.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn open_full(
    ctx: &XdpContext,
    key: &FlowKey,
    service_id: u32,
    fwd: &mut NatFwd,
    rev: &mut NatRev,
    rkey: &mut FlowKey,
    s: *mut foobar_lb_common::NatScratch,
) -> Result<(), u32> {
    let pool = SNAT_POOLS.get(service_id).ok_or(verdict::ABORTED)?;
    let n = pool.count;
    let (lo, hi) = (pool.port_lo as u32, pool.port_hi as u32);
    if n == 0 || hi < lo {
        return Err(verdict::DROP_SNAT_EXHAUSTED);
    }
    let h = snat_hash(key);
    fwd.snat_addr = pool.addrs[(h % n) as usize & (MAX_SNAT_ADDRS - 1)];
    fwd.flags = NAT_FULL;
    rev.client = key.src;
    rev.cport = key.sport;
    rev.flags = NAT_FULL;
    let span = hi - lo + 1;
    let seed = h.rotate_left(16);
    // Double hashing: each connection steps through the range by a stride of its own, so
    // connections whose first candidates are taken do not all try the same next ones (one
    // stride for all made taken ports cluster: in the bench, 0.23% of new connections found
    // all 8 taken with a quarter of the range in use).
    let stride = 1 + h.rotate_left(8) % span.saturating_sub(1).max(1);
    // The client's own port first, as Linux's masquerade does: a backend then sees each
    // client connection's 4-tuple keep its port, so a port reused by the client is reused
    // towards the backend with the same client behind it. Another client behind the same port
    // number would carry TCP timestamps from another clock (Linux offsets them per
    // connection), and a backend still holding that 4-tuple in TIME_WAIT refuses its SYN
    // (PAWS): the client then waits a second to retry.
    let cport = u16::from_be(key.sport) as u32;
    let own = cport >= lo && cport <= hi;
    let mut i = 0;
    loop {
        if i == SNAT_PORT_TRIES {
            return Err(verdict::DROP_SNAT_EXHAUSTED);
        }
        let port = if i == 0 && own {
            cport
        } else {
            lo + seed.wrapping_add(i.wrapping_mul(stride)) % span
        };
        fwd.snat_port = (port as u16).to_be();
        *rkey = nat_reply_key(key, fwd);
        match NAT_REV.insert(&*rkey, &*rev, BPF_NOEXIST as u64) {
            Ok(()) => break,
            Err(e) if e == -EEXIST => {}
            Err(_) => return Err(verdict::DROP_NAT_TABLE_FULL),
        }
        i += 1;
    }
    // SAFETY: this CPU's scratch element; the FIB parameters take its 64 bytes there.
    let fib = unsafe { &mut *((*s).fib.as_mut_ptr() as *mut bpf_fib_lookup) };
    if let Err(reason) = next_hop(ctx, key, fwd, fib) {
        let _ = NAT_REV.remove(&*rkey);
        return Err(reason);
    }
    if NAT_FWD.insert(key, &*fwd, 0).is_err() {
        let _ = NAT_REV.remove(&*rkey);
        return Err(verdict::DROP_NAT_TABLE_FULL);
    }
    Ok(())
}

/// The client 5-tuple's hash that picks a connection's SNAT address and candidate ports
/// (murmur3's finalizer over the words folded together: registers only, no array on the
/// stack, unlike `flow_hash`).
#[inline(always)]
fn snat_hash(key: &FlowKey) -> u32 {
    let mut h = key.src[0]
        ^ key.src[1].rotate_left(5)
        ^ key.src[2].rotate_left(11)
        ^ key.src[3].rotate_left(17)
        ^ key.dst[0].rotate_left(23)
        ^ key.dst[3].rotate_left(29)
        ^ ((key.sport as u32) << 16 | key.dport as u32)
        ^ key.proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The kernel's FIB lookup from the SNAT address to the backend (as the translated packet
/// will be routed), from the receiving interface: fills `fwd`'s egress interface and MACs.
/// No neighbour entry: `DROP_FIB_NO_NEIGH` (the lookup does not resolve one; the controller's
/// health checks keep the backends' entries); any other failure: `DROP_FIB_NO_ROUTE`.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    key: &FlowKey,
    fwd: &mut NatFwd,
    p: &mut bpf_fib_lookup,
) -> Result<(), u32> {
    // SAFETY: a plain C struct; all-zero is its "no options" value (set in place: no stack).
    unsafe { core::ptr::write_bytes(p as *mut bpf_fib_lookup, 0, 1) };
    p.l4_protocol = key.proto;
    p.sport = fwd.snat_port;
    p.dport = fwd.backend_port;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if key.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = fwd.snat_addr[0];
        p.__bindgen_anon_4.ipv4_dst = fwd.backend_addr[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = fwd.snat_addr;
        p.__bindgen_anon_4.ipv6_dst = fwd.backend_addr;
    }
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size passed (map memory).
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.as_ptr(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != 0 {
        return Err(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            verdict::DROP_FIB_NO_NEIGH
        } else {
            verdict::DROP_FIB_NO_ROUTE
        });
    }
    fwd.ifindex = p.ifindex;
    fwd.next_mac = p.dmac;
    fwd.src_mac = p.smac;
    Ok(())
}
