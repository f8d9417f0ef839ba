//! foobar-lb data plane: one XDP program that balances packets for virtual services.
//!
//! The entry point only sequences the stages: parse -> service lookup -> backend selection
//! (flow table, then round-robin) -> rewrite -> XDP_TX. Every return path counts its verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline asm for the atomic fetch-add (see select.rs); the build allows it via RUSTC_BOOTSTRAP.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod firewall;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod nat_icmp;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod partial;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod sync;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use foobar_lb_common::{
        owner_service, verdict, Iface, ServiceKey, VipKey, VlanKey, FAMILY_V4, FAMILY_V6, FLOW_FIN,
        FLOW_RST, FLOW_TIME_MASK, FW_HAS_NAT, ICMP_TO_BACKEND, IFACE_ACTIVE, PROTO_TCP, SVC_NAT,
    };

    use crate::{
        firewall,
        maps::{IFACES, IFACE_VLANS, SERVICES, SUSPECT_SCRATCH, VIPS},
        nat, nat_icmp,
        parse::{self, parse, Packet, Parsed},
        partial, rewrite, select, stats,
    };

    #[xdp]
    pub fn foobar_lb(ctx: XdpContext) -> u32 {
        let (action, reason) = match try_lb(&ctx) {
            Ok(v) => v,
            Err(reason) => (xdp_action::XDP_DROP, reason),
        };
        // Here, once, rather than where `nat::reply` decided it (inlined twice).
        if reason == verdict::DROP_SYN_REFUSED {
            nat::forget_refused();
        }
        let partial = action & partial::PARTIAL != 0;
        let action = action & !partial::PARTIAL;
        let action = if reason == verdict::ABORTED {
            xdp_action::XDP_ABORTED
        } else if action & rewrite::EGRESS != 0 {
            // A NAT backend on another interface (see `rewrite::EGRESS`).
            rewrite::redirect(&ctx, action)
        } else {
            action
        };
        // A NAT rewrite of a frame whose checksum looked partial (see `partial`): once, here.
        if partial && (action == xdp_action::XDP_TX || action == xdp_action::XDP_REDIRECT) {
            partial::finish(&ctx);
        }
        // Sent out of another interface (a two-arm balancer): counted apart. A redirect the
        // helper refused (XDP_ABORTED) is counted as aborted, not as sent.
        let reason = match action {
            xdp_action::XDP_REDIRECT
                if reason == verdict::TX || reason == verdict::TX_NAT_REPLY =>
            {
                verdict::TX_REDIRECT
            }
            xdp_action::XDP_ABORTED => verdict::ABORTED,
            _ => reason,
        };
        stats::count_verdict(reason);
        action
    }

    /// Returns (XDP action, verdict counter index); `Err` carries a drop reason.
    #[inline(always)]
    fn try_lb(ctx: &XdpContext) -> Result<(u32, u32), u32> {
        let len = (ctx.data_end() - ctx.data()) as u64;
        let judged = judge(ctx, len)?;
        // One compare for both markers (`nat_icmp::TRANSLATE` < `FIREWALL_THEN_PASS`).
        if judged.1 < nat_icmp::TRANSLATE {
            return Ok(judged);
        }
        // An ICMP error about a NAT connection, rewritten here, once (see nat_icmp.rs).
        if judged.1 == nat_icmp::TRANSLATE {
            return nat_icmp::run(ctx, len);
        }
        // One firewall check for every packet the kernel gets after the firewall alone, on
        // what `firewall_then_pass` left in the scratch map: read back (volatile), the values
        // are unknown to the verifier, so the many ways here are verified once (see its doc).
        let s = SUSPECT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
        let flags = unsafe { core::ptr::read_volatile(&(*s).flags) };
        let key = unsafe { core::ptr::read_volatile(&(*s).key) };
        let fw = firewall::state();
        firewall::filter_suspect(fw, &key, flags & 1 != 0, flags & 2 != 0, len)?;
        Ok((xdp_action::XDP_PASS, unsafe {
            core::ptr::read_volatile(&(*s).pass_as)
        }))
    }

    /// [`judge`]'s verdict for a packet [`try_lb`] still runs through the firewall.
    const FIREWALL_THEN_PASS: u32 = u32::MAX;

    /// Hands a packet that goes to the kernel to [`try_lb`]'s firewall check: rules on `key`
    /// (`whole`: its protocol and ports are real; else see `firewall::filter_suspect`), then
    /// the block list if `blocklist`; passed as `pass_as` if they let it through.
    #[inline(always)]
    fn firewall_then_pass(
        fw: firewall::State,
        key: &foobar_lb_common::FlowKey,
        whole: bool,
        blocklist: bool,
        pass_as: u32,
    ) -> Result<(u32, u32), u32> {
        if fw.flags == 0 {
            return Ok((xdp_action::XDP_PASS, pass_as));
        }
        let s = SUSPECT_SCRATCH.get_ptr_mut(0).ok_or(verdict::ABORTED)?;
        unsafe {
            (*s).key = *key;
            (*s).flags = whole as u32 | (blocklist as u32) << 1;
            (*s).pass_as = pass_as;
        }
        Ok((xdp_action::XDP_PASS, FIREWALL_THEN_PASS))
    }

    /// The verdict for a packet, but for the firewall check of those passed to the kernel
    /// after it ([`FIREWALL_THEN_PASS`]).
    #[inline(always)]
    fn judge(ctx: &XdpContext, len: u64) -> Result<(u32, u32), u32> {
        let pass = Ok((xdp_action::XDP_PASS, verdict::PASS));
        let mut slot = core::mem::MaybeUninit::uninit();
        let pkt = Packet::zeroed(&mut slot);
        let balance = match parse(ctx, pkt) {
            Parsed::NotOurs => return pass,
            // Unusable for balancing: dropped if meant for one of our VIPs on this interface;
            // anything else goes to the kernel, which may reassemble or deliver it, so it meets
            // the firewall first (judged on what it shows: see `firewall::filter_suspect`).
            Parsed::Suspect { reason } => {
                let (family, l3_off) = (pkt.key.family, pkt.l3_off);
                // The IP header is at 14, 18 or 22 (up to two VLAN tags).
                let Some((key, whole)) = parse::suspect_view(ctx, family, l3_off as usize & 0x3f)
                else {
                    return pass;
                };
                let vip = is_vip(&key.dst, key.family);
                let ours = receiver(ctx, l3_off);
                if vip && ours.is_ok() {
                    return Err(reason);
                }
                let pass_as = match ours {
                    Err(other) if vip => other,
                    _ => verdict::PASS,
                };
                return firewall_then_pass(firewall::state(), &key, whole, vip, pass_as);
            }
            Parsed::Other => false,
            Parsed::Flow => true,
        };
        let key = &pkt.key;
        let fw = firewall::state();
        // Not for a VIP (one array read proves it): only the firewall rules apply. A NAT
        // backend's reply to a client is such a packet (see nat.rs).
        if !firewall::maybe_vip(&key.dst, key.family) {
            if fw.flags != 0 {
                firewall::filter_rules(fw, key, len)?;
            }
            // ICMP and other protocols: an ICMP error about a NAT connection, from its backend
            // or a router on the backend's path, goes back to the client translated.
            if !balance {
                let icmp = if key.family == FAMILY_V4 {
                    IPPROTO_ICMP
                } else {
                    IPPROTO_ICMPV6
                };
                if fw.flags & FW_HAS_NAT != 0 && key.proto == icmp {
                    return nat_icmp::defer(pkt, 0, verdict::PASS);
                }
                return pass;
            }
            if let Some(v) = nat::reply(ctx, pkt, fw) {
                return v;
            }
            return pass;
        }
        // Past the prefilter, the destination may still be another address sharing a VIP's
        // bit: the exact VIP set is asked only where a VIP-only verdict would follow (a frame
        // for another MAC or VLAN, a failed sanity check, FIN/RST of no flow, a martian
        // source, the VIP policy), so a VIP's established flow pays nothing more. Such an
        // address gets the rules and the block list (README "Firewall"), then the kernel.
        //
        // A VIP packet in a frame for another MAC (broadcast, multicast, a switch flooding
        // another host's frame) or in a VLAN this interface does not balance: never forwarded,
        // but it still meets the firewall, since the kernel may deliver it to this host.
        let iface = match receiver(ctx, pkt.l3_off) {
            Ok(iface) => iface,
            Err(other) => {
                let pass_as = if in_vips(&key.dst, key.family) {
                    other
                } else {
                    verdict::PASS
                };
                return firewall_then_pass(fw, key, true, true, pass_as);
            }
        };
        if let Err(reason) = sanity(ctx, pkt) {
            if in_vips(&key.dst, key.family) {
                return Err(reason);
            }
            return firewall_then_pass(fw, key, true, true, verdict::PASS);
        }
        if !balance {
            // ICMP and other protocols to a VIP: firewall, then the VIP policy.
            if fw.flags != 0 {
                firewall::filter(fw, key, len)?;
            }
            if let Err(reason) = source_ok(key) {
                return vip_drop(key, reason);
            }
            // An ICMP error about a balanced connection (fragmentation needed, packet too big,
            // unreachable) belongs to the backend that sent the packet it quotes: path-MTU
            // discovery of balanced connections depends on it. Other ICMP is the host's.
            let icmp = if key.family == FAMILY_V4 {
                IPPROTO_ICMP
            } else {
                IPPROTO_ICMPV6
            };
            if key.proto == icmp {
                if let Some(flow) = parse::icmp_error_flow(ctx, pkt) {
                    if let Some((id, backend, _)) = select::established(&flow) {
                        return forward(
                            ctx,
                            pkt,
                            iface,
                            owner_service(backend.owner),
                            id,
                            backend,
                            len,
                        );
                    }
                    // A NAT connection's: translated to what its backend sent, or (no NAT
                    // connection) judged as below (nat_icmp.rs).
                    if fw.flags & FW_HAS_NAT != 0 {
                        let fallback = match vip_policy(ctx, fw, key) {
                            Ok(()) => verdict::PASS,
                            Err(reason) => reason,
                        };
                        return nat_icmp::defer(pkt, ICMP_TO_BACKEND, fallback);
                    }
                }
            }
            // Neighbour discovery for a VIP is IPv6's ARP: the host must answer it whatever
            // the VIP policy, or neighbours lose the VIP.
            if key.family == FAMILY_V6 && key.proto == IPPROTO_ICMPV6 && parse::is_nd(ctx, pkt) {
                return pass;
            }
            return vip_policy(ctx, fw, key).and(pass);
        }
        let gen = fw.gen;
        // New TCP connections meet the firewall before any table lookup, so a flood of blocked
        // SYNs costs the least; other packets are checked once per flow and generation.
        let mut checked = false;
        if pkt.syn() && fw.flags != 0 {
            firewall::filter(fw, key, len)?;
            checked = true;
        }
        if let Some((id, backend, flow)) = select::established(key) {
            // A SYN on the 5-tuple of a closed connection opens a new one: it is scheduled
            // anew (its old backend may be draining) and counted as open again.
            let seen = unsafe { (*flow).seen };
            let reopened = pkt.syn() && seen & (FLOW_FIN | FLOW_RST) != 0;
            if !reopened {
                if fw.flags != 0 && !checked && unsafe { (*flow).fw_gen } != gen {
                    firewall::filter(fw, key, len)?;
                    unsafe { (*flow).fw_gen = gen };
                }
                // Last-seen time and FIN/RST, for open-flow counts that age by time. Written
                // only when it changes: about once a second per flow, and at its FIN and RST.
                let next = (seen & !FLOW_TIME_MASK) | pkt.closing_bits() | select::flow_now();
                if next != seen {
                    unsafe { (*flow).seen = next };
                }
                let service_id = owner_service(backend.owner);
                return forward(ctx, pkt, iface, service_id, id, backend, len);
            }
        }
        // A tracked NAT connection (see nat.rs), looked up only after the DSR table missed.
        if fw.flags & FW_HAS_NAT != 0 {
            if let Some((id, backend)) = nat::established(pkt, fw, checked, len)? {
                let service_id = owner_service(backend.owner);
                return forward(ctx, pkt, iface, service_id, id, &backend, len);
            }
        }
        if fw.flags != 0 && !checked {
            firewall::filter(fw, key, len)?;
        }
        // A NAT backend's reply to a client whose address shares a VIP's prefilter bit comes
        // this way (the prefilter could not prove it no VIP); the exact VIP set can.
        if fw.flags & FW_HAS_NAT != 0 && !in_vips(&key.dst, key.family) {
            if let Some(v) = nat::reply(ctx, pkt, fw) {
                return v;
            }
        }
        // A FIN or RST of no known connection (its entry evicted, or never there) must not
        // create a flow, and no backend knows it either.
        if pkt.fin() {
            return vip_drop(key, verdict::DROP_NO_FLOW);
        }
        if let Err(reason) = source_ok(key) {
            return vip_drop(key, reason);
        }
        let service = ServiceKey {
            vip: key.dst,
            port: key.dport,
            proto: key.proto,
            family: key.family,
        };
        let Some(svc) = (unsafe { SERVICES.get(service) }).copied() else {
            return vip_policy(ctx, fw, key).and(pass);
        };
        let (id, backend) = select::new_flow(&svc, key, gen).inspect_err(|&reason| {
            // Never expected: userspace writes backends before the sets naming them.
            if reason == verdict::DROP_BAD_SLOT {
                aya_log_ebpf::error!(
                    ctx,
                    "service {} has a slot naming an inactive backend",
                    svc.id
                );
            }
        })?;
        if svc.flags & SVC_NAT != 0 {
            nat::open(ctx, pkt, svc.id, id, &backend, gen)?;
            // Announced as a DSR flow is (`select.rs`): the controller tells the two apart by
            // the service and reads the pair of entries `open` wrote (SNAT port, state).
            crate::sync::flow_created(key, id, backend.owner);
        }
        forward(ctx, pkt, iface, svc.id, id, &backend, len)
    }

    #[inline(always)]
    fn forward(
        ctx: &XdpContext,
        pkt: &Packet,
        iface: &Iface,
        service_id: u32,
        backend_id: u32,
        backend: &foobar_lb_common::Backend,
        len: u64,
    ) -> Result<(u32, u32), u32> {
        stats::count_forward(service_id, backend_id, len);
        let action = rewrite::forward(ctx, pkt, iface, backend)?;
        Ok((action, verdict::TX))
    }

    /// Checks every packet to a VIP must pass, as a hardened host judges them; only VIP
    /// traffic pays for them.
    #[inline(always)]
    fn sanity(ctx: &XdpContext, pkt: &Packet) -> Result<(), u32> {
        let key = &pkt.key;
        if key.family == FAMILY_V4 {
            parse::ipv4_header_ok(ctx, pkt)?;
        }
        if key.proto == PROTO_TCP && !parse::tcp_flags_valid(pkt.tcp_flags) {
            return Err(verdict::DROP_BAD_TCP_FLAGS);
        }
        Ok(())
    }

    /// A drop only VIP traffic gets (`reason`), for a destination the prefilter let through
    /// and that has met the firewall: passed instead if it is not in the exact VIP set (an
    /// address sharing a VIP's prefilter bit is the host's). Only a drop pays the lookup.
    #[inline(always)]
    fn vip_drop(key: &foobar_lb_common::FlowKey, reason: u32) -> Result<(u32, u32), u32> {
        if in_vips(&key.dst, key.family) {
            Err(reason)
        } else {
            Ok((xdp_action::XDP_PASS, verdict::PASS))
        }
    }

    /// Sources no flow may start from: martians, and any VIP (LAND-style spoofing). Checked
    /// where a flow could start (a flow-table miss) and for other protocols to a VIP; an
    /// established flow passed it when it was created.
    #[inline(always)]
    fn source_ok(key: &foobar_lb_common::FlowKey) -> Result<(), u32> {
        if parse::martian(&key.src, key.family) || is_vip(&key.src, key.family) {
            return Err(verdict::DROP_MARTIAN);
        }
        Ok(())
    }

    /// The receiving interface, if this frame is for it to balance: addressed to its own MAC
    /// (else `Err(PASS_OTHER_HOST)`), and untagged or tagged with a VLAN configured for it
    /// (else `Err(PASS_OTHER_VLAN)`; a double-tagged frame never is). `l3_off` tells tagged
    /// frames apart (14: untagged), so untagged ones pay one compare.
    #[inline(always)]
    pub(crate) fn receiver(ctx: &XdpContext, l3_off: u16) -> Result<&'static Iface, u32> {
        let iface = local_iface(ctx).ok_or(verdict::PASS_OTHER_HOST)?;
        if l3_off != ETH_LEN {
            let vlan = match parse::vlan_id(ctx) {
                Some(vlan) if l3_off == ETH_LEN + 4 => vlan,
                _ => return Err(verdict::PASS_OTHER_VLAN),
            };
            let key = VlanKey {
                ifindex: ctx.ingress_ifindex() as u32,
                vlan,
                _pad: 0,
            };
            if unsafe { IFACE_VLANS.get(key) }.is_none() {
                return Err(verdict::PASS_OTHER_VLAN);
            }
        }
        Ok(iface)
    }

    const ETH_LEN: u16 = 14;

    /// The receiving interface, if the frame is addressed to its own MAC (one array read and
    /// a 6-byte compare, as a 4-byte and a 2-byte word: byte-wise it costs 30 instructions).
    #[inline(always)]
    fn local_iface(ctx: &XdpContext) -> Option<&'static Iface> {
        let iface = IFACES.get(ctx.ingress_ifindex() as u32)?;
        let start = ctx.data();
        if iface.flags & IFACE_ACTIVE == 0 || start + 6 > ctx.data_end() {
            return None;
        }
        // SAFETY: bounds checked above; the map value is 8-byte aligned, and packet loads need
        // no alignment on the architectures XDP runs on (the verifier checks).
        let same = unsafe {
            *(start as *const u32) == *(iface.mac.as_ptr() as *const u32)
                && *((start + 4) as *const u16) == *(iface.mac.as_ptr().add(4) as *const u16)
        };
        same.then_some(iface)
    }

    /// Traffic for a VIP address that matches no service: dropped where the interface's
    /// policy says so. Callers have passed the VIP prefilter already.
    #[inline(always)]
    fn vip_policy(
        ctx: &XdpContext,
        fw: firewall::State,
        key: &foobar_lb_common::FlowKey,
    ) -> Result<(), u32> {
        if firewall::vip_policy_drops(fw, ctx.ingress_ifindex() as u32)
            && in_vips(&key.dst, key.family)
        {
            return Err(verdict::DROP_VIP_POLICY);
        }
        Ok(())
    }

    use nat_icmp::{IPPROTO_ICMP, IPPROTO_ICMPV6};

    #[inline(always)]
    fn is_vip(addr: &foobar_lb_common::Addr, family: u8) -> bool {
        firewall::maybe_vip(addr, family) && in_vips(addr, family)
    }

    /// The exact VIP set (the prefilter can say "maybe").
    #[inline(always)]
    fn in_vips(addr: &foobar_lb_common::Addr, family: u8) -> bool {
        let vip = VipKey {
            addr: *addr,
            family,
            _pad: [0; 3],
        };
        unsafe { VIPS.get(vip) }.is_some()
    }

    /// Passes everything. Test topologies attach it to veth peers: in native mode a veth only
    /// delivers frames sent by XDP_TX when its peer has an XDP program (TESTING-NETNS.md).
    #[xdp]
    pub fn foobar_lb_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Destination MAC of [`foobar_lb_bench_fixed`], set at load time.
    #[no_mangle]
    static BENCH_MAC: [u8; 6] = [0; 6];

    /// The benchmark's ceiling for any XDP DR balancer: every IPv4 frame goes to one fixed MAC,
    /// no parsing beyond the EtherType, no maps.
    #[xdp]
    pub fn foobar_lb_bench_fixed(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + 14 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let eth = start as *mut network_types::eth::EthHdr;
        unsafe {
            if (*eth).ether_type != network_types::eth::EtherType::Ipv4 as u16 {
                return xdp_action::XDP_PASS;
            }
            (*eth).src_addr = (*eth).dst_addr;
            (*eth).dst_addr = core::ptr::read_volatile(&BENCH_MAC);
        }
        xdp_action::XDP_TX
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("foobar-lb-xdp is an eBPF program: build it with `cargo xtask build-ebpf`.");
}
