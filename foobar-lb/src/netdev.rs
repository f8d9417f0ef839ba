//! Network interface facts from the kernel: index, MAC address, XDP attach mode.

use std::ffi::CString;

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error("unknown interface {0:?}: check the name with `ip link`")]
    Unknown(String),
    #[error("invalid interface name {0:?}")]
    BadName(String),
    #[error("cannot read the MAC address of {name}")]
    Mac {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn ifindex(name: &str) -> Result<u32, NetdevError> {
    let c = CString::new(name).map_err(|_| NetdevError::BadName(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NetdevError::Unknown(name.to_owned()));
    }
    Ok(idx)
}

/// The interface's hardware address (SIOCGIFHWADDR on a socket of the current network
/// namespace; /sys/class/net may show another namespace's interfaces).
pub fn mac(name: &str) -> Result<[u8; 6], NetdevError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(NetdevError::BadName(name.to_owned()));
    }
    let err = |source| NetdevError::Mac {
        name: name.to_owned(),
        source,
    };
    // SAFETY: plain socket(2); the fd is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes the ifreq we own.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let io = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err(io));
    }
    // SAFETY: the kernel filled the hwaddr member for SIOCGIFHWADDR.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// How an XDP program is attached to interface `ifindex`, as the kernel reports it
/// (`IFLA_XDP_ATTACHED`): `Some(true)` generic (skb) mode, `Some(false)` native (driver),
/// `None` neither or several. For an attachment a restarted daemon adopted, whose mode an
/// earlier daemon (maybe of an older version) chose.
pub fn xdp_generic(ifindex: u32) -> std::io::Result<Option<bool>> {
    use netlink_packet_core::NLM_F_ACK;
    use netlink_packet_route::{
        link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
        RouteNetlinkMessage,
    };

    let mut req = LinkMessage::default();
    req.header.index = ifindex;
    for m in crate::rtnetlink::request(RouteNetlinkMessage::GetLink(req), NLM_F_ACK)? {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        for a in &l.attributes {
            let LinkAttribute::Xdp(xdp) = a else { continue };
            for x in xdp {
                match x {
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => return Ok(Some(true)),
                    LinkXdp::Attached(XdpAttached::Driver) => return Ok(Some(false)),
                    _ => {}
                }
            }
        }
    }
    Ok(None)
}
