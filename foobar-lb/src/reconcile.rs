//! Desired state -> map operations.
//!
//! The reconciler remembers what it wrote (ids per service and backend) and, for a new desired
//! state, plans the writes in an order that keeps every intermediate state valid for a packet:
//! backends before the sets naming them, sets before the services using them, removals in the
//! reverse order. A set itself is replaced by one map update (see `BackendSet`).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use foobar_lb_common::{
    decode_addr, encode_addr, owner, owner_generation, owner_service, snat_range, Backend,
    BackendSet, ServiceInfo, ServiceKey, SnatPool, VipKey, ADMIN_RETIRED_SHIFT, BACKEND_ACTIVE,
    BACKEND_DOWN, BACKEND_DRAINING, MAX_BACKENDS, MAX_SERVICES, MAX_SLOTS, MAX_SNAT_ADDRS,
};

use crate::{
    desired::{BackendState, Forwarding, Mac, ServiceSpec, Snat},
    schedule::Member,
};

/// What a pinned data plane holds, read back to adopt it.
#[derive(Debug, Clone, Default)]
pub struct PinnedState {
    pub services: Vec<(ServiceKey, ServiceInfo)>,
    /// Backend entries in use (not unused), by id.
    pub backends: Vec<(u32, Backend)>,
    /// The used slots of each backend set, by service id (a whole set is 256 KiB).
    pub sets: Vec<(u32, Vec<u32>)>,
    /// Non-zero `ADMIN_*` bits by backend id.
    pub admin: Vec<(u32, u32)>,
    /// The SNAT address set (address, `snat_range`).
    pub snat_addrs: Vec<(IpAddr, u32)>,
}

/// One map write. The data plane executes them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    SetBackend {
        id: u32,
        backend: Backend,
    },
    /// The operator's intent for a backend id (`ADMIN_*` bits); the program never reads it.
    SetBackendAdmin {
        id: u32,
        flags: u32,
    },
    ResetBackendStats {
        id: u32,
    },
    SetBackendSet {
        service_id: u32,
        set: Box<BackendSet>,
    },
    SetService {
        key: ServiceKey,
        info: ServiceInfo,
    },
    ResetServiceStats {
        id: u32,
    },
    SetVip {
        key: VipKey,
    },
    RemoveService {
        key: ServiceKey,
    },
    RemoveVip {
        key: VipKey,
    },
    RemoveBackendSet {
        service_id: u32,
    },
    /// A full-NAT service's source addresses and ports; written before its service entry or
    /// backends can open a connection.
    SetSnatPool {
        service_id: u32,
        pool: Box<SnatPool>,
    },
    /// Every SNAT address in use with its port range (`snat_range`): the whole set, replacing
    /// the one in the map (strays to them are dropped, `FW_HAS_SNAT` follows non-emptiness).
    SetSnatAddrs {
        addrs: Vec<(IpAddr, u32)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("out of service ids (at most {MAX_SERVICES} services)")]
    NoServiceId,
}

/// Writes to make, and the reconciler's view once they are made.
#[derive(Debug)]
pub struct Plan {
    pub ops: Vec<MapOp>,
    /// Backends (service, address) left out for want of a free id: the rest of the plan goes
    /// ahead without them, and ids this plan frees serve them on a later one.
    pub unplaced: Vec<(String, IpAddr)>,
    next: Reconciler,
}

/// A backend as last written.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: u32,
    /// The id's generation when it was given to this backend (see `foobar_lb_common::owner`).
    pub generation: u16,
    pub mac: Mac,
    /// `Backend::ifindex`: the NAT backend's interface (0: the receiving one).
    pub ifindex: u32,
    pub forwarding: Forwarding,
    /// `ADMIN_*` bits as written in `BACKEND_ADMIN`.
    pub admin: u32,
    pub state: BackendState,
}

#[derive(Debug, Clone)]
pub struct WrittenService {
    pub id: u32,
    pub key: ServiceKey,
    pub rate_limit: (u32, u32, u8),
    /// The scheduler's `ServiceInfo::flags` bits last written.
    pub sched_flags: u32,
    pub backends: BTreeMap<IpAddr, Written>,
    /// The round-robin slots last written (`None`: not known, so the next plan writes them).
    pub slots: Option<Vec<u32>>,
    /// Full NAT: the SNAT pool last written (`None`: none, or not known).
    pub snat: Option<SnatPool>,
}

/// Id allocator handing out the id freed longest ago, so a recycled backend id is not reused
/// while packets may still hold its old entry.
#[derive(Debug, Clone)]
struct Ids {
    free: VecDeque<u32>,
}

impl Ids {
    fn new(first: u32, end: u32) -> Ids {
        Ids {
            free: (first..end).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    services: BTreeMap<String, WrittenService>,
    service_ids: Ids,
    backend_ids: Ids,
    /// Per backend id, the generation it was last given with (see `foobar_lb_common::owner`).
    generations: Vec<u16>,
    /// The next retirement's sequence number (kept with retired ids in `BACKEND_ADMIN`, so a
    /// restarted daemon reuses them in the same oldest-first order).
    retire_seq: u32,
    /// The SNAT addresses and ranges last written (`None`: not known, after adoption).
    snat_addrs: Option<Vec<(IpAddr, u32)>>,
}

impl Default for Reconciler {
    fn default() -> Self {
        Reconciler {
            services: BTreeMap::new(),
            service_ids: Ids::new(0, MAX_SERVICES),
            // Backend id 0 is reserved: an unset slot names it and is dropped.
            backend_ids: Ids::new(1, MAX_BACKENDS),
            generations: vec![0; MAX_BACKENDS as usize],
            retire_seq: 1,
            // New maps hold none.
            snat_addrs: Some(Vec::new()),
        }
    }
}

/// Most retirement sequence numbers `BACKEND_ADMIN` holds above [`ADMIN_RETIRED_SHIFT`].
const RETIRE_SEQ_MAX: u32 = u32::MAX >> ADMIN_RETIRED_SHIFT;

impl Reconciler {
    /// What was last written, by service name.
    pub fn services(&self) -> &BTreeMap<String, WrittenService> {
        &self.services
    }

    /// Takes over what a pinned data plane holds, so the next plan writes only differences and
    /// existing flows keep their backend ids. Services are matched to `names` by key; entries
    /// matching nothing are kept under a placeholder name, so the next plan removes them.
    pub fn adopt(names: &[(String, ServiceKey)], pinned: &PinnedState) -> Reconciler {
        let PinnedState {
            services,
            backends,
            sets,
            admin,
            snat_addrs,
        } = pinned;
        let mut r = Reconciler::default();
        let mut snat_addrs = snat_addrs.clone();
        snat_addrs.sort();
        r.snat_addrs = Some(snat_addrs);
        // Every id ever written keeps its generation, so the next use of it gets a new one.
        for (id, b) in backends {
            r.generations[*id as usize] = owner_generation(b.owner);
        }
        for (key, info) in services {
            let name = names
                .iter()
                .find(|(_, k)| k == key)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| format!("<stale service {}>", info.id));
            let mut ws = WrittenService {
                id: info.id,
                key: *key,
                rate_limit: (info.rate_per_sec, info.burst, info.flags as u8),
                sched_flags: info.flags & !0xff,
                backends: BTreeMap::new(),
                slots: sets
                    .iter()
                    .find(|(id, _)| *id == info.id)
                    .map(|(_, slots)| slots.clone()),
                snat: None,
            };
            for (id, b) in backends
                .iter()
                .filter(|(_, b)| owner_service(b.owner) == info.id)
            {
                let state = match b.state {
                    BACKEND_ACTIVE => BackendState::Active,
                    BACKEND_DRAINING => BackendState::Draining,
                    // Down entries are retired ids: free for reuse.
                    _ => continue,
                };
                // A mode this build does not know: treat the id as retired, so the next plan
                // writes the backend afresh under a new id.
                let Some(forwarding) = Forwarding::from_wire(b.fwd_mode, b.port) else {
                    continue;
                };
                ws.backends.insert(
                    decode_addr(&b.addr, b.family),
                    Written {
                        id: *id,
                        generation: owner_generation(b.owner),
                        mac: b.mac,
                        ifindex: b.ifindex,
                        forwarding,
                        admin: admin
                            .iter()
                            .find(|(a, _)| a == id)
                            .map_or(0, |(_, flags)| *flags),
                        state,
                    },
                );
            }
            r.services.insert(name, ws);
        }
        let used_services: Vec<u32> = r.services.values().map(|s| s.id).collect();
        let used_backends: Vec<u32> = r
            .services
            .values()
            .flat_map(|s| s.backends.values().map(|b| b.id))
            .collect();
        r.service_ids.free.retain(|id| !used_services.contains(id));
        r.backend_ids.free.retain(|id| !used_backends.contains(id));
        // Oldest first, as the previous daemon would have: ids never used, then retired ones
        // in the order they were retired.
        let seq = |id: u32| -> u32 {
            admin
                .iter()
                .find(|(a, _)| *a == id)
                .map_or(0, |(_, flags)| flags >> ADMIN_RETIRED_SHIFT)
        };
        let mut free: Vec<u32> = r.backend_ids.free.drain(..).collect();
        free.sort_by_key(|id| (seq(*id), *id));
        r.retire_seq = free.iter().map(|id| seq(*id)).max().unwrap_or(0) + 1;
        r.backend_ids.free = free.into();
        r
    }

    /// Plans the writes that turn the current state into `desired`, without changing the
    /// reconciler's view: [`Reconciler::commit`] takes it over once the writes succeeded. Left
    /// uncommitted (a write failed), the next plan starts from the same view and writes the
    /// same again, which every `MapOp` allows.
    pub fn prepare(&self, desired: &[ServiceSpec]) -> Result<Plan, ReconcileError> {
        let mut next = self.clone();
        let mut unplaced = Vec::new();
        let ops = next.plan_in_place(desired, &mut unplaced)?;
        Ok(Plan {
            ops,
            unplaced,
            next,
        })
    }

    /// Takes over a plan's view once its writes are in the maps.
    pub fn commit(&mut self, plan: Plan) {
        *self = plan.next;
    }

    /// Plans and commits at once, for callers whose writes cannot fail halfway (tests).
    pub fn plan(&mut self, desired: &[ServiceSpec]) -> Result<Vec<MapOp>, ReconcileError> {
        let Plan { ops, next, .. } = self.prepare(desired)?;
        *self = next;
        Ok(ops)
    }

    fn plan_in_place(
        &mut self,
        desired: &[ServiceSpec],
        unplaced: &mut Vec<(String, IpAddr)>,
    ) -> Result<Vec<MapOp>, ReconcileError> {
        let mut ops = Vec::new();
        let mut retired = Vec::new();
        let wanted: HashMap<&str, &ServiceSpec> =
            desired.iter().map(|s| (s.name.as_str(), s)).collect();

        // Services that went away (or changed key): unpublish first, then free what they used.
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(name, w)| wanted.get(name.as_str()).is_none_or(|s| s.key != w.key))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let w = self.services.remove(&name).expect("listed above");
            ops.push(MapOp::RemoveService { key: w.key });
            let vip = w.key.vip_key();
            let vip_still_used = self.services.values().any(|o| o.key.vip_key() == vip)
                || desired.iter().any(|s| s.key.vip_key() == vip);
            if !vip_still_used {
                ops.push(MapOp::RemoveVip { key: vip });
            }
            ops.push(MapOp::RemoveBackendSet { service_id: w.id });
            for (addr, b) in &w.backends {
                retire(&mut ops, *addr, b, w.id, &mut retired);
            }
            self.service_ids.free.push_back(w.id);
        }

        for spec in desired {
            let new = !self.services.contains_key(&spec.name);
            if new {
                let id = self
                    .service_ids
                    .free
                    .pop_front()
                    .ok_or(ReconcileError::NoServiceId)?;
                self.services.insert(
                    spec.name.clone(),
                    WrittenService {
                        id,
                        key: spec.key,
                        rate_limit: spec.rate_limit,
                        sched_flags: spec.scheduler.flags(),
                        backends: BTreeMap::new(),
                        slots: None,
                        snat: None,
                    },
                );
                ops.push(MapOp::ResetServiceStats { id });
            }
            let w = self.services.get_mut(&spec.name).expect("inserted above");
            // 0. A full-NAT service's SNAT pool, before anything can open a connection.
            if let Some(pool) = spec.snat.as_ref().map(snat_pool) {
                if w.snat != Some(pool) {
                    w.snat = Some(pool);
                    ops.push(MapOp::SetSnatPool {
                        service_id: w.id,
                        pool: Box::new(pool),
                    });
                }
            }
            let mut stale: Vec<(IpAddr, Written)> = Vec::new();

            // 1. Backend entries, before any set names them. A backend leaving the active
            // state changes only after the set stops naming it (step 4): in between, a new
            // flow picking its slot would find it inactive and be dropped.
            let mut slots_from: Vec<Member> = Vec::new();
            let mut deactivated: Vec<MapOp> = Vec::new();
            let mut no_id: Vec<IpAddr> = Vec::new();
            for b in &spec.backends {
                let Some(mac) = b.mac else { continue };
                let old = w.backends.get(&b.addr).cloned();
                let (id, generation) = match &old {
                    // Forwarding fields of an id in use never change: packets may hold it.
                    Some(o)
                        if o.mac == mac
                            && o.ifindex == b.ifindex
                            && o.forwarding == b.forwarding =>
                    {
                        if o.admin != b.admin {
                            ops.push(MapOp::SetBackendAdmin {
                                id: o.id,
                                flags: b.admin,
                            });
                        }
                        if o.state != b.state {
                            let op = MapOp::SetBackend {
                                id: o.id,
                                backend: entry(
                                    b.addr,
                                    (mac, b.ifindex),
                                    b.forwarding,
                                    owner(w.id, o.generation),
                                    b.state,
                                ),
                            };
                            if o.state == BackendState::Active {
                                deactivated.push(op);
                            } else {
                                ops.push(op);
                            }
                        }
                        (o.id, o.generation)
                    }
                    _ => {
                        // No id free: this backend waits (as one whose MAC is unknown would)
                        // and the others' updates go ahead.
                        let Some(id) = self.backend_ids.free.pop_front() else {
                            no_id.push(b.addr);
                            unplaced.push((spec.name.clone(), b.addr));
                            continue;
                        };
                        let gen = &mut self.generations[id as usize];
                        *gen = gen.wrapping_add(1);
                        let generation = *gen;
                        ops.push(MapOp::ResetBackendStats { id });
                        // Always: a reused id may carry an earlier backend's bits.
                        ops.push(MapOp::SetBackendAdmin { id, flags: b.admin });
                        ops.push(MapOp::SetBackend {
                            id,
                            backend: entry(
                                b.addr,
                                (mac, b.ifindex),
                                b.forwarding,
                                owner(w.id, generation),
                                b.state,
                            ),
                        });
                        if let Some(o) = old {
                            // Same address, new MAC or mode: the old entry is written down
                            // after the set no longer names it.
                            stale.push((b.addr, o));
                        }
                        (id, generation)
                    }
                };
                w.backends.insert(
                    b.addr,
                    Written {
                        id,
                        generation,
                        mac,
                        ifindex: b.ifindex,
                        forwarding: b.forwarding,
                        admin: b.admin,
                        state: b.state,
                    },
                );
                if b.state == BackendState::Active {
                    slots_from.push(Member {
                        id,
                        weight: b.weight.max(1),
                        addr: b.addr,
                    });
                }
            }
            // Backends no longer wanted (or whose MAC became unknown).
            let keep: Vec<IpAddr> = spec
                .backends
                .iter()
                .filter(|b| b.mac.is_some() && !no_id.contains(&b.addr))
                .map(|b| b.addr)
                .collect();
            let dropped: Vec<(IpAddr, Written)> = w
                .backends
                .iter()
                .filter(|(a, _)| !keep.contains(a))
                .map(|(a, b)| (*a, b.clone()))
                .collect();
            let dropped: Vec<(IpAddr, Written)> = dropped.into_iter().chain(stale).collect();
            w.backends.retain(|a, _| keep.contains(a));

            // 2. The set, in one update, when it differs from the one written (membership,
            // states and weights all show in the slots).
            let set = spec.scheduler.slots(&slots_from);
            let slots = live_slots(&set);
            if w.slots.as_ref() != Some(&slots) {
                w.slots = Some(slots);
                ops.push(MapOp::SetBackendSet {
                    service_id: w.id,
                    set,
                });
            }
            // 3. Publish the service (or its new rate limit: one update of its value).
            if new {
                ops.push(MapOp::SetVip {
                    key: spec.key.vip_key(),
                });
            }
            let sched_flags = spec.scheduler.flags()
                | if spec.nat {
                    foobar_lb_common::SVC_NAT
                } else {
                    0
                };
            if new || w.rate_limit != spec.rate_limit || w.sched_flags != sched_flags {
                w.rate_limit = spec.rate_limit;
                w.sched_flags = sched_flags;
                ops.push(MapOp::SetService {
                    key: spec.key,
                    info: ServiceInfo {
                        id: w.id,
                        flags: spec.rate_limit.2 as u32 | sched_flags,
                        rate_per_sec: spec.rate_limit.0,
                        burst: spec.rate_limit.1,
                    },
                });
            }
            // 4. Only now change the state of backends that left the set (drained, down) and
            // mark the dropped ones down so their flows move.
            ops.append(&mut deactivated);
            for (addr, b) in &dropped {
                retire(&mut ops, *addr, b, w.id, &mut retired);
            }
        }
        // Retired ids remember when they were retired, so a restarted daemon reuses them in
        // the same order (`adopt`).
        for &id in &retired {
            ops.push(MapOp::SetBackendAdmin {
                id,
                flags: self.retire_seq << ADMIN_RETIRED_SHIFT,
            });
            self.retire_seq = (self.retire_seq % RETIRE_SEQ_MAX) + 1;
        }
        self.backend_ids.free.extend(retired);
        // The SNAT addresses of all full-NAT services, for the stray check.
        let mut addrs: Vec<(IpAddr, u32)> = desired
            .iter()
            .filter_map(|s| s.snat.as_ref())
            .flat_map(|n| {
                n.addrs
                    .iter()
                    .map(|a| (*a, snat_range(n.ports.0, n.ports.1)))
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        if self.snat_addrs.as_ref() != Some(&addrs) {
            self.snat_addrs = Some(addrs.clone());
            ops.push(MapOp::SetSnatAddrs { addrs });
        }
        Ok(ops)
    }
}

/// The data plane's pool for a full-NAT service.
fn snat_pool(snat: &Snat) -> SnatPool {
    let mut pool = SnatPool {
        count: 0,
        port_lo: snat.ports.0,
        port_hi: snat.ports.1,
        addrs: [[0; 4]; MAX_SNAT_ADDRS],
    };
    for (slot, a) in pool.addrs.iter_mut().zip(&snat.addrs) {
        *slot = encode_addr(*a).0;
        pool.count += 1;
    }
    pool
}

/// Marks a backend down (its flows move on their next packet) and frees its id. Only the state
/// word differs from what is in the map, so a concurrent reader never sees a torn entry.
fn retire(
    ops: &mut Vec<MapOp>,
    addr: IpAddr,
    b: &Written,
    service_id: u32,
    retired: &mut Vec<u32>,
) {
    ops.push(MapOp::SetBackend {
        id: b.id,
        backend: entry(
            addr,
            (b.mac, b.ifindex),
            b.forwarding,
            owner(service_id, b.generation),
            BackendState::Down,
        ),
    });
    retired.push(b.id);
}

/// A backend entry; `(mac, ifindex)`: its MAC and, for NAT, the interface it is on.
fn entry(
    addr: IpAddr,
    (mac, ifindex): (Mac, u32),
    forwarding: Forwarding,
    owner: u32,
    state: BackendState,
) -> Backend {
    let (addr, family) = encode_addr(addr);
    Backend {
        addr,
        mac,
        family,
        fwd_mode: forwarding.wire(),
        port: forwarding.wire_port(),
        _pad: [0; 2],
        ifindex,
        owner,
        state: match state {
            BackendState::Active => BACKEND_ACTIVE,
            BackendState::Draining => BACKEND_DRAINING,
            BackendState::Down => BACKEND_DOWN,
        },
    }
}

/// The used part of a set's slots.
pub fn live_slots(set: &BackendSet) -> Vec<u32> {
    set.slots[..(set.len as usize).min(MAX_SLOTS)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{BackendSpec, Forwarding};
    use foobar_lb_common::PROTO_TCP;

    fn spec(name: &str, backends: &[(&str, u8, BackendState)]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            key: ServiceKey::new("10.0.0.100".parse().unwrap(), 80, PROTO_TCP),
            rate_limit: (0, 0, 64),
            scheduler: Default::default(),
            nat: false,
            snat: None,
            backends: backends
                .iter()
                .map(|&(a, m, state)| BackendSpec {
                    addr: a.parse().unwrap(),
                    mac: (m != 0).then_some([2, 0, 0, 0, 0, m]),
                    ifindex: 0,
                    state,
                    weight: 1,
                    forwarding: Forwarding::Dsr,
                    admin: 0,
                })
                .collect(),
        }
    }

    use BackendState::*;

    #[test]
    fn first_plan_writes_backends_then_set_then_service() {
        let mut r = Reconciler::default();
        let ops = r
            .plan(&[spec(
                "www",
                &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, Active)],
            )])
            .unwrap();
        let pos = |f: &dyn Fn(&MapOp) -> bool| ops.iter().position(f).unwrap();
        let last_backend = ops
            .iter()
            .rposition(|o| matches!(o, MapOp::SetBackend { .. }))
            .unwrap();
        let set = pos(&|o| matches!(o, MapOp::SetBackendSet { .. }));
        let svc = pos(&|o| matches!(o, MapOp::SetService { .. }));
        assert!(last_backend < set && set < svc, "{ops:#?}");
        let MapOp::SetBackendSet { set, .. } = &ops[set] else {
            unreachable!()
        };
        assert_eq!(set.len, 2);
        assert_eq!(&set.slots[..2], &[1, 2], "ids start at 1: 0 is reserved");
    }

    #[test]
    fn an_uncommitted_plan_is_planned_again() {
        let mut r = Reconciler::default();
        let s = [spec("www", &[("10.0.0.11", 11, Active)])];
        // The writes failed: nothing committed, so the same writes are planned again.
        let first = r.prepare(&s).unwrap();
        let again = r.prepare(&s).unwrap();
        assert!(!first.ops.is_empty());
        assert_eq!(first.ops, again.ops);
        r.commit(again);
        assert_eq!(r.prepare(&s).unwrap().ops, vec![]);
    }

    #[test]
    fn a_backend_without_a_free_id_waits_and_the_others_are_written() {
        // Every id in use: 16 services of 255 backends, 15 on the last one.
        let mut r = Reconciler::default();
        let addr = |s: usize, b: usize| format!("10.{s}.{}.{}", b / 200, b % 200 + 1);
        let specs = |mac_of_first: u8, last_state: BackendState| -> Vec<ServiceSpec> {
            (0..17)
                .map(|s| {
                    let n = if s < 16 { 255 } else { 15 };
                    let addrs: Vec<String> = (0..n).map(|b| addr(s, b)).collect();
                    let list: Vec<(&str, u8, BackendState)> = addrs
                        .iter()
                        .enumerate()
                        .map(|(b, a)| match (s, b) {
                            (0, 0) => (a.as_str(), mac_of_first, Active),
                            (16, 14) => (a.as_str(), 1, last_state),
                            _ => (a.as_str(), 1, Active),
                        })
                        .collect();
                    let mut sp = spec(&format!("s{s}"), &list);
                    sp.key =
                        ServiceKey::new("10.0.0.100".parse().unwrap(), 1000 + s as u16, PROTO_TCP);
                    sp
                })
                .collect()
        };
        r.plan(&specs(1, Active)).unwrap();
        assert!(r.backend_ids.free.is_empty(), "all 4095 ids in use");
        // A new MAC needs a new id and none is free; another service's drain must still go out.
        let plan = r.prepare(&specs(2, Draining)).unwrap();
        assert_eq!(
            plan.unplaced,
            vec![("s0".to_string(), addr(0, 0).parse().unwrap())]
        );
        assert!(
            plan.ops
                .iter()
                .any(|o| matches!(o, MapOp::SetBackend { backend, .. }
                if backend.state == BACKEND_DRAINING)),
            "the drain elsewhere was planned"
        );
        r.commit(plan);
        // The waiting backend's old id was retired by that plan: the next one places it.
        let plan = r.prepare(&specs(2, Draining)).unwrap();
        assert!(plan.unplaced.is_empty());
        assert!(plan
            .ops
            .iter()
            .any(|o| matches!(o, MapOp::SetBackend { backend, .. }
            if backend.mac == [2, 0, 0, 0, 0, 2] && backend.state == BACKEND_ACTIVE)));
    }

    #[test]
    fn unchanged_state_plans_nothing() {
        let mut r = Reconciler::default();
        let s = [spec("www", &[("10.0.0.11", 11, Active)])];
        r.plan(&s).unwrap();
        assert_eq!(r.plan(&s).unwrap(), vec![]);
    }

    #[test]
    fn removed_backend_leaves_set_before_it_goes_down() {
        let mut r = Reconciler::default();
        r.plan(&[spec(
            "www",
            &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, Active)],
        )])
        .unwrap();
        let ops = r
            .plan(&[spec("www", &[("10.0.0.11", 11, Active)])])
            .unwrap();
        assert_eq!(ops.len(), 3, "{ops:#?}");
        let MapOp::SetBackendSet { set, .. } = &ops[0] else {
            panic!("{ops:#?}")
        };
        assert_eq!(&set.slots[..set.len as usize], &[1]);
        // Its retirement is numbered, for oldest-first reuse after a restart.
        assert_eq!(
            ops[2],
            MapOp::SetBackendAdmin {
                id: 2,
                flags: 1 << ADMIN_RETIRED_SHIFT
            }
        );
        assert!(
            matches!(&ops[1], MapOp::SetBackend { id: 2, backend } if backend.state == BACKEND_DOWN)
        );
    }

    /// A SYN that picks a slot between two writes must find an active backend: the set stops
    /// naming a backend before the backend stops being active, and names it only after it is.
    #[test]
    fn drain_and_down_leave_the_set_before_the_backend_changes_state() {
        let both = [("10.0.0.11", 11, Active), ("10.0.0.12", 12, Active)];
        for (to, state) in [(Draining, BACKEND_DRAINING), (Down, BACKEND_DOWN)] {
            let mut r = Reconciler::default();
            r.plan(&[spec("www", &both)]).unwrap();
            let ops = r
                .plan(&[spec(
                    "www",
                    &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, to)],
                )])
                .unwrap();
            assert_eq!(ops.len(), 2, "{ops:#?}");
            let MapOp::SetBackendSet { set, .. } = &ops[0] else {
                panic!("set first: {ops:#?}")
            };
            assert_eq!(&set.slots[..set.len as usize], &[1]);
            assert!(
                matches!(&ops[1], MapOp::SetBackend { id: 2, backend } if backend.state == state),
                "{ops:#?}"
            );
            // And back: active first, then the set that names it again.
            let ops = r.plan(&[spec("www", &both)]).unwrap();
            assert!(
                matches!(&ops[0], MapOp::SetBackend { id: 2, backend } if backend.state == BACKEND_ACTIVE),
                "{ops:#?}"
            );
            assert!(matches!(&ops[1], MapOp::SetBackendSet { .. }), "{ops:#?}");
        }
    }

    #[test]
    fn draining_backend_keeps_entry_but_leaves_set() {
        let mut r = Reconciler::default();
        r.plan(&[spec(
            "www",
            &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, Active)],
        )])
        .unwrap();
        let ops = r
            .plan(&[spec(
                "www",
                &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, Draining)],
            )])
            .unwrap();
        let MapOp::SetBackendSet { set, .. } = &ops[0] else {
            panic!("{ops:#?}")
        };
        assert_eq!(&set.slots[..set.len as usize], &[1]);
        assert!(
            matches!(&ops[1], MapOp::SetBackend { id: 2, backend } if backend.state == BACKEND_DRAINING)
        );
        assert_eq!(r.services()["www"].backends.len(), 2, "the entry is kept");
    }

    #[test]
    fn unresolved_mac_is_not_in_set_and_new_mac_gets_new_id() {
        let mut r = Reconciler::default();
        let ops = r.plan(&[spec("www", &[("10.0.0.11", 0, Active)])]).unwrap();
        let MapOp::SetBackendSet { set, .. } = &ops[1] else {
            panic!("{ops:#?}")
        };
        assert_eq!(set.len, 0);
        r.plan(&[spec("www", &[("10.0.0.11", 11, Active)])])
            .unwrap();
        let ops = r
            .plan(&[spec("www", &[("10.0.0.11", 99, Active)])])
            .unwrap();
        let new_id = r.services()["www"].backends.values().next().unwrap().id;
        assert_ne!(new_id, 1);
        assert!(ops.iter().any(|o| matches!(o, MapOp::SetBackend { id, backend } if *id == new_id && backend.mac[5] == 99)));
    }

    #[test]
    fn nat_backends_carry_their_port_and_a_new_port_gets_a_new_id() {
        let nat = |port| {
            let mut s = spec("www", &[("10.0.0.11", 11, Active)]);
            s.nat = true;
            s.backends[0].forwarding = Forwarding::Nat { port };
            s
        };
        let mut r = Reconciler::default();
        let ops = r.plan(&[nat(8080)]).unwrap();
        let backend = ops
            .iter()
            .find_map(|o| match o {
                MapOp::SetBackend { backend, .. } => Some(*backend),
                _ => None,
            })
            .unwrap();
        assert_eq!(backend.fwd_mode, foobar_lb_common::FWD_NAT);
        assert_eq!(backend.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(
            Forwarding::from_wire(backend.fwd_mode, backend.port),
            Some(Forwarding::Nat { port: 8080 })
        );
        assert!(ops
            .iter()
            .any(|o| matches!(o, MapOp::SetService { info, .. }
            if info.flags & foobar_lb_common::SVC_NAT != 0)));
        let old = r.services()["www"].backends.values().next().unwrap().id;
        r.plan(&[nat(8081)]).unwrap();
        let new = r.services()["www"].backends.values().next().unwrap().id;
        assert_ne!(old, new, "forwarding fields of an id in use never change");
    }

    #[test]
    fn removed_service_is_unpublished_first() {
        let mut r = Reconciler::default();
        r.plan(&[spec("www", &[("10.0.0.11", 11, Active)])])
            .unwrap();
        let ops = r.plan(&[]).unwrap();
        assert!(matches!(ops[0], MapOp::RemoveService { .. }), "{ops:#?}");
        assert!(matches!(ops[1], MapOp::RemoveVip { .. }));
        assert!(r.services().is_empty());
    }

    #[test]
    fn adopting_written_state_plans_nothing_and_keeps_ids() {
        let mut r = Reconciler::default();
        let desired = [spec(
            "www",
            &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, Draining)],
        )];
        let ops = r.plan(&desired).unwrap();
        // Replay the ops into a fake "kernel", then adopt from it.
        let mut services = Vec::new();
        let mut sets = Vec::new();
        let mut backends = std::collections::BTreeMap::new();
        for op in &ops {
            match op {
                MapOp::SetService { key, info } => services.push((*key, *info)),
                MapOp::SetBackendSet { service_id, set } => {
                    sets.push((*service_id, live_slots(set)))
                }
                MapOp::SetBackend { id, backend } => {
                    backends.insert(*id, *backend);
                }
                _ => {}
            }
        }
        let pinned = PinnedState {
            services,
            backends: backends.into_iter().collect(),
            sets,
            admin: Vec::new(),
            snat_addrs: Vec::new(),
        };
        let names = vec![("www".to_string(), desired[0].key)];
        let mut adopted = Reconciler::adopt(&names, &pinned);
        assert_eq!(adopted.plan(&desired).unwrap(), vec![]);
        // New ids do not collide with adopted ones.
        let more = [spec(
            "www",
            &[
                ("10.0.0.11", 11, Active),
                ("10.0.0.12", 12, Draining),
                ("10.0.0.13", 13, Active),
            ],
        )];
        adopted.plan(&more).unwrap();
        let ids: Vec<u32> = adopted.services()["www"]
            .backends
            .values()
            .map(|b| b.id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        // A service the config no longer has is removed by the next plan.
        let mut stale = Reconciler::adopt(&[], &pinned);
        let ops = stale.plan(&[]).unwrap();
        assert!(matches!(ops[0], MapOp::RemoveService { .. }));
    }

    /// A fake kernel: map contents after replaying ops, as `Dataplane::read_state` reads them.
    #[derive(Default)]
    struct Maps {
        services: BTreeMap<u32, (ServiceKey, ServiceInfo)>,
        sets: BTreeMap<u32, Vec<u32>>,
        backends: BTreeMap<u32, Backend>,
        admin: BTreeMap<u32, u32>,
    }

    impl Maps {
        fn replay(&mut self, ops: &[MapOp]) {
            for op in ops {
                match op {
                    MapOp::SetService { key, info } => {
                        self.services.insert(info.id, (*key, *info));
                    }
                    MapOp::SetBackendSet { service_id, set } => {
                        self.sets.insert(*service_id, live_slots(set));
                    }
                    MapOp::SetBackend { id, backend } => {
                        self.backends.insert(*id, *backend);
                    }
                    MapOp::SetBackendAdmin { id, flags } => {
                        self.admin.insert(*id, *flags);
                    }
                    _ => {}
                }
            }
        }

        fn pinned(&self) -> PinnedState {
            PinnedState {
                services: self.services.values().copied().collect(),
                backends: self.backends.iter().map(|(i, b)| (*i, *b)).collect(),
                sets: self.sets.iter().map(|(i, s)| (*i, s.clone())).collect(),
                admin: self
                    .admin
                    .iter()
                    .filter(|(_, f)| **f != 0)
                    .map(|(i, f)| (*i, *f))
                    .collect(),
                snat_addrs: Vec::new(),
            }
        }
    }

    #[test]
    fn ids_are_reused_oldest_first_across_restarts_with_a_new_generation() {
        let all: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
        let with = |addrs: &[&String]| {
            let list: Vec<(&str, u8, BackendState)> =
                addrs.iter().map(|a| (a.as_str(), 1, Active)).collect();
            [spec("www", &list)]
        };
        let mut maps = Maps::default();
        let mut r = Reconciler::default();
        maps.replay(&r.plan(&with(&all.iter().collect::<Vec<_>>())).unwrap());
        // Remove 10.0.0.3 (id 3), then 10.0.0.1 (id 1): retired in that order.
        maps.replay(&r.plan(&with(&[&all[0], &all[1], &all[3]])).unwrap());
        maps.replay(&r.plan(&with(&[&all[1], &all[3]])).unwrap());
        // A restart: the free list is never-used ids first, then 3, then 1.
        let names = vec![("www".to_string(), with(&[])[0].key)];
        let mut adopted = Reconciler::adopt(&names, &maps.pinned());
        let free: Vec<u32> = adopted.backend_ids.free.iter().copied().collect();
        assert_eq!(free.len(), MAX_BACKENDS as usize - 1 - 2);
        assert_eq!(&free[free.len() - 2..], &[3, 1], "oldest retirement first");
        assert!(free[..free.len() - 2].iter().all(|id| *id >= 5));
        // Use every never-used id, then the next two backends get 3 and 1, each with the next
        // generation of its id, so flows of the old holders never follow them.
        adopted.backend_ids.free.drain(..free.len() - 2);
        let new: Vec<String> = (10..12).map(|i| format!("10.0.0.{i}")).collect();
        let ops = adopted
            .plan(&with(&[&all[1], &all[3], &new[0], &new[1]]))
            .unwrap();
        let written: Vec<(u32, u16)> = ops
            .iter()
            .filter_map(|o| match o {
                MapOp::SetBackend { id, backend } => Some((*id, owner_generation(backend.owner))),
                _ => None,
            })
            .collect();
        assert_eq!(written, vec![(3, 2), (1, 2)]);
    }

    #[test]
    fn a_weight_change_alone_rewrites_the_set() {
        let mut r = Reconciler::default();
        let mut s = [spec(
            "www",
            &[("10.0.0.11", 11, Active), ("10.0.0.12", 12, Active)],
        )];
        r.plan(&s).unwrap();
        s[0].backends[0].weight = 3;
        let ops = r.plan(&s).unwrap();
        assert_eq!(ops.len(), 1, "{ops:#?}");
        let MapOp::SetBackendSet { set, .. } = &ops[0] else {
            panic!("{ops:#?}")
        };
        assert_eq!(set.len, 4);
    }
}
