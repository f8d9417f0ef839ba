//! The desired state: what the operator's configuration and the health checks want the data
//! plane to hold. `pool` decides each backend's [`BackendState`], `daemon` builds the
//! [`ServiceSpec`]s, and `reconcile` turns them into map writes. Types only, so each of those
//! modules depends on this one and not on each other.

use std::net::IpAddr;

use foobar_lb_common::{ServiceKey, FWD_DSR};

use crate::schedule::Scheduler;

/// A MAC address on the load balancer's segment.
pub type Mac = [u8; 6];

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

/// How packets reach a backend. Direct server return is the only mode so far; each mode has
/// its rewrite in `foobar-lb-ebpf/src/rewrite.rs`, chosen per packet by the backend entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// Only the destination MAC changes; the backend holds the VIP and answers the client.
    #[default]
    Dsr,
}

impl Forwarding {
    /// The `FWD_*` value the data plane reads from `Backend::fwd_mode`.
    pub fn wire(self) -> u8 {
        match self {
            Forwarding::Dsr => FWD_DSR,
        }
    }

    /// The mode a pinned backend entry was written with, if this build knows it.
    pub fn from_wire(mode: u8) -> Option<Forwarding> {
        (mode == FWD_DSR).then_some(Forwarding::Dsr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// `None` while the MAC is unknown: such a backend cannot be sent anything.
    pub mac: Option<Mac>,
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
    pub backends: Vec<BackendSpec>,
}
