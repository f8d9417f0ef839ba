//! A reference model of the data plane in plain Rust: given the provisioned state (services,
//! backends and their states, firewall rules, block list, VIP policy, the interface's MAC and
//! VLANs) and a frame, the XDP action, the one verdict counter that must move, and for
//! forwarded frames the set of backend MACs the frame may go to (every other byte but the
//! source MAC, which becomes the interface's, unchanged).
//!
//! It states README's policy ("Packet handling", "Firewall", "Counters"), mirroring the
//! program's parser where the README leaves a choice to it. Where the program is known to
//! differ from that policy, [`known_bugs`] says how, so a comparison can tell a known program
//! bug from a new disagreement.

pub mod checks;
pub mod decode;
pub mod firewall;
pub mod flows;
pub mod known_bugs;
pub mod verdict;

use std::{cell::RefCell, net::IpAddr};

use foobar_lb::{
    config::Config,
    desired::BackendState,
    desired::ServiceSpec,
    schedule::{Member, Scheduler},
};

use crate::packet::Mac;
pub use decode::FlowKey;
pub use firewall::Firewall;
pub use known_bugs::Quirks;
pub use verdict::{Action, Effect, Expected};

#[derive(Debug, Clone)]
pub struct Backend {
    pub addr: IpAddr,
    /// `None`: not written to the data plane (MAC unknown), never chosen.
    pub mac: Option<Mac>,
    pub state: BackendState,
    /// Its weight (Maglev tables depend on it).
    pub weight: u32,
    /// Removed from the configuration (kept here so indexes stay put).
    pub removed: bool,
    /// Bumped when the backend is removed: a flow given to an earlier incarnation does not
    /// follow it back when it is added again (the data plane gives it a new id), it is
    /// scheduled anew.
    pub incarnation: u32,
}

impl Backend {
    /// Takes new flows.
    pub fn active(&self) -> bool {
        !self.removed && self.state == BackendState::Active
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scheduler: Scheduler,
    pub backends: Vec<Backend>,
    /// The Maglev table of the active backends it was built for (see [`Service::maglev`]).
    pub maglev: MaglevCache,
}

/// A Maglev table as backend indexes, and the (index, address, weight) of the members it was
/// built from: rebuilt when they change.
#[derive(Clone, Default)]
pub struct MaglevCache(RefCell<Option<(Vec<MaglevMember>, Vec<usize>)>>);

/// (backend index, address, weight).
type MaglevMember = (usize, IpAddr, u32);

impl std::fmt::Debug for MaglevCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaglevCache")
    }
}

impl Service {
    /// MACs a new flow with key `k` may be given: the active backends' (round robin: the
    /// shared cursor decides, which the model leaves to the program), or exactly the one its
    /// hash picks from the Maglev table (`slot = flow_hash % table size`).
    pub fn new_flow_macs(&self, k: &FlowKey) -> Vec<Mac> {
        if let Scheduler::Maglev { .. } = self.scheduler {
            return self
                .maglev(k)
                .and_then(|b| self.backends[b].mac)
                .into_iter()
                .collect();
        }
        self.backends
            .iter()
            .filter(|b| b.active())
            .filter_map(|b| b.mac)
            .collect()
    }

    /// For a Maglev service: the backend (index) the table built by the controller's own
    /// scheduler from the active backends gives `k`.
    pub fn maglev(&self, k: &FlowKey) -> Option<usize> {
        let members: Vec<MaglevMember> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.active() && b.mac.is_some())
            .map(|(i, b)| (i, b.addr, b.weight))
            .collect();
        let mut cache = self.maglev.0.borrow_mut();
        if cache.as_ref().is_none_or(|(m, _)| *m != members) {
            // Ids are labels in the table: index + 1 names backend `index`.
            let ms: Vec<Member> = members
                .iter()
                .map(|&(i, addr, weight)| Member {
                    id: i as u32 + 1,
                    weight: weight.max(1),
                    addr,
                })
                .collect();
            let set = self.scheduler.slots(&ms);
            let table = set.slots[..set.len as usize]
                .iter()
                .map(|&id| id as usize - 1)
                .collect();
            *cache = Some((members, table));
        }
        let (_, table) = cache.as_ref().expect("built above");
        if table.is_empty() {
            return None;
        }
        let slot = foobar_lb_common::flow_hash(&k.wire()) as usize % table.len();
        Some(table[slot])
    }
}

/// What the program was provisioned with.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The receiving interface's MAC.
    pub iface_mac: Mac,
    /// VLANs whose tagged frames the interface balances (untagged ones always are).
    pub vlans: Vec<u16>,
    pub services: Vec<Service>,
    pub firewall: Firewall,
}

impl Provisioned {
    /// Services and backend states as the harness applied them: `config` names the services
    /// and the VLANs of "lo" (the harness's interface), `specs` (the desired state written to
    /// the maps) the backends' states, weights and MACs, and the schedulers.
    pub fn new(iface_mac: Mac, config: &Config, specs: &[ServiceSpec]) -> Provisioned {
        let services = config
            .services
            .iter()
            .map(|s| {
                assert!(
                    s.rate_limit.is_none(),
                    "service {}: the model has no token bucket; provision no rate limit",
                    s.name
                );
                let spec = specs.iter().find(|p| p.name == s.name).expect("spec");
                Service {
                    name: s.name.clone(),
                    vip: s.vip,
                    port: s.port,
                    proto: s.protocol.number(),
                    scheduler: spec.scheduler,
                    backends: spec
                        .backends
                        .iter()
                        .map(|b| Backend {
                            addr: b.addr,
                            mac: b.mac,
                            state: b.state,
                            weight: b.weight,
                            removed: false,
                            incarnation: 0,
                        })
                        .collect(),
                    maglev: MaglevCache::default(),
                }
            })
            .collect();
        Provisioned {
            iface_mac,
            vlans: config.vlans.get("lo").cloned().unwrap_or_default(),
            services,
            firewall: Firewall::default(),
        }
    }

    /// Whether `a` is a VIP (of any service, with or without backends).
    pub fn is_vip(&self, a: IpAddr) -> bool {
        self.services.iter().any(|s| s.vip == a)
    }

    /// Whether the VIP prefilter lets `a` through (every VIP does; a few other addresses too).
    pub fn prefilter(&self, a: IpAddr) -> bool {
        let bit = firewall::filter_bit(a);
        self.services
            .iter()
            .any(|s| firewall::filter_bit(s.vip) == bit)
    }

    pub fn service(&self, k: &FlowKey) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.vip == k.dst && s.port == k.dport && s.proto == k.proto)
    }
}

/// The model: provisioned state plus the flow table it has learned.
#[derive(Debug, Clone)]
pub struct Model {
    pub state: Provisioned,
    pub flows: flows::Flows,
    /// Bumped by every firewall change, like the program's generation word.
    pub fw_gen: u32,
}

impl Model {
    pub fn new(state: Provisioned) -> Model {
        Model {
            state,
            flows: flows::Flows::default(),
            fw_gen: 0,
        }
    }

    /// The flow `k` in the table, if its backend still serves it (active or draining, and the
    /// one it was given: not removed since), with that backend.
    pub fn serving(&self, k: &FlowKey) -> Option<(&flows::Flow, &Backend)> {
        let flow = self.flows.get(k)?;
        let b = &self.state.services[flow.service].backends[flow.backend];
        let serves = !b.removed
            && b.incarnation == flow.incarnation
            && matches!(b.state, BackendState::Active | BackendState::Draining);
        serves.then_some((flow, b))
    }

    /// Replaces the firewall (rules, block list, VIP policy): established flows are checked
    /// again on their next packet.
    pub fn set_firewall(&mut self, fw: Firewall) {
        self.state.firewall = fw;
        self.fw_gen = self.fw_gen.wrapping_add(1);
    }

    /// The expected outcome of `frame` under README's policy.
    pub fn expect(&self, frame: &[u8]) -> Expected {
        verdict::judge(self, frame, Quirks::NONE)
    }

    /// The outcome the program would have with the given known bugs.
    pub fn expect_with(&self, frame: &[u8], quirks: Quirks) -> Expected {
        verdict::judge(self, frame, quirks)
    }

    /// Takes in what the program did with a frame: a forwarded new flow's backend (read from
    /// the output's destination MAC), a forwarded FIN or RST marked in its flow, a firewall
    /// check recorded. Follows the program's actual action, so the model's flow table stays
    /// the program's even after a disagreement.
    pub fn observe(&mut self, e: &Expected, action: u32, out: &[u8]) {
        if action != crate::harness::XDP_TX {
            return;
        }
        match e.effect {
            Effect::None | Effect::IcmpError { .. } => {}
            Effect::NewFlow { key, service } => {
                let mac: Mac = out[0..6].try_into().unwrap();
                let svc = &self.state.services[service];
                if let Some(backend) = svc
                    .backends
                    .iter()
                    .position(|b| b.mac == Some(mac) && b.active())
                {
                    self.flows.insert(
                        key,
                        flows::Flow {
                            service,
                            backend,
                            incarnation: svc.backends[backend].incarnation,
                            fin: false,
                            rst: false,
                            fw_gen: self.fw_gen,
                        },
                    );
                }
            }
            Effect::Known {
                key,
                fin,
                rst,
                rechecked,
            } => {
                let gen = self.fw_gen;
                if let Some(f) = self.flows.get_mut(&key) {
                    f.fin |= fin;
                    f.rst |= rst;
                    if rechecked {
                        f.fw_gen = gen;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
