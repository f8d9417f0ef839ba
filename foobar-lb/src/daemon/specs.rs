//! What the data plane should hold for a configuration: pure functions of config, backend
//! status and MACs, kept apart from the daemon so tests can provision maps the same way.

use std::{collections::HashMap, net::IpAddr};

use foobar_lb_common::{ServiceKey, ADMIN_DRAINED, ADMIN_HEALTH_DOWN};

use crate::{
    config::{BackendConfig, Config, ForwardingKind, ServiceConfig},
    desired::{BackendSpec, Forwarding, Mac, OnLink, ServiceSpec, Snat, NEXT_HOP_BY_FIB},
    pool::{self, Member},
};

pub(super) fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey::new(s.vip, s.port, s.protocol.number())
}

/// The data plane's desired content for `config` with every backend healthy (no health
/// checks), given the backend MACs known so far. Used by tests that provision maps directly.
pub fn desired_state(config: &Config, macs: &HashMap<IpAddr, Mac>) -> Vec<ServiceSpec> {
    // Test runs have one interface: NAT backends are on the receiving one (ifindex 0).
    let macs = macs
        .iter()
        .map(|(a, &mac)| (*a, OnLink { mac, ifindex: 0 }))
        .collect();
    service_specs(config, &macs, |_, _| (true, false))
}

/// Desired content: per service, the pool decision over its backends, where `status` says
/// (healthy, drained) for each.
pub(super) fn service_specs(
    config: &Config,
    macs: &HashMap<IpAddr, OnLink>,
    status: impl Fn(&ServiceConfig, &BackendConfig) -> (bool, bool),
) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| {
            let status: Vec<(bool, bool)> = s.backends.iter().map(|b| status(s, b)).collect();
            let members: Vec<Member> = s
                .backends
                .iter()
                .zip(&status)
                .map(|(b, &(healthy, drained))| Member {
                    role: b.role,
                    weight: b.weight,
                    healthy,
                    drained,
                })
                .collect();
            ServiceSpec {
                name: s.name.clone(),
                key: service_key(s),
                rate_limit: s.rate_limit(),
                scheduler: s.scheduler(),
                nat: s.forwarding != ForwardingKind::Dsr,
                snat: (s.forwarding == ForwardingKind::Fullnat).then(|| Snat {
                    addrs: s
                        .snat
                        .iter()
                        .filter(|a| a.is_ipv4() == s.vip.is_ipv4())
                        .copied()
                        .collect(),
                    ports: (s.snat_ports().lo, s.snat_ports().hi),
                }),
                backends: s
                    .backends
                    .iter()
                    .zip(pool::states(&members, s.failover, s.health.on_marked_down))
                    .zip(&status)
                    .map(|((b, state), &(healthy, drained))| {
                        let forwarding = match s.forwarding {
                            ForwardingKind::Dsr => Forwarding::Dsr,
                            ForwardingKind::Nat => Forwarding::Nat {
                                port: b.port.unwrap_or(s.port),
                            },
                            ForwardingKind::Fullnat => Forwarding::FullNat {
                                port: b.port.unwrap_or(s.port),
                            },
                        };
                        let on_link = macs.get(&b.address);
                        BackendSpec {
                            addr: b.address,
                            // A constant where the data plane finds the next hop itself, so
                            // the entry never changes with the neighbour table.
                            mac: if forwarding.needs_mac() {
                                on_link.map(|l| l.mac)
                            } else {
                                Some(NEXT_HOP_BY_FIB)
                            },
                            // Only NAT sends out of the backend's interface (DSR: the
                            // receiving one; full NAT: the FIB's).
                            ifindex: match (forwarding, on_link) {
                                (Forwarding::Nat { .. }, Some(l)) => l.ifindex,
                                _ => 0,
                            },
                            state,
                            weight: b.weight,
                            forwarding,
                            admin: if drained { ADMIN_DRAINED } else { 0 }
                                | if healthy { 0 } else { ADMIN_HEALTH_DOWN },
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_nat_backends_need_no_resolved_mac_and_nat_backends_do() {
        let config = Config::parse(
            r#"
interfaces = ["eth0"]

[[service]]
name = "full"
vip = "10.0.0.100"
port = 80
forwarding = "fullnat"
snat = ["10.0.0.250"]

[[service.backend]]
address = "10.9.0.11"
port = 8080

[[service]]
name = "nat"
vip = "10.0.0.100"
port = 81
forwarding = "nat"

[[service.backend]]
address = "10.0.0.12"
"#,
        )
        .unwrap();
        let specs = desired_state(&config, &HashMap::new());
        // Routed (no neighbour entry, ever): written with the FIB marker, so it is served.
        assert_eq!(specs[0].backends[0].mac, Some(NEXT_HOP_BY_FIB));
        // On-link NAT: waits for its MAC.
        assert_eq!(specs[1].backends[0].mac, None);
        // A MAC learned later (the address is on-link after all) changes nothing for full NAT,
        // so its entry keeps its id.
        let mac = [2, 0, 0, 0, 0, 9];
        let macs = HashMap::from([("10.9.0.11".parse().unwrap(), mac)]);
        assert_eq!(
            desired_state(&config, &macs)[0].backends[0].mac,
            Some(NEXT_HOP_BY_FIB)
        );
    }
}
