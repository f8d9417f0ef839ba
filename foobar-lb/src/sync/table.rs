//! Translation between a node's flow entries (local backend ids) and the node-independent
//! [`Entry`] (the backend's address and port): ids are given per node and differ between
//! nodes, addresses do not. Built from the data plane's own service and backend maps.

use std::collections::HashMap;

use foobar_lb_common::{
    nat_reply_key, owner_service, Addr, Backend, FlowKey, FlowValue, NatFwd, NatRev, ServiceInfo,
    ServiceKey, BACKEND_ACTIVE, BACKEND_UNUSED, FLOW_FIN, FLOW_RST, FLOW_TIME_MASK, FWD_FULLNAT,
    FWD_NAT, NAT_FULL, NAT_REPLIED, NAT_TIME_MASK, SVC_NAT,
};

use crate::dataplane::nat_idle;

use super::wire::{
    Entry, NatEntry, NAT_ENTRY_BACKEND_FIN, NAT_ENTRY_BACKEND_RST, NAT_ENTRY_CLIENT_FIN,
    NAT_ENTRY_CLIENT_RST, NAT_ENTRY_FULL, NAT_ENTRY_REPLIED,
};

fn addr_bytes(a: &Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, w) in out.chunks_exact_mut(4).zip(a) {
        // The words hold the packet's bytes in memory order.
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    out
}

fn bytes_addr(b: &[u8; 16]) -> Addr {
    let mut a = [0u32; 4];
    for (w, chunk) in a.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
    }
    a
}

/// A backend as every node names it: its service's id here, family, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BackendName {
    service_id: u32,
    family: u8,
    addr: [u8; 16],
    port: [u8; 2],
}

/// A peer's NAT connection as this node writes it: both entries and their keys, with this
/// node's backend id. What only this node can know is left for the caller to fill in: the
/// replies' interface (`rev.ifindex`) and, for full NAT, the backend's next hop
/// (`fwd.ifindex`, `next_mac`, `src_mac`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatImport {
    pub key: FlowKey,
    pub fwd: NatFwd,
    pub rkey: FlowKey,
    pub rev: NatRev,
}

impl NatImport {
    pub fn full(&self) -> bool {
        self.fwd.flags & NAT_FULL != 0
    }

    /// Merges this node's entries of the same connection (`old`, written by its program or
    /// an earlier sync) into a peer's copy at flow time `now`: per direction, the newer last
    /// packet and every state bit either side has seen, and this node's firewall generation.
    /// So a re-announcement never makes a connection this node forwards look older or
    /// reopened (two nodes each re-announce what the other sent them, too).
    pub fn merge(&mut self, old_fwd: &NatFwd, old_rev: &NatRev, now: u32) {
        let newer = |a: u32, b: u32, mask: u32| {
            if (now.wrapping_sub(a) & mask) <= (now.wrapping_sub(b) & mask) {
                a & mask
            } else {
                b & mask
            }
        };
        self.fwd.seen = newer(self.fwd.seen, old_fwd.seen, FLOW_TIME_MASK)
            | ((self.fwd.seen | old_fwd.seen) & !FLOW_TIME_MASK);
        self.rev.seen = newer(self.rev.seen, old_rev.seen, NAT_TIME_MASK)
            | ((self.rev.seen | old_rev.seen) & !NAT_TIME_MASK);
        self.fwd.fw_gen = old_fwd.fw_gen;
    }
}

#[derive(Debug, Default, Clone)]
pub struct Table {
    /// Service -> (id, flags).
    services: HashMap<ServiceKey, (u32, u32)>,
    /// Backend id -> its entry, for ids in use.
    by_id: HashMap<u32, Backend>,
    /// Name -> (id, owner word); an active id wins over others of the same name.
    by_name: HashMap<BackendName, (u32, u32)>,
}

impl Table {
    pub fn new(services: &[(ServiceKey, ServiceInfo)], backends: &[(u32, Backend)]) -> Table {
        let mut t = Table {
            services: services
                .iter()
                .map(|(k, i)| (*k, (i.id, i.flags)))
                .collect(),
            ..Default::default()
        };
        for &(id, b) in backends {
            if id == 0 || b.state == BACKEND_UNUSED {
                continue;
            }
            t.by_id.insert(id, b);
            let name = BackendName {
                service_id: owner_service(b.owner),
                family: b.family,
                addr: addr_bytes(&b.addr),
                port: b.port.to_ne_bytes(),
            };
            let replace = match t.by_name.get(&name) {
                None => true,
                Some((old, _)) => b.state == BACKEND_ACTIVE && t.by_id[old].state != BACKEND_ACTIVE,
            };
            if replace {
                t.by_name.insert(name, (id, b.owner));
            }
        }
        t
    }

    /// The node-independent form of a local flow entry; `None` if its backend id no longer
    /// carries the owner word the flow was scheduled with (a removed backend's stale flow).
    pub fn export(&self, key: &FlowKey, backend_id: u32, owner: u32, seen: u32) -> Option<Entry> {
        let b = self.by_id.get(&backend_id)?;
        if b.owner != owner {
            return None;
        }
        Some(Entry {
            family: key.family,
            proto: key.proto,
            closing: u8::from(seen & FLOW_FIN != 0) | u8::from(seen & FLOW_RST != 0) << 1,
            src: addr_bytes(&key.src),
            dst: addr_bytes(&key.dst),
            sport: key.sport.to_ne_bytes(),
            dport: key.dport.to_ne_bytes(),
            backend: addr_bytes(&b.addr),
            backend_port: b.port.to_ne_bytes(),
        })
    }

    /// The flow-table entry this node writes for a peer's entry, with this node's own id of
    /// that backend (`now`: the flow clock); `None` if this node has no such service or backend.
    pub fn import(&self, e: &Entry, now: u32) -> Option<(FlowKey, FlowValue)> {
        let key = FlowKey {
            src: bytes_addr(&e.src),
            dst: bytes_addr(&e.dst),
            sport: u16::from_ne_bytes(e.sport),
            dport: u16::from_ne_bytes(e.dport),
            proto: e.proto,
            family: e.family,
            _pad: [0; 2],
        };
        let service = ServiceKey {
            vip: key.dst,
            port: key.dport,
            proto: key.proto,
            family: key.family,
        };
        let &(service_id, _) = self.services.get(&service)?;
        let name = BackendName {
            service_id,
            family: e.family,
            addr: e.backend,
            port: e.backend_port,
        };
        let &(backend_id, owner) = self.by_name.get(&name)?;
        let closing = if e.closing & 1 != 0 { FLOW_FIN } else { 0 }
            | if e.closing & 2 != 0 { FLOW_RST } else { 0 };
        let value = FlowValue {
            backend_id,
            // Generation 0: the firewall checks the flow on its first packet here if rules
            // have changed since this node started.
            fw_gen: 0,
            seen: (now & foobar_lb_common::FLOW_TIME_MASK) | closing,
            owner,
        };
        Some((key, value))
    }
}

fn service_of(key: &FlowKey) -> ServiceKey {
    ServiceKey {
        vip: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    }
}

fn bits(word: u32, fin: u8, rst: u8) -> u8 {
    (if word & FLOW_FIN != 0 { fin } else { 0 }) | (if word & FLOW_RST != 0 { rst } else { 0 })
}

impl Table {
    /// Whether new connections to `key`'s service are NAT connections here (its ring events
    /// name a `NAT_FWD` entry, not a flow-table one).
    pub fn is_nat(&self, key: &FlowKey) -> bool {
        self.services
            .get(&service_of(key))
            .is_some_and(|&(_, flags)| flags & SVC_NAT != 0)
    }

    /// The node-independent form of a local NAT connection (`key` -> `fwd`, its reply entry
    /// `rev`) at flow time `now`; `None` if its backend id no longer carries the connection's
    /// owner word.
    pub fn export_nat(
        &self,
        key: &FlowKey,
        fwd: &NatFwd,
        rev: &NatRev,
        now: u32,
    ) -> Option<NatEntry> {
        let b = self.by_id.get(&fwd.backend_id)?;
        if b.owner != fwd.owner {
            return None;
        }
        let full = fwd.flags & NAT_FULL != 0;
        let flags = if full { NAT_ENTRY_FULL } else { 0 }
            | if rev.seen & NAT_REPLIED != 0 {
                NAT_ENTRY_REPLIED
            } else {
                0
            }
            | bits(fwd.seen, NAT_ENTRY_CLIENT_FIN, NAT_ENTRY_CLIENT_RST)
            | bits(rev.seen, NAT_ENTRY_BACKEND_FIN, NAT_ENTRY_BACKEND_RST);
        Some(NatEntry {
            family: key.family,
            proto: key.proto,
            flags,
            src: addr_bytes(&key.src),
            dst: addr_bytes(&key.dst),
            sport: key.sport.to_ne_bytes(),
            dport: key.dport.to_ne_bytes(),
            // The connection's own translation, as the backend sees it (the same as the
            // backend entry's unless that id was reused, which the owner check excludes).
            backend: addr_bytes(&fwd.backend_addr),
            backend_port: fwd.backend_port.to_ne_bytes(),
            snat: if full {
                addr_bytes(&fwd.snat_addr)
            } else {
                [0; 16]
            },
            snat_port: if full {
                fwd.snat_port.to_ne_bytes()
            } else {
                [0; 2]
            },
            client_mac: rev.client_mac,
            idle: nat_idle(now, fwd.seen, rev.seen),
        })
    }

    /// The connections among `conns` with a packet in the last `within` flow-time units, for
    /// the periodic re-announcement that keeps the peers' copies alive (see `mod.rs`).
    pub fn export_active(
        &self,
        conns: &[(FlowKey, NatFwd, NatRev)],
        now: u32,
        within: u32,
    ) -> Vec<NatEntry> {
        conns
            .iter()
            .filter(|(_, f, r)| nat_idle(now, f.seen, r.seen) < within)
            .filter_map(|(k, f, r)| self.export_nat(k, f, r, now))
            .collect()
    }

    /// The pair of entries this node writes for a peer's NAT connection, with this node's id
    /// of the backend (`now`: the flow clock, both directions' last packet); `None` if this
    /// node has no such NAT service, or no such backend in it forwarding the same way. The
    /// entries' last packet is set `e.idle` before `now`, as the sender had it.
    pub fn import_nat(&self, e: &NatEntry, now: u32) -> Option<NatImport> {
        let key = FlowKey {
            src: bytes_addr(&e.src),
            dst: bytes_addr(&e.dst),
            sport: u16::from_ne_bytes(e.sport),
            dport: u16::from_ne_bytes(e.dport),
            proto: e.proto,
            family: e.family,
            _pad: [0; 2],
        };
        let &(service_id, flags) = self.services.get(&service_of(&key))?;
        if flags & SVC_NAT == 0 {
            return None;
        }
        let name = BackendName {
            service_id,
            family: e.family,
            addr: e.backend,
            port: e.backend_port,
        };
        let &(backend_id, owner) = self.by_name.get(&name)?;
        let full = e.flags & NAT_ENTRY_FULL != 0;
        let mode = self.by_id[&backend_id].fwd_mode;
        if mode != if full { FWD_FULLNAT } else { FWD_NAT } {
            return None;
        }
        let flag = |bit: u8, word: u32| if e.flags & bit != 0 { word } else { 0 };
        let last = now.wrapping_sub(e.idle);
        let fwd = NatFwd {
            backend_addr: bytes_addr(&e.backend),
            backend_id,
            owner,
            // Generation 0: the firewall checks the connection on its first packet here if
            // rules have changed since this node started (as for imported flows).
            fw_gen: 0,
            seen: (last & FLOW_TIME_MASK)
                | flag(NAT_ENTRY_CLIENT_FIN, FLOW_FIN)
                | flag(NAT_ENTRY_CLIENT_RST, FLOW_RST),
            backend_port: u16::from_ne_bytes(e.backend_port),
            snat_port: if full {
                u16::from_ne_bytes(e.snat_port)
            } else {
                0
            },
            snat_addr: if full { bytes_addr(&e.snat) } else { [0; 4] },
            flags: if full { NAT_FULL } else { 0 },
            ..Default::default()
        };
        let rev = NatRev {
            vip: key.dst,
            client_mac: e.client_mac,
            vport: key.dport,
            ifindex: 0,
            seen: (last & NAT_TIME_MASK)
                | flag(NAT_ENTRY_REPLIED, NAT_REPLIED)
                | flag(NAT_ENTRY_BACKEND_FIN, FLOW_FIN)
                | flag(NAT_ENTRY_BACKEND_RST, FLOW_RST),
            client: if full { key.src } else { [0; 4] },
            cport: if full { key.sport } else { 0 },
            _pad: 0,
            flags: if full { NAT_FULL } else { 0 },
        };
        Some(NatImport {
            key,
            rkey: nat_reply_key(&key, &fwd),
            fwd,
            rev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foobar_lb_common::{owner, BACKEND_DOWN, FAMILY_V4, PROTO_TCP};

    fn v4(a: [u8; 4]) -> Addr {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    fn svc(id: u32) -> (ServiceKey, ServiceInfo) {
        let key = ServiceKey {
            vip: v4([10, 0, 0, 100]),
            port: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        };
        let info = ServiceInfo {
            id,
            ..Default::default()
        };
        (key, info)
    }

    fn backend(service: u32, gen: u16, last: u8, state: u32) -> Backend {
        Backend {
            addr: v4([10, 0, 1, last]),
            family: FAMILY_V4,
            owner: owner(service, gen),
            state,
            ..Default::default()
        }
    }

    fn flow() -> FlowKey {
        FlowKey {
            src: v4([192, 0, 2, 7]),
            dst: v4([10, 0, 0, 100]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_flow_moves_between_nodes_by_backend_address_not_id() {
        // Node A: service 1, backends .11 (id 3) and .12 (id 4). Node B numbers them
        // differently: service 2, .12 is id 7, .11 is id 9.
        let a = Table::new(
            &[svc(1)],
            &[
                (3, backend(1, 1, 11, BACKEND_ACTIVE)),
                (4, backend(1, 1, 12, BACKEND_ACTIVE)),
            ],
        );
        let b = Table::new(
            &[svc(2)],
            &[
                (7, backend(2, 5, 12, BACKEND_ACTIVE)),
                (9, backend(2, 5, 11, BACKEND_ACTIVE)),
            ],
        );
        let e = a.export(&flow(), 4, owner(1, 1), FLOW_FIN).unwrap();
        let (key, value) = b.import(&e, 77).unwrap();
        assert_eq!(key, flow());
        assert_eq!(value.backend_id, 7, "B's id of .12");
        assert_eq!(value.owner, owner(2, 5));
        assert_eq!(value.seen, 77 | FLOW_FIN);
        // A stale flow (its id's owner changed) is not exported.
        assert!(a.export(&flow(), 4, owner(1, 2), 0).is_none());
    }

    #[test]
    fn unknown_services_and_backends_are_not_imported_and_active_ids_win() {
        let a = Table::new(&[svc(1)], &[(3, backend(1, 1, 11, BACKEND_ACTIVE))]);
        let e = a.export(&flow(), 3, owner(1, 1), 0).unwrap();
        // B has the service but not that backend.
        let b = Table::new(&[svc(1)], &[(3, backend(1, 1, 12, BACKEND_ACTIVE))]);
        assert!(b.import(&e, 0).is_none());
        // B lacks the service.
        let b = Table::new(&[], &[(3, backend(1, 1, 11, BACKEND_ACTIVE))]);
        assert!(b.import(&e, 0).is_none());
        // Two ids for one address (an old one down): the active one is used.
        let b = Table::new(
            &[svc(1)],
            &[
                (5, backend(1, 1, 11, BACKEND_DOWN)),
                (6, backend(1, 2, 11, BACKEND_ACTIVE)),
                (8, backend(1, 3, 11, BACKEND_DOWN)),
            ],
        );
        assert_eq!(b.import(&e, 0).unwrap().1.backend_id, 6);
    }

    fn nat_svc(id: u32) -> (ServiceKey, ServiceInfo) {
        let (k, mut i) = svc(id);
        i.flags = SVC_NAT;
        (k, i)
    }

    fn nat_backend(service: u32, gen: u16, last: u8, mode: u8) -> Backend {
        Backend {
            port: 8080u16.to_be(),
            fwd_mode: mode,
            ..backend(service, gen, last, BACKEND_ACTIVE)
        }
    }

    /// Node A's connection to .12:8080 as its program writes it (`nat::open`): full NAT from
    /// 10.0.0.200:50000, the backend has answered and the client sent a FIN.
    fn a_conn(full: bool) -> (NatFwd, NatRev) {
        let fwd = NatFwd {
            backend_addr: v4([10, 0, 1, 12]),
            backend_id: 4,
            owner: owner(1, 1),
            fw_gen: 3,
            seen: 1000 | FLOW_FIN,
            backend_port: 8080u16.to_be(),
            snat_port: if full { 50000u16.to_be() } else { 0 },
            ifindex: 42,
            snat_addr: if full { v4([10, 0, 0, 200]) } else { [0; 4] },
            next_mac: [2, 0, 0, 0, 0, 0x12],
            src_mac: [2, 0, 0, 0, 0, 0xaa],
            flags: if full { NAT_FULL } else { 0 },
        };
        let rev = NatRev {
            vip: v4([10, 0, 0, 100]),
            client_mac: [2, 0, 0, 0, 0, 0xc1],
            vport: 80u16.to_be(),
            ifindex: 42,
            seen: 990 | NAT_REPLIED,
            client: if full { flow().src } else { [0; 4] },
            cport: if full { flow().sport } else { 0 },
            _pad: 0,
            flags: if full { NAT_FULL } else { 0 },
        };
        (fwd, rev)
    }

    #[test]
    fn a_nat_connection_moves_between_nodes_with_its_translation_and_state() {
        for (full, mode) in [(false, FWD_NAT), (true, FWD_FULLNAT)] {
            let a = Table::new(
                &[nat_svc(1)],
                &[
                    (3, nat_backend(1, 1, 11, mode)),
                    (4, nat_backend(1, 1, 12, mode)),
                ],
            );
            let b = Table::new(
                &[nat_svc(2)],
                &[
                    (7, nat_backend(2, 5, 12, mode)),
                    (9, nat_backend(2, 5, 11, mode)),
                ],
            );
            assert!(a.is_nat(&flow()) && b.is_nat(&flow()));
            let (fwd, rev) = a_conn(full);
            // A's clock at 1005: the client's last packet 5 units ago, the backend's 15.
            let e = a.export_nat(&flow(), &fwd, &rev, 1005).unwrap();
            assert_eq!(e.idle, 5);
            // B's clock is another: its entries age from 5 units before its now.
            let got = b.import_nat(&e, 82).unwrap();
            assert_eq!(got.full(), full);
            assert_eq!(got.key, flow());
            // B's id and owner of .12, the same translation, A's state bits, B's clock; the
            // node's own views (interfaces, next hop) left for B to fill in.
            let want_fwd = NatFwd {
                backend_id: 7,
                owner: owner(2, 5),
                fw_gen: 0,
                seen: 77 | FLOW_FIN,
                ifindex: 0,
                next_mac: [0; 6],
                src_mac: [0; 6],
                ..fwd
            };
            assert_eq!(got.fwd, want_fwd);
            assert_eq!(
                got.rev,
                NatRev {
                    seen: 77 | NAT_REPLIED,
                    ifindex: 0,
                    ..rev
                }
            );
            // The reply key the program looks replies up by: to the client under NAT, to the
            // SNAT address and port under full NAT.
            assert_eq!(got.rkey, nat_reply_key(&flow(), &fwd));
            assert_eq!(
                (got.rkey.dst, got.rkey.dport),
                if full {
                    (v4([10, 0, 0, 200]), 50000u16.to_be())
                } else {
                    (flow().src, flow().sport)
                }
            );
            assert_eq!(got.rkey.src, v4([10, 0, 1, 12]));
            assert_eq!(got.rkey.sport, 8080u16.to_be());
            // A stale connection (its id reused by another backend) is not exported.
            let stale = NatFwd {
                owner: owner(1, 2),
                ..fwd
            };
            assert!(a.export_nat(&flow(), &stale, &rev, 1005).is_none());
        }
    }

    #[test]
    fn a_nat_connection_is_not_imported_into_another_kind_of_service_or_backend() {
        let a = Table::new(&[nat_svc(1)], &[(4, nat_backend(1, 1, 12, FWD_FULLNAT))]);
        let (fwd, rev) = a_conn(true);
        let e = a.export_nat(&flow(), &fwd, &rev, 1000).unwrap();
        // B serves the VIP by DSR: no NAT entry to write.
        let b = Table::new(&[svc(1)], &[(4, nat_backend(1, 1, 12, FWD_FULLNAT))]);
        assert!(!b.is_nat(&flow()));
        assert!(b.import_nat(&e, 0).is_none());
        // B's backend forwards by plain NAT: a full-NAT entry would not match its rewrite.
        let b = Table::new(&[nat_svc(1)], &[(4, nat_backend(1, 1, 12, FWD_NAT))]);
        assert!(b.import_nat(&e, 0).is_none());
        // The same backend on another port is another backend.
        let mut other = nat_backend(1, 1, 12, FWD_FULLNAT);
        other.port = 9090u16.to_be();
        let b = Table::new(&[nat_svc(1)], &[(4, other)]);
        assert!(b.import_nat(&e, 0).is_none());
    }

    #[test]
    fn only_connections_with_recent_packets_are_re_announced() {
        let a = Table::new(&[nat_svc(1)], &[(4, nat_backend(1, 1, 12, FWD_NAT))]);
        let (fwd, rev) = a_conn(false);
        let mut quiet = flow();
        quiet.sport = 40001u16.to_be();
        let mut answered = flow();
        answered.sport = 40002u16.to_be();
        let conns = [
            // The client's last packet 3 units before 1003, the backend's 13.
            (flow(), fwd, rev),
            // Nothing either way for 30 units.
            (
                quiet,
                NatFwd { seen: 973, ..fwd },
                NatRev {
                    seen: 973 | NAT_REPLIED,
                    ..rev
                },
            ),
            // The client quiet, the backend sent 1 unit ago (a download).
            (
                answered,
                NatFwd { seen: 973, ..fwd },
                NatRev {
                    seen: 1002 | NAT_REPLIED,
                    ..rev
                },
            ),
        ];
        let sent = a.export_active(&conns, 1003, 10);
        let ports: Vec<_> = sent.iter().map(|e| e.sport).collect();
        assert_eq!(
            ports,
            [flow().sport.to_ne_bytes(), answered.sport.to_ne_bytes()]
        );
        assert_eq!(sent[1].idle, 1);
        assert_eq!(a.export_active(&conns, 1003, 40).len(), 3);
    }

    #[test]
    fn a_re_announcement_never_ages_or_reopens_the_local_copy() {
        let a = Table::new(&[nat_svc(1)], &[(4, nat_backend(1, 1, 12, FWD_NAT))]);
        let (fwd, rev) = a_conn(false);
        // The peer's copy: last packet 20 units before 1020, no FIN seen.
        let peer = NatFwd { seen: 1000, ..fwd };
        let e = a
            .export_nat(&flow(), &peer, &NatRev { seen: 1000, ..rev }, 1020)
            .unwrap();
        let mut got = a.import_nat(&e, 1020).unwrap();
        // Here: the client's last packet at 1015 with a FIN, the backend's at 990 but replied;
        // this node's firewall generation 9.
        let local_fwd = NatFwd {
            seen: 1015 | FLOW_FIN,
            fw_gen: 9,
            ..fwd
        };
        let local_rev = NatRev {
            seen: 990 | NAT_REPLIED,
            ..rev
        };
        got.merge(&local_fwd, &local_rev, 1020);
        assert_eq!(
            got.fwd.seen,
            1015 | FLOW_FIN,
            "the newer client side, its FIN kept"
        );
        assert_eq!(
            got.rev.seen,
            1000 | NAT_REPLIED,
            "the peer's newer backend side"
        );
        assert_eq!(got.fwd.fw_gen, 9);
        // Across the clock's wrap: 5 units before 2 is newer than 10 before.
        let mut w = a.import_nat(&e, 2).unwrap();
        w.fwd.seen = FLOW_TIME_MASK - 2;
        w.merge(
            &NatFwd {
                seen: FLOW_TIME_MASK - 7,
                ..fwd
            },
            &rev,
            2,
        );
        assert_eq!(w.fwd.seen, FLOW_TIME_MASK - 2);
    }
}
