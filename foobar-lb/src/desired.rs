//! The desired state: what the operator's configuration and the health checks want the data
//! plane to hold. `pool` decides each backend's [`BackendState`], `daemon` builds the
//! [`ServiceSpec`]s, and `reconcile` turns them into map writes. Types only, so each of those
//! modules depends on this one and not on each other.

use std::net::IpAddr;

use foobar_lb_common::{ServiceKey, FWD_DSR, FWD_FULLNAT, FWD_NAT};

use crate::schedule::Scheduler;

/// A MAC address on the load balancer's segment.
pub type Mac = [u8; 6];

/// A backend on one of the balancer's segments, as its neighbour entry says: its MAC and the
/// interface the entry is on (a NAT backend's packets leave by that one: with clients on
/// another interface, the balancer is two-armed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnLink {
    pub mac: Mac,
    pub ifindex: u32,
}

/// The `mac` of a backend whose next hop the data plane finds itself (full NAT: the kernel's
/// FIB lookup at each new connection), so it needs no neighbour entry of its own: it may sit
/// behind a router.
pub const NEXT_HOP_BY_FIB: Mac = [0; 6];

/// What the operator and the health checks want for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new flows.
    Active,
    /// Keeps its flows, takes no new ones.
    Draining,
    /// Unreachable: its flows move elsewhere.
    Down,
}

/// How packets reach a backend. Each mode has its rewrite in `foobar-lb-ebpf/src/rewrite.rs`,
/// chosen per packet by the backend entry. Every field here is part of the entry: a change
/// gives the backend a new id (`reconcile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// Only the destination MAC changes; the backend holds the VIP and answers the client.
    #[default]
    Dsr,
    /// Destination NAT to the backend's address and `port`; replies come back through the
    /// balancer, which tracks the connection.
    Nat { port: u16 },
    /// Full NAT: as `Nat`, and the source becomes a SNAT address and port of the service's
    /// pool ([`Snat`]); replies come back to the balancer by the backend's own routes.
    FullNat { port: u16 },
}

impl Forwarding {
    /// Whether the data plane sends to the backend's own MAC (the backend is on the
    /// balancer's L2 segment and the controller must resolve it). Full NAT does not: the
    /// program asks the kernel's FIB for the next hop, so the backend may be anywhere routable.
    pub fn needs_mac(self) -> bool {
        !matches!(self, Forwarding::FullNat { .. })
    }

    /// The `FWD_*` value the data plane reads from `Backend::fwd_mode`.
    pub fn wire(self) -> u8 {
        match self {
            Forwarding::Dsr => FWD_DSR,
            Forwarding::Nat { .. } => FWD_NAT,
            Forwarding::FullNat { .. } => FWD_FULLNAT,
        }
    }

    /// `Backend::port` (network order): the translated port, 0 without NAT.
    pub fn wire_port(self) -> u16 {
        match self {
            Forwarding::Dsr => 0,
            Forwarding::Nat { port } | Forwarding::FullNat { port } => port.to_be(),
        }
    }

    /// The mode a pinned backend entry was written with (`port` as stored, network order), if
    /// this build knows it.
    pub fn from_wire(mode: u8, port: u16) -> Option<Forwarding> {
        match mode {
            FWD_DSR => Some(Forwarding::Dsr),
            FWD_NAT => Some(Forwarding::Nat {
                port: u16::from_be(port),
            }),
            FWD_FULLNAT => Some(Forwarding::FullNat {
                port: u16::from_be(port),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// `None` while the MAC is unknown: such a backend cannot be sent anything.
    /// [`NEXT_HOP_BY_FIB`] where the forwarding needs none ([`Forwarding::needs_mac`]).
    pub mac: Option<Mac>,
    /// NAT: the interface the backend's neighbour entry is on (`Backend::ifindex`); 0 (the
    /// interface the client's packet came in on) in other modes and where unknown.
    pub ifindex: u32,
    pub state: BackendState,
    pub weight: u32,
    pub forwarding: Forwarding,
    /// `ADMIN_*` bits (operator drain, health down): remembered in the pinned data plane so a
    /// restarted daemon starts from them.
    pub admin: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub key: ServiceKey,
    /// New flows per second per source, burst, and the IPv6 prefix length sources are grouped
    /// by; (0, 0, _) = unlimited.
    pub rate_limit: (u32, u32, u8),
    /// How new flows are spread over the active backends.
    pub scheduler: Scheduler,
    /// The service forwards by NAT or full NAT (`SVC_NAT`): its flows are tracked in the NAT
    /// tables.
    pub nat: bool,
    /// Full NAT: the source addresses (of the VIP's family) and ports of its connections.
    pub snat: Option<Snat>,
    pub backends: Vec<BackendSpec>,
}

/// A full-NAT service's source addresses (the backends' family only) and port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    pub addrs: Vec<IpAddr>,
    /// Inclusive, host order.
    pub ports: (u16, u16),
}
