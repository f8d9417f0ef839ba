//! Reloading the config file (SIGHUP, `foobar-lb reload`): the file becomes the running
//! configuration, applied as a difference through the same path as API changes, so backends
//! and services that did not change keep their ids and flows. A file that does not validate,
//! or changes what only a restart can change, is refused whole and nothing changes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

use super::Daemon;
use crate::config::{BackendConfig, Config, ServiceConfig};

impl Daemon {
    /// Reads the config file again and applies what differs; the answer lists the changes.
    pub(super) fn reload(&mut self) -> Result<String> {
        let path = self.config_path.clone();
        let mut next = Config::load(&path)
            .and_then(|c| c.check_host().map(|()| c))
            .with_context(|| format!("reload of {} refused, nothing changed", path.display()))?;
        if let Some(field) = restart_only_change(&self.config, &next) {
            bail!(
                "reload of {} refused, nothing changed: `{field}` takes effect only at start; \
                 restart the daemon to change it",
                path.display()
            );
        }
        let blocklist = next.blocklist()?;
        // As for backends: the file can drain the node, not undo a drain made at run time
        // (`node undrain` does).
        next.drained |= self.config.drained;
        let mut changes = describe_changes(&self.config, &next);
        if blocklist != self.blocklist {
            changes.push(format!(
                "block list: {} -> {} prefixes",
                self.blocklist.len(),
                blocklist.len()
            ));
        }
        if changes.is_empty() {
            return Ok(format!("reloaded {}: no changes", path.display()));
        }
        let previous = self.config.clone();
        let old_ifaces = previous.interfaces.clone();
        self.change(|c| {
            *c = next;
            Ok(String::new())
        })?;
        if blocklist != self.blocklist {
            if let Err(e) = self.load_blocklist(&blocklist) {
                // Back to the configuration that matches the list still enforced.
                let _ = self.change(|c| {
                    *c = previous;
                    Ok(String::new())
                });
                return Err(e.context(format!(
                    "reload of {} refused, nothing changed",
                    path.display()
                )));
            }
        }
        self.follow_interfaces(&old_ifaces);
        Ok(format!(
            "reloaded {}: {}",
            path.display(),
            changes.join("; ")
        ))
    }

    /// Attaches to interfaces the configuration gained and detaches from those it lost. An
    /// attach that fails is retried by `watch_interfaces`.
    fn follow_interfaces(&mut self, old: &[String]) {
        if old.iter().any(|i| !self.config.interfaces.contains(i)) {
            self.detach_unconfigured();
            let keep = self.config.interfaces.clone();
            self.attached.retain(|i, _| keep.contains(i));
        }
        for iface in self.config.interfaces.clone() {
            if !old.contains(&iface) {
                if let Err(e) = self.attach_one(&iface) {
                    log::error!("cannot attach to {iface}: {e:#}; trying again shortly");
                    self.attached.insert(iface, None);
                }
            }
        }
        self.write_vlans();
        if let Err(e) = self.apply_firewall() {
            log::error!("writing VIP policies after a reload failed: {e:#}");
        }
    }
}

/// The first field that differs among those fixed for the daemon's life.
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    if old.xdp_mode != new.xdp_mode {
        return Some("xdp_mode");
    }
    if old.control_socket != new.control_socket {
        return Some("control_socket");
    }
    if old.pin_dir != new.pin_dir {
        return Some("pin_dir");
    }
    if old.metrics_address != new.metrics_address {
        return Some("metrics_address");
    }
    if old.flow_table_size != new.flow_table_size {
        return Some("flow_table_size");
    }
    if old.admin_token != new.admin_token {
        return Some("admin_token");
    }
    if old.nat_table_size != new.nat_table_size {
        return Some("nat_table_size");
    }
    // Read by the NAT sweeper thread, started once.
    if old.nat != new.nat {
        return Some("nat.timeouts");
    }
    // `drained` is the operator's runtime state (`node drain`); the interface needs a restart.
    if old.announce.as_ref().map(|a| &a.interface) != new.announce.as_ref().map(|a| &a.interface) {
        return Some("announce.interface");
    }
    // The sync listener, its peers and key are set up once, at start.
    if old.sync != new.sync {
        return Some("sync");
    }
    None
}

/// What changes between two configurations, one phrase per change (for the log and the
/// `reload` answer). The block list's content is compared by the caller.
fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if new.drained && !old.drained {
        out.push("node drained".to_string());
    }
    let (oi, ni): (BTreeSet<_>, BTreeSet<_>) = (
        old.interfaces.iter().collect(),
        new.interfaces.iter().collect(),
    );
    for i in ni.difference(&oi) {
        out.push(format!("interface {i} added"));
    }
    for i in oi.difference(&ni) {
        out.push(format!("interface {i} removed"));
    }
    let by_name = |c: &Config| -> BTreeMap<String, ServiceConfig> {
        c.services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let (os, ns) = (by_name(old), by_name(new));
    for (name, svc) in &ns {
        let Some(was) = os.get(name) else {
            out.push(format!(
                "service {name} added ({} backends)",
                svc.backends.len()
            ));
            continue;
        };
        let mut a = was.clone();
        let mut b = svc.clone();
        a.backends.clear();
        b.backends.clear();
        if toml_of(&a) != toml_of(&b) {
            out.push(format!("service {name} settings changed"));
        }
        describe_backends(name, &was.backends, &svc.backends, &mut out);
    }
    for name in os.keys().filter(|n| !ns.contains_key(*n)) {
        out.push(format!("service {name} removed"));
    }
    if old.firewall.rules != new.firewall.rules {
        out.push(format!(
            "firewall rules changed ({} -> {})",
            old.firewall.rules.len(),
            new.firewall.rules.len()
        ));
    }
    if old.firewall.vip_policy != new.firewall.vip_policy {
        out.push("VIP policy changed".into());
    }
    if old.vlans != new.vlans {
        out.push("VLANs changed".into());
    }
    out
}

fn describe_backends(
    service: &str,
    old: &[BackendConfig],
    new: &[BackendConfig],
    out: &mut Vec<String>,
) {
    for b in new {
        let Some(was) = old.iter().find(|o| o.address == b.address) else {
            out.push(format!("backend {} of {service} added", b.address));
            continue;
        };
        let mut what = Vec::new();
        if was.weight != b.weight {
            what.push(format!("weight {} -> {}", was.weight, b.weight));
        }
        if was.role != b.role {
            what.push(format!("role {:?} -> {:?}", was.role, b.role));
        }
        if was.drained != b.drained {
            what.push(if b.drained { "drained" } else { "undrained" }.to_string());
        }
        if toml_of(was) != toml_of(b) && what.is_empty() {
            what.push("settings changed".into());
        }
        if !what.is_empty() {
            out.push(format!(
                "backend {} of {service}: {}",
                b.address,
                what.join(", ")
            ));
        }
    }
    for b in old
        .iter()
        .filter(|o| !new.iter().any(|n| n.address == o.address))
    {
        out.push(format!("backend {} of {service} removed", b.address));
    }
}

fn toml_of<T: serde::Serialize>(v: &T) -> String {
    toml::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "interfaces = [\"eth0\"]\n\n[[service]]\nname = \"www\"\nvip = \"10.0.0.100\"\nport = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"\n\n[[service.backend]]\naddress = \"10.0.0.12\"\n";

    fn parse(t: &str) -> Config {
        Config::parse(t).unwrap()
    }

    #[test]
    fn names_each_change_and_nothing_else() {
        let old = parse(BASE);
        assert!(describe_changes(&old, &parse(BASE)).is_empty());
        let new = parse(
            &(BASE
                .replace(
                    "address = \"10.0.0.11\"",
                    "address = \"10.0.0.11\"\nweight = 3\ndrained = true",
                )
                .replace("address = \"10.0.0.12\"", "address = \"10.0.0.13\"")
                .replace("interfaces = [\"eth0\"]", "interfaces = [\"eth0\", \"eth1\"]")
                + "\n[[service]]\nname = \"dns\"\nvip = \"10.0.0.100\"\nport = 53\nprotocol = \"udp\"\n"),
        );
        assert_eq!(
            describe_changes(&old, &new),
            [
                "interface eth1 added",
                "service dns added (0 backends)",
                "backend 10.0.0.11 of www: weight 1 -> 3, drained",
                "backend 10.0.0.13 of www added",
                "backend 10.0.0.12 of www removed",
            ]
        );
        let fw = parse(
            &(BASE.to_string()
                + "\n[[firewall.rule]]\naction = \"drop\"\nport = \"22\"\nprotocol = \"tcp\"\n"),
        );
        assert_eq!(
            describe_changes(&old, &fw),
            ["firewall rules changed (0 -> 1)"]
        );
    }

    #[test]
    fn fields_fixed_for_the_daemons_life_are_named() {
        let old = parse(BASE);
        let new = parse(&BASE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nflow_table_size = 4096",
        ));
        assert_eq!(restart_only_change(&old, &new), Some("flow_table_size"));
        assert_eq!(restart_only_change(&old, &parse(BASE)), None);
    }
}
