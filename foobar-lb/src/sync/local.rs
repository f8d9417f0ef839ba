//! What only the receiving node can know about a peer's NAT connection: the interface its
//! replies leave by (the route to the client here) and, for full NAT, the backend's next hop
//! (the route from the SNAT address to the backend here, and that hop's MAC in this node's
//! neighbour table). The sender's values are its own view (its ifindexes, the MAC its FIB
//! chose) and are never sent. Answers are cached for the life of the translation table
//! (`TABLE_MAX_AGE`), so a bulk sync costs one lookup per client and per backend.

use std::{collections::HashMap, io, net::IpAddr};

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};

use crate::{desired::Mac, neighbor};

/// A route's answer: the interface and the next hop's address (a gateway, or the destination
/// itself when it is on the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    pub via: IpAddr,
}

/// The kernel's route to `dst` (from `src`, as the translated packets will be sent), asked
/// with RTM_GETROUTE as `ip route get` does.
pub fn route(dst: IpAddr, src: Option<IpAddr>) -> io::Result<Hop> {
    let mut req = RouteMessage::default();
    let bits = |a: IpAddr| if a.is_ipv4() { 32 } else { 128 };
    req.header.address_family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    req.header.destination_prefix_length = bits(dst);
    req.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    if let Some(src) = src {
        req.header.source_prefix_length = bits(src);
        req.attributes
            .push(RouteAttribute::Source(RouteAddress::from(src)));
    }
    for m in crate::rtnetlink::request(RouteNetlinkMessage::GetRoute(req), NLM_F_ACK)? {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let mut hop = Hop {
            ifindex: 0,
            via: dst,
        };
        for a in r.attributes {
            match a {
                RouteAttribute::Oif(i) => hop.ifindex = i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop.via = g.into(),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => hop.via = g.into(),
                _ => {}
            }
        }
        if hop.ifindex != 0 {
            return Ok(hop);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no route to {dst}"),
    ))
}

/// Cached routes and neighbour entries of this node (see the module's doc).
#[derive(Default)]
pub struct Local {
    routes: HashMap<(IpAddr, Option<IpAddr>), Option<Hop>>,
    /// (address, ifindex) -> MAC, from one dump; `None`: not dumped yet.
    neighbours: Option<HashMap<(IpAddr, u32), Mac>>,
    /// When a lookup last missed: the table is dumped again after [`REDUMP_AFTER`] (the miss
    /// started a resolution), not only with the next `clear`.
    missed: Option<std::time::Instant>,
}

/// See [`Local::missed`].
const REDUMP_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

impl Local {
    /// Forgets every answer (the routes or neighbours may have changed).
    pub fn clear(&mut self) {
        *self = Local::default();
    }

    /// The route to `dst` from `src`, cached (failures too, until the next `clear`). The
    /// kernel refuses an IPv4 lookup from an address that is not local (a SNAT address the
    /// other node holds until the takeover): then the route to `dst` from any address, which
    /// differs only under source-based policy routing.
    pub fn route(&mut self, dst: IpAddr, src: Option<IpAddr>) -> Option<Hop> {
        *self.routes.entry((dst, src)).or_insert_with(|| {
            route(dst, src)
                .or_else(|e| {
                    if src.is_some() {
                        route(dst, None)
                    } else {
                        Err(e)
                    }
                })
                .inspect_err(|e| log::debug!("sync: no route to {dst}: {e}"))
                .ok()
        })
    }

    /// The MAC of `hop` in this node's neighbour table. A miss starts resolution (the next
    /// table's lookup may find it) and is `None` now.
    pub fn mac(&mut self, hop: Hop) -> Option<Mac> {
        if self.missed.is_some_and(|t| t.elapsed() >= REDUMP_AFTER) {
            self.neighbours = None;
            self.missed = None;
        }
        let table = self.neighbours.get_or_insert_with(|| {
            neighbor::dump()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|n| Some(((n.addr, n.ifindex), n.mac?)))
                .collect()
        });
        let mac = table.get(&(hop.via, hop.ifindex)).copied();
        if mac.is_none() && self.missed.is_none() {
            neighbor::poke_all(&[hop.via]);
            self.missed = Some(std::time::Instant::now());
        }
        mac
    }
}
