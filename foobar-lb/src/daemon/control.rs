//! Control-API requests: every runtime change is validated like a config file and refused
//! whole on error.

use std::{collections::HashSet, net::IpAddr};

use anyhow::{bail, Result};

use super::{BackendKey, Daemon};
use crate::{
    api::{self, Request, Response},
    config::{BackendConfig, Config, ServiceConfig},
    firewall,
    health_replies::{self, ReplyView},
};

impl Daemon {
    pub(super) fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::Stats => {
                return match self.stats() {
                    Ok(s) => Response {
                        ok: true,
                        stats: Some(s),
                        ..Default::default()
                    },
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            // Asked every second by keepalived: answered without a log line.
            Request::Ready => {
                return match self.readiness() {
                    Ok(msg) => Response::message(msg),
                    Err(why) => Response::error(why),
                }
            }
            Request::Flows {
                service,
                backend,
                limit,
            } => {
                return match self.flows(service.as_deref(), backend, limit.unwrap_or(100)) {
                    Ok(f) => Response {
                        ok: true,
                        flows: Some(f),
                        ..Default::default()
                    },
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::NodeDrain | Request::NodeUndrain => {
                return match self.node_drain(matches!(req, Request::NodeDrain)) {
                    Ok(msg) => Response::message(msg),
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::ConfigDump => {
                return match self.config.to_toml() {
                    Ok(t) => Response {
                        ok: true,
                        message: Some(t),
                        ..Default::default()
                    },
                    Err(e) => Response::error(format!("{:#}", anyhow::Error::new(e))),
                }
            }
            Request::BackendAdd {
                service,
                address,
                role,
                weight,
                port,
            } => self.change(|c| {
                let svc = find_service(c, &service)?;
                svc.backends.push(BackendConfig {
                    address,
                    port,
                    role: role.unwrap_or_default(),
                    weight: weight.unwrap_or(1),
                    drained: false,
                });
                Ok(format!("added backend {address} to {service}"))
            }),
            Request::BackendRemove { service, address } => self.change(|c| {
                let svc = find_service(c, &service)?;
                let before = svc.backends.len();
                svc.backends.retain(|b| b.address != address);
                if svc.backends.len() == before {
                    bail!(unknown_backend(&service, address));
                }
                Ok(format!("removed backend {address} from {service}"))
            }),
            Request::BackendSet {
                service,
                address,
                weight,
                role,
            } => self.change(|c| {
                if weight.is_none() && role.is_none() {
                    bail!("nothing to change: give --weight and/or --role");
                }
                let svc = find_service(c, &service)?;
                let b = svc
                    .backends
                    .iter_mut()
                    .find(|b| b.address == address)
                    .ok_or_else(|| anyhow::anyhow!(unknown_backend(&service, address)))?;
                // Validation of the whole config follows; a refused value changes nothing.
                if let Some(w) = weight {
                    b.weight = w;
                }
                if let Some(r) = role {
                    b.role = r;
                }
                Ok(format!(
                    "backend {address} of {service}: weight {}, role {:?} (its connections stay)",
                    b.weight, b.role
                ))
            }),
            Request::BackendDrain { service, address } => self.set_drained(&service, address, true),
            Request::BackendUndrain { service, address } => {
                self.set_drained(&service, address, false)
            }
            Request::ServiceAdd { service } => match api::parse_service(&service).and_then(|svc| {
                // An external check's program must exist here, as at load and reload.
                svc.health
                    .check_host(&format!("service {:?}", svc.name))
                    .map(|()| svc)
                    .map_err(|e| e.to_string())
            }) {
                Ok(svc) => self.change(|c| {
                    let msg = format!("added service {}", svc.name);
                    c.services.push(svc);
                    Ok(msg)
                }),
                Err(e) => Err(anyhow::anyhow!(e)),
            },
            Request::FwAdd { rule, position } => self.change(|c| {
                let rules = &mut c.firewall.rules;
                let at = position.unwrap_or(rules.len() + 1);
                if at == 0 || at > rules.len() + 1 {
                    bail!("position {at} is outside 1..={}", rules.len() + 1);
                }
                let msg = format!("firewall rule {at}: {rule}");
                rules.insert(at - 1, rule);
                Ok(msg)
            }),
            Request::FwRemove { index } => self.change(|c| {
                let rules = &mut c.firewall.rules;
                if index == 0 || index > rules.len() {
                    bail!(
                        "no firewall rule {index}: `foobar-lb fw list` shows {} rule(s)",
                        rules.len()
                    );
                }
                let r = rules.remove(index - 1);
                Ok(format!("removed firewall rule {index}: {r}"))
            }),
            // The list arrives in the request: the daemon opens no path a client names.
            Request::FwLoad { name, text } => firewall::parse_blocklist(&text)
                .map_err(|e| {
                    anyhow::Error::new(firewall::FirewallError::Blocklist {
                        path: name.clone().into(),
                        source: Box::new(e),
                    })
                })
                .and_then(|nets| {
                    self.load_blocklist(&nets)?;
                    // The running list is now this one, whatever the files say: kept inline
                    // so `config-dump` writes exactly what is enforced.
                    self.config.firewall.blocklists.clear();
                    self.config.firewall.block = nets.clone();
                    Ok(format!("block list {name}: {} prefixes live", nets.len()))
                }),
            Request::Reload => self.reload(),
            Request::ServiceRemove { name } => self.change(|c| {
                let before = c.services.len();
                c.services.retain(|s| s.name != name);
                if c.services.len() == before {
                    bail!("unknown service {name:?}: `foobar-lb service list` shows them");
                }
                Ok(format!("removed service {name}"))
            }),
        };
        match result {
            Ok(msg) => {
                log::info!(event = "api", change = msg.as_str(); "control: {msg}");
                Response::message(msg)
            }
            Err(e) => {
                let reason = format!("{e:#}");
                log::info!(event = "api_refused", reason = reason.as_str(); "control: refused: {reason}");
                Response::error(reason)
            }
        }
    }

    /// Applies a configuration change: validated like a config file, refused whole on error.
    pub(super) fn change(
        &mut self,
        f: impl FnOnce(&mut Config) -> Result<String>,
    ) -> Result<String> {
        let mut next = self.config.clone();
        let mut msg = f(&mut next)?;
        next.validate()?;
        let rules_changed = next.firewall.rules != self.config.firewall.rules;
        let view = ReplyView::of_host();
        let known = health_replies::conflicts(&self.config, &view);
        let previous = std::mem::replace(&mut self.config, next);
        // The running configuration is this one only if the data plane took it: a change whose
        // writes fail is refused and the previous configuration stays (writes already made for
        // it are planned again from the reconciler's unchanged view on the next apply).
        if let Err(e) = self.apply().and_then(|()| self.apply_firewall()) {
            self.config = previous;
            let _ = self.apply_firewall();
            return Err(e.context("the data plane refused the change; nothing changed"));
        }
        self.readiness_gate.set_drained(self.config.drained);
        if rules_changed {
            log::info!(
                event = "firewall", rules = self.config.firewall.rules.len() as u64;
                "firewall rules now: {}",
                self.config.firewall.rules.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            );
            // Counters are per position: a changed list starts them afresh rather than letting
            // a rule inherit another's numbers.
            self.dataplane.reset_rule_counters()?;
        }
        self.netlink
            .set_filter(super::macs::netlink_filter(&self.config));
        // Forget runtime state (and stop checks) of backends that are gone.
        let live: HashSet<BackendKey> = self
            .config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.address)))
            .collect();
        self.backends.retain(|k, _| live.contains(k));
        // Checks run with the settings they were started with: restart those of services
        // whose health settings changed (their health state stays).
        for svc in &self.config.services {
            let before = previous.services.iter().find(|p| p.name == svc.name);
            if before.is_some_and(|p| p.health == svc.health) {
                continue;
            }
            for b in &svc.backends {
                let key = (svc.name.clone(), b.address);
                if let Some(c) = self.backends.get_mut(&key).and_then(|rt| rt.checker.take()) {
                    c.abort();
                }
            }
        }
        self.start_all_checks();
        let _ = self.refresh_neighbors();
        // A change that makes a rule drop check replies is accepted (the operator may mean
        // it) but said in the answer, not only in the log.
        for w in health_replies::conflicts(&self.config, &view) {
            if !known.contains(&w) {
                log::warn!("{w}");
                msg.push_str(&format!("\nwarning: {w}"));
            }
        }
        Ok(msg)
    }

    /// Drain is part of the running configuration, so `config-dump` keeps it.
    fn set_drained(&mut self, service: &str, address: IpAddr, drained: bool) -> Result<String> {
        self.change(|c| {
            let svc = find_service(c, service)?;
            let b = svc
                .backends
                .iter_mut()
                .find(|b| b.address == address)
                .ok_or_else(|| anyhow::anyhow!(unknown_backend(service, address)))?;
            b.drained = drained;
            Ok(format!(
                "{} backend {address} of {service}",
                if drained { "drained" } else { "undrained" }
            ))
        })
    }
}

fn find_service<'a>(c: &'a mut Config, name: &str) -> Result<&'a mut ServiceConfig> {
    c.services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!("unknown service {name:?}: `foobar-lb service list` shows them")
        })
}

fn unknown_backend(service: &str, address: IpAddr) -> String {
    format!("service {service:?} has no backend {address}: `foobar-lb backend list` shows them")
}

impl Daemon {
    /// Tracked NAT connections matching the filters, sorted by client, at most `limit`.
    fn flows(
        &self,
        service: Option<&str>,
        backend: Option<IpAddr>,
        limit: usize,
    ) -> Result<api::FlowsAnswer> {
        if let Some(name) = service {
            if !self.config.services.iter().any(|s| s.name == name) {
                bail!("unknown service {name:?}: `foobar-lb service list` shows them");
            }
        }
        let names: std::collections::HashMap<u32, &str> = self
            .reconciler
            .services()
            .iter()
            .flat_map(|(name, w)| w.backends.values().map(move |b| (b.id, name.as_str())))
            .collect();
        let mut rows: Vec<api::FlowRow> = self
            .dataplane
            .nat_connections()?
            .into_iter()
            .map(|conn| api::FlowRow {
                service: names.get(&conn.backend_id).unwrap_or(&"?").to_string(),
                conn,
            })
            .filter(|r| service.is_none_or(|s| r.service == s))
            .filter(|r| backend.is_none_or(|b| r.conn.backend.0 == b))
            .collect();
        rows.sort_by_key(|r| (r.conn.client, r.conn.vip));
        let total = rows.len();
        rows.truncate(limit);
        Ok(api::FlowsAnswer { total, rows })
    }
}
