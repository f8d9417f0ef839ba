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
    let eth = start as *mut EthHdr;
    unsafe {
        (*eth).src_addr = *own_mac;
        (*eth).dst_addr = *backend_mac;
    }
    Ok(())
}
