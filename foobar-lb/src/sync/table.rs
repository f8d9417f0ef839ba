//! Translation between a node's flow entries (local backend ids) and the node-independent
//! [`Entry`] (the backend's address and port): ids are given per node and differ between
//! nodes, addresses do not. Built from the data plane's own service and backend maps.

use std::collections::HashMap;

use foobar_lb_common::{
    owner_service, Addr, Backend, FlowKey, FlowValue, ServiceInfo, ServiceKey, BACKEND_ACTIVE,
    BACKEND_UNUSED, FLOW_FIN, FLOW_RST,
};

use super::wire::Entry;

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

#[derive(Debug, Default)]
pub struct Table {
    services: HashMap<ServiceKey, u32>,
    /// Backend id -> its entry, for ids in use.
    by_id: HashMap<u32, Backend>,
    /// Name -> (id, owner word); an active id wins over others of the same name.
    by_name: HashMap<BackendName, (u32, u32)>,
}

impl Table {
    pub fn new(services: &[(ServiceKey, ServiceInfo)], backends: &[(u32, Backend)]) -> Table {
        let mut t = Table {
            services: services.iter().map(|(k, i)| (*k, i.id)).collect(),
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
        let service_id = *self.services.get(&service)?;
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
}
