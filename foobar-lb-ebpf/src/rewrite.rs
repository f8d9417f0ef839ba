//! Packet rewrites, one function per forwarding mode. Only direct server return exists today;
//! NAT or encapsulation would sit beside it and be picked by the service's flags.

use aya_ebpf::programs::XdpContext;
use foobar_lb_common::verdict;
use network_types::eth::EthHdr;

/// Direct server return (LVS "DR"): the backend holds the VIP on loopback and answers the client
/// itself, so only the Ethernet header changes and no checksum needs touching.
///
/// The new source MAC is the frame's old destination: a frame that reached this interface for a
/// VIP it owns was addressed to the interface's own MAC. That keeps the bridge learning the load
/// balancer's port for it, and costs no map lookup.
#[inline(always)]
pub fn direct_server_return(ctx: &XdpContext, backend_mac: &[u8; 6]) -> Result<(), u32> {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return Err(verdict::ABORTED);
    }
    let eth = start as *mut EthHdr;
    unsafe {
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = *backend_mac;
    }
    Ok(())
}
