//! Backend MAC addresses and interface changes from the kernel, over rtnetlink.
//!
//! Users configure backend IPs only. To learn a MAC we make the kernel resolve it (one empty UDP
//! datagram to the discard port, which also refreshes a stale entry) and read the neighbour
//! table: one dump at start-up (and on the daemon's fallback timer), then the kernel's own
//! neighbour and link events (RTNLGRP_NEIGH, RTNLGRP_LINK), read by a [`Watcher`] task that keeps
//! only what concerns configured backends and interfaces and coalesces it for the daemon.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};

use crate::{
    desired::{Mac, OnLink},
    netdev,
};

/// Neighbour-table failures. An underlying error is the `source`, printed once by the caller's
/// `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    #[error(
        "no ARP/NDP answer from {addr} within {waited:?}: is the backend up and on the same L2 \
         segment as {interfaces:?}?"
    )]
    Unresolved {
        addr: IpAddr,
        waited: Duration,
        interfaces: Vec<String>,
    },
    #[error("cannot read the kernel's neighbour table over netlink")]
    Dump(#[source] std::io::Error),
    #[error("cannot subscribe to the kernel's neighbour and link events over netlink")]
    Subscribe(#[source] std::io::Error),
}

/// What a neighbour message says about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub state: Nud,
    /// The link-layer address, present while the entry is usable (REACHABLE, STALE, DELAY,
    /// PROBE, PERMANENT, NOARP).
    pub mac: Option<Mac>,
    /// RTM_DELNEIGH: the entry was removed (garbage-collected or flushed).
    pub removed: bool,
}

/// The neighbour states the daemon tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nud {
    /// The kernel knows the link-layer address.
    Usable,
    /// A request is out (INCOMPLETE).
    Resolving,
    /// No answer to the requests (FAILED).
    Failed,
    Other,
}

/// What a link message says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// Administratively up with a carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// RTM_DELLINK: the device was deleted.
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Neighbour(Neighbour),
    Link(Link),
}

fn neighbour(msg: &NeighbourMessage, removed: bool) -> Option<Neighbour> {
    let mut addr = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some((*a).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => addr = Some((*a).into()),
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice())
                    .ok()
                    .filter(|m| *m != [0; 6]);
            }
            _ => {}
        }
    }
    let state = match msg.header.state {
        NeighbourState::Reachable
        | NeighbourState::Stale
        | NeighbourState::Delay
        | NeighbourState::Probe
        | NeighbourState::Permanent
        | NeighbourState::Noarp => Nud::Usable,
        NeighbourState::Incomplete => Nud::Resolving,
        NeighbourState::Failed => Nud::Failed,
        _ => Nud::Other,
    };
    Some(Neighbour {
        addr: addr?,
        ifindex: msg.header.ifindex,
        state,
        // The kernel sends the address only for usable entries; be strict anyway.
        mac: mac.filter(|_| state == Nud::Usable && !removed),
        removed,
    })
}

fn link(msg: &LinkMessage, removed: bool) -> Option<Link> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let flags = msg.header.flags;
    Some(Link {
        ifindex: msg.header.index,
        name,
        up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
        removed,
    })
}

/// The netlink messages of one datagram (a datagram may hold several; undecodable ones are
/// skipped).
fn messages(mut buf: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            Ok(m) => out.push(m),
            Err(e) => log::debug!("undecodable netlink message skipped: {e}"),
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The neighbour and link events in one datagram read from the subscription.
pub fn events(datagram: &[u8]) -> Vec<Event> {
    messages(datagram)
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                neighbour(&n, false).map(Event::Neighbour)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                neighbour(&n, true).map(Event::Neighbour)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                link(&l, false).map(Event::Link)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                link(&l, true).map(Event::Link)
            }
            _ => None,
        })
        .collect()
}

/// Every neighbour entry of the kernel (one RTM_GETNEIGH dump, IPv4 and IPv6).
pub fn dump() -> Result<Vec<Neighbour>, NeighborError> {
    dump_io().map_err(NeighborError::Dump)
}

fn dump_io() -> std::io::Result<Vec<Neighbour>> {
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Unspec;
    let answers = crate::rtnetlink::request(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP)?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => neighbour(n, false),
            _ => None,
        })
        .collect())
}

/// The usable entries of `entries` on the interfaces numbered `ifindexes`, with the interface
/// each is on.
pub fn usable_on(entries: &[Neighbour], ifindexes: &HashSet<u32>) -> HashMap<IpAddr, OnLink> {
    entries
        .iter()
        .filter(|n| ifindexes.contains(&n.ifindex))
        .filter_map(|n| {
            Some((
                n.addr,
                OnLink {
                    mac: n.mac?,
                    ifindex: n.ifindex,
                },
            ))
        })
        .collect()
}

/// Every usable entry of the neighbour table on `interfaces` (one dump).
pub fn table(interfaces: &[String]) -> Result<HashMap<IpAddr, OnLink>, NeighborError> {
    let ifindexes: HashSet<u32> = interfaces
        .iter()
        .filter_map(|i| netdev::ifindex(i).ok())
        .collect();
    Ok(usable_on(&dump()?, &ifindexes))
}

/// Resolves every address it can on `interfaces` within `timeout` (all in parallel); the ones
/// missing from the result are logged with what to check.
pub fn resolve_all(
    addrs: &[IpAddr],
    interfaces: &[String],
    timeout: Duration,
) -> Result<HashMap<IpAddr, OnLink>, NeighborError> {
    let start = Instant::now();
    let mut found = HashMap::new();
    let mut poked = false;
    loop {
        let known = table(interfaces)?;
        for addr in addrs {
            if let Some(mac) = known.get(addr) {
                found.insert(*addr, *mac);
            }
        }
        if found.len() == addrs.len() {
            return Ok(found);
        }
        if !poked {
            addrs
                .iter()
                .filter(|a| !found.contains_key(a))
                .for_each(|&a| poke(a));
            poked = true;
        }
        if start.elapsed() >= timeout {
            for &addr in addrs.iter().filter(|a| !found.contains_key(a)) {
                log::warn!(
                    "{}",
                    NeighborError::Unresolved {
                        addr,
                        waited: timeout,
                        interfaces: interfaces.to_vec(),
                    }
                );
            }
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the kernel start neighbour resolution for `addr` (its answer arrives as a neighbour
/// event). A routed UDP send rather than an RTM_NEWNEIGH with NTF_USE: the route picks the
/// interface, and it needs no privilege. Errors are irrelevant: the table tells whether it
/// worked.
fn poke(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], SocketAddr::new(addr, 9));
    }
}

/// Starts resolution of addresses not in the table yet.
pub fn poke_all(addrs: &[IpAddr]) {
    addrs.iter().for_each(|&a| poke(a));
}

/// The MAC of `addr` in the neighbour table, if a usable entry exists on one of `interfaces`.
pub fn lookup(addr: IpAddr, interfaces: &[String]) -> Result<Option<OnLink>, NeighborError> {
    Ok(table(interfaces)?.get(&addr).copied())
}

/// What the watcher passes on: neighbour events about these addresses, link events about
/// these interface names.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub addrs: HashSet<IpAddr>,
    pub interfaces: Vec<String>,
}

/// Events kept since the daemon last took them: the latest per address and per interface, so
/// a flood about the same few entries costs the daemon one look each.
#[derive(Debug, Default)]
pub struct Batch {
    pub neighbours: HashMap<IpAddr, Neighbour>,
    pub links: HashMap<String, Link>,
    /// Interfaces deleted since the last take (a deletion followed by a re-creation leaves
    /// only the new device in `links`).
    pub deleted: HashSet<String>,
    /// The kernel dropped events (receive buffer overflow): read the tables again.
    pub resync: bool,
}

impl Batch {
    /// Adds `ev` if `filter` wants it; says whether it did.
    pub fn add(&mut self, ev: Event, filter: &Filter) -> bool {
        match ev {
            Event::Neighbour(n) if filter.addrs.contains(&n.addr) => {
                self.neighbours.insert(n.addr, n);
                true
            }
            Event::Link(l) if filter.interfaces.contains(&l.name) => {
                if l.removed {
                    self.deleted.insert(l.name.clone());
                }
                self.links.insert(l.name.clone(), l);
                true
            }
            _ => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty() && self.links.is_empty() && !self.resync
    }
}

/// Event counts since start (metrics and `stats --json`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Neighbour messages about configured backends.
    pub neighbour: AtomicU64,
    /// Link messages about configured interfaces.
    pub link: AtomicU64,
    /// Messages about other addresses and interfaces, dropped by the watcher.
    pub ignored: AtomicU64,
    /// Receive-buffer overflows answered with a fresh read of the tables.
    pub resyncs: AtomicU64,
}

struct Shared {
    filter: RwLock<Filter>,
    pending: Mutex<Batch>,
    notify: tokio::sync::Notify,
    counts: Counts,
}

/// The subscription to the kernel's neighbour and link events, read on a task of its own.
/// Its memory is bounded: the kernel's socket buffer holds what is not read yet (overflow is
/// reported and turns into a `resync`), and the pending batch holds at most one entry per
/// configured backend address and interface.
pub struct Watcher {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// Legacy group bits of RTNLGRP_LINK (1) and RTNLGRP_NEIGH (3) for the bind address.
const RTMGRP_LINK: u32 = 1;
const RTMGRP_NEIGH: u32 = 1 << 2;
/// Receive buffer asked for; the kernel caps it at net.core.rmem_max.
const RCVBUF: usize = 1 << 20;

impl Watcher {
    /// Subscribes (before any dump is read, so no change falls between the two) and starts
    /// the reading task. Needs a tokio runtime.
    pub fn spawn(filter: Filter) -> Result<Watcher, NeighborError> {
        let mut sock = TokioSocket::new(NETLINK_ROUTE).map_err(NeighborError::Subscribe)?;
        sock.socket_mut()
            .bind(&netlink_sys::SocketAddr::new(0, RTMGRP_LINK | RTMGRP_NEIGH))
            .map_err(NeighborError::Subscribe)?;
        if let Err(e) = sock.socket_ref().set_rx_buf_sz(RCVBUF) {
            log::debug!("netlink receive buffer left at its default: {e}");
        }
        let shared = Arc::new(Shared {
            filter: RwLock::new(filter),
            pending: Mutex::new(Batch::default()),
            notify: tokio::sync::Notify::new(),
            counts: Counts::default(),
        });
        let task = tokio::spawn(read_events(sock, shared.clone()));
        Ok(Watcher { shared, task })
    }

    /// Replaces what is passed on (after a configuration change).
    pub fn set_filter(&self, filter: Filter) {
        *self
            .shared
            .filter
            .write()
            .unwrap_or_else(|e| e.into_inner()) = filter;
    }

    /// Waits until a batch is pending (returns at once if one already is).
    pub fn changed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.notify.notified().await }
    }

    /// Takes what is pending.
    pub fn take(&self) -> Batch {
        std::mem::take(
            &mut *self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_events(sock: TokioSocket, shared: Arc<Shared>) {
    loop {
        let data = match sock.recv_from_full().await {
            Ok((data, _)) => data,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                shared.counts.resyncs.fetch_add(1, Ordering::Relaxed);
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .resync = true;
                shared.notify.notify_one();
                continue;
            }
            Err(e) => {
                log::warn!("reading netlink events failed: {e}; the fallback timer covers");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let evs = events(&data);
        if evs.is_empty() {
            continue;
        }
        let filter = shared.filter.read().unwrap_or_else(|e| e.into_inner());
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = false;
        for ev in evs {
            let counter = match &ev {
                Event::Neighbour(_) => &shared.counts.neighbour,
                Event::Link(_) => &shared.counts.link,
            };
            if pending.add(ev, &filter) {
                counter.fetch_add(1, Ordering::Relaxed);
                kept = true;
            } else {
                shared.counts.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(pending);
        drop(filter);
        if kept {
            shared.notify.notify_one();
        }
    }
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac != [0; 6]).then_some(mac)
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let mac = parse_mac("02:00:0a:00:00:0b").unwrap();
        assert_eq!(mac, [2, 0, 10, 0, 0, 11]);
        assert_eq!(format_mac(&mac), "02:00:0a:00:00:0b");
        assert_eq!(parse_mac("02:00:0a:00:00"), None);
        assert_eq!(parse_mac("02:00:0a:00:00:0b:0c"), None);
        assert_eq!(parse_mac("zz:00:0a:00:00:0b"), None);
        assert_eq!(parse_mac("00:00:00:00:00:00"), None);
    }

    fn neigh_msg(
        addr: IpAddr,
        ifindex: u32,
        state: NeighbourState,
        mac: Option<Mac>,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.ifindex = ifindex;
        m.header.state = state;
        m.attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        if let Some(mac) = mac {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        m
    }

    fn link_msg(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    /// The kernel's framing: messages back to back, each padded to 4 bytes.
    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for inner in msgs {
            let mut m = NetlinkMessage::new(
                netlink_packet_core::NetlinkHeader::default(),
                NetlinkPayload::InnerMessage(inner),
            );
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            out.extend_from_slice(&buf);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11));
    const B: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x11));
    const MAC: Mac = [2, 0, 0, 0, 0, 0x11];

    #[test]
    fn neighbour_and_link_messages_are_read() {
        let buf = datagram(vec![
            RouteNetlinkMessage::NewNeighbour(neigh_msg(
                A,
                3,
                NeighbourState::Reachable,
                Some(MAC),
            )),
            RouteNetlinkMessage::NewNeighbour(neigh_msg(B, 3, NeighbourState::Incomplete, None)),
            RouteNetlinkMessage::NewNeighbour(neigh_msg(A, 3, NeighbourState::Failed, None)),
            RouteNetlinkMessage::DelNeighbour(neigh_msg(B, 3, NeighbourState::Stale, Some(MAC))),
            RouteNetlinkMessage::NewLink(link_msg(3, "eth0", LinkFlags::Up | LinkFlags::LowerUp)),
            RouteNetlinkMessage::NewLink(link_msg(3, "eth0", LinkFlags::Up)),
            RouteNetlinkMessage::DelLink(link_msg(3, "eth0", LinkFlags::empty())),
        ]);
        let n = |addr, state, mac, removed| {
            Event::Neighbour(Neighbour {
                addr,
                ifindex: 3,
                state,
                mac,
                removed,
            })
        };
        let l = |up, removed| {
            Event::Link(Link {
                ifindex: 3,
                name: "eth0".into(),
                up,
                removed,
            })
        };
        assert_eq!(
            events(&buf),
            vec![
                n(A, Nud::Usable, Some(MAC), false),
                n(B, Nud::Resolving, None, false),
                n(A, Nud::Failed, None, false),
                // A removed entry's address is no MAC to use.
                n(B, Nud::Usable, None, true),
                l(true, false),
                l(false, false),
                l(false, true),
            ]
        );
    }

    #[test]
    fn truncated_and_foreign_messages_are_skipped() {
        let mut buf = datagram(vec![RouteNetlinkMessage::NewNeighbour(neigh_msg(
            A,
            3,
            NeighbourState::Reachable,
            Some(MAC),
        ))]);
        // An entry without a destination, and a route message: neither is for us.
        buf.extend(datagram(vec![RouteNetlinkMessage::NewNeighbour(
            NeighbourMessage::default(),
        )]));
        let whole = buf.len();
        assert_eq!(events(&buf).len(), 1);
        // A datagram cut inside its second message still yields the first.
        let first = events(&buf[..whole - 2]);
        assert_eq!(first.len(), 1);
        assert!(events(&buf[..10]).is_empty());
        // An all-zero address is no MAC.
        let zero = datagram(vec![RouteNetlinkMessage::NewNeighbour(neigh_msg(
            A,
            3,
            NeighbourState::Reachable,
            Some([0; 6]),
        ))]);
        assert!(matches!(
            &events(&zero)[..],
            [Event::Neighbour(Neighbour { mac: None, .. })]
        ));
    }

    #[test]
    fn batch_keeps_configured_entries_latest_first() {
        let filter = Filter {
            addrs: [A].into(),
            interfaces: vec!["eth0".into()],
        };
        let mut batch = Batch::default();
        assert!(batch.is_empty());
        let ev = |addr, mac: Option<Mac>| {
            Event::Neighbour(Neighbour {
                addr,
                ifindex: 3,
                state: if mac.is_some() {
                    Nud::Usable
                } else {
                    Nud::Failed
                },
                mac,
                removed: false,
            })
        };
        // A flood about other addresses and interfaces leaves the batch empty.
        for i in 0..10_000u32 {
            let other = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i));
            assert!(!batch.add(ev(other, Some(MAC)), &filter));
        }
        assert!(!batch.add(
            Event::Link(Link {
                ifindex: 9,
                name: "eth9".into(),
                up: true,
                removed: false
            }),
            &filter
        ));
        assert!(batch.is_empty());
        // Many events about one backend coalesce into its latest.
        for i in 0..100u8 {
            assert!(batch.add(ev(A, Some([2, 0, 0, 0, 0, i])), &filter));
        }
        assert!(batch.add(
            Event::Link(Link {
                ifindex: 4,
                name: "eth0".into(),
                up: true,
                removed: false
            }),
            &filter
        ));
        // A deletion stays known after the device's re-creation in the same batch.
        assert!(batch.add(
            Event::Link(Link {
                ifindex: 4,
                name: "eth0".into(),
                up: false,
                removed: true
            }),
            &filter
        ));
        assert!(batch.add(
            Event::Link(Link {
                ifindex: 5,
                name: "eth0".into(),
                up: true,
                removed: false
            }),
            &filter
        ));
        assert_eq!(batch.neighbours.len(), 1);
        assert!(batch.deleted.contains("eth0"));
        assert_eq!(batch.neighbours[&A].mac, Some([2, 0, 0, 0, 0, 99]));
        assert_eq!(batch.links["eth0"].ifindex, 5);
    }

    #[test]
    fn usable_on_keeps_configured_interfaces_only() {
        let entries = [
            Neighbour {
                addr: A,
                ifindex: 3,
                state: Nud::Usable,
                mac: Some(MAC),
                removed: false,
            },
            Neighbour {
                addr: B,
                ifindex: 4,
                state: Nud::Usable,
                mac: Some(MAC),
                removed: false,
            },
            Neighbour {
                addr: B,
                ifindex: 3,
                state: Nud::Failed,
                mac: None,
                removed: false,
            },
        ];
        let table = usable_on(&entries, &[3].into());
        assert_eq!(
            table,
            HashMap::from([(
                A,
                OnLink {
                    mac: MAC,
                    ifindex: 3
                }
            )])
        );
    }
}
