//! One rtnetlink request and its answers, for what the daemon asks or tells the kernel
//! outside its event stream: a link's XDP mode (`netdev`), a route (`sync::local`), the
//! neighbour table (`neighbor`), the announced addresses (`daemon::announce`).

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

/// One rtnetlink request (`flags` besides REQUEST): the messages answered, until the dump's
/// end or the acknowledgement; a kernel error is returned as the OS error it carries.
pub fn request(
    payload: RouteNetlinkMessage,
    flags: u16,
) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    // Bounded: a dump of one interface's addresses ends in a few datagrams.
    for _ in 0..1024 {
        let (data, _) = sock.recv_from_full()?;
        let mut rest = &data[..];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < 16 || len > rest.len() {
                break;
            }
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                // An ACK is an error message with no code.
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                        None => Ok(out),
                    }
                }
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
    Err(std::io::Error::other("rtnetlink answer did not end"))
}
