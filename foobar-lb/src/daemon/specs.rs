//! What the data plane should hold for a configuration: pure functions of config, backend
//! status and MACs, kept apart from the daemon so tests can provision maps the same way.

use std::{collections::HashMap, net::IpAddr};

use foobar_lb_common::{ServiceKey, ADMIN_DRAINED, ADMIN_HEALTH_DOWN};

use crate::{
    config::{BackendConfig, Config, ForwardingKind, ServiceConfig},
    desired::{BackendSpec, Forwarding, Mac, ServiceSpec, Snat},
    pool::{self, Member},
};

pub(super) fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey::new(s.vip, s.port, s.protocol.number())
}

/// The data plane's desired content for `config` with every backend healthy (no health
/// checks), given the backend MACs known so far. Used by tests that provision maps directly.
pub fn desired_state(config: &Config, macs: &HashMap<IpAddr, Mac>) -> Vec<ServiceSpec> {
    service_specs(config, macs, |_, _| (true, false))
}

/// Desired content: per service, the pool decision over its backends, where `status` says
/// (healthy, drained) for each.
pub(super) fn service_specs(
    config: &Config,
    macs: &HashMap<IpAddr, Mac>,
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
                    .map(|((b, state), &(healthy, drained))| BackendSpec {
                        addr: b.address,
                        mac: macs.get(&b.address).copied(),
                        state,
                        weight: b.weight,
                        forwarding: match s.forwarding {
                            ForwardingKind::Dsr => Forwarding::Dsr,
                            ForwardingKind::Nat => Forwarding::Nat {
                                port: b.port.unwrap_or(s.port),
                            },
                            ForwardingKind::Fullnat => Forwarding::FullNat {
                                port: b.port.unwrap_or(s.port),
                            },
                        },
                        admin: if drained { ADMIN_DRAINED } else { 0 }
                            | if healthy { 0 } else { ADMIN_HEALTH_DOWN },
                    })
                    .collect(),
            }
        })
        .collect()
}
