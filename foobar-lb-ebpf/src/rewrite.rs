//! Packet rewrites, one function per forwarding mode, picked by the backend's `fwd_mode` on
//! every forwarded packet (new and established flows alike). Checksum arithmetic for modes that
//! change L3/L4 fields lives in `foobar_lb_common::csum` (host-tested).

use aya_ebpf::programs::XdpContext;
use foobar_lb_common::{verdict, Backend, Iface, FWD_DSR};
use network_types::eth::EthHdr;

use crate::parse::Packet;

/// Rewrites the frame for `backend`. A mode this program does not know is never guessed at:
/// the packet is aborted (counted) rather than sent somewhere wrong.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    _pkt: &Packet,
    iface: &Iface,
    backend: &Backend,
) -> Result<(), u32> {
    match backend.fwd_mode {
        FWD_DSR => direct_server_return(ctx, &iface.mac, &backend.mac),
        _ => Err(verdict::ABORTED),
    }
}

/// Direct server return (LVS "DR"): the backend holds the VIP on loopback and answers the client
/// itself, so only the Ethernet header changes and no checksum needs touching.
///
/// The frame leaves (XDP_TX: out of the interface it came in on) with that interface's MAC as
/// its source, so switches learn the load balancer's port for it.
#[inline(always)]
fn direct_server_return(
    ctx: &XdpContext,
    own_mac: &[u8; 6],
    backend_mac: &[u8; 6],
) -> Result<(), u32> {
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
        let (own, to) = (own_mac.as_ptr(), backend_mac.as_ptr());
        *(p as *mut u32) = *(to as *const u32);
        *(p.add(4) as *mut u16) = *(to.add(4) as *const u16);
        *(p.add(6) as *mut u32) = *(own as *const u32);
        *(p.add(10) as *mut u16) = *(own.add(4) as *const u16);
    }
    Ok(())
}
