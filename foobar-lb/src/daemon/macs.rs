//! Backend MAC addresses: resolved at start-up, then followed through the kernel's neighbour
//! events (a MAC change or a FAILED entry is seen at once), with a full read of the table on
//! the fallback timer; learned when a check passes. A backend without a MAC cannot be written,
//! but for full-NAT backends, which need none (the data plane's FIB lookup finds their next
//! hop, see `desired::Forwarding::needs_mac`): they are not resolved at all.
//! Link events about configured interfaces go to `interfaces::watch_interfaces`.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::Result;

use super::Daemon;
use crate::{
    config::{Config, ForwardingKind},
    desired::OnLink,
    neighbor,
};

/// How long start-up waits for backend MACs before going on without the missing ones.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves every backend's MAC, waiting at most `RESOLVE_TIMEOUT`.
pub(super) async fn resolve_all(config: &Config) -> Result<HashMap<IpAddr, OnLink>> {
    let addrs = backend_addrs(config);
    log::info!("resolving {} backend MAC address(es)", addrs.len());
    let ifaces = config.interfaces.clone();
    // Resolution polls with blocking sleeps; keep it off the runtime's threads.
    let macs = tokio::task::spawn_blocking(move || {
        neighbor::resolve_all(&addrs, &ifaces, RESOLVE_TIMEOUT)
    })
    .await??;
    Ok(macs)
}

/// What the netlink watcher passes on for `config`: its backends' addresses and its interfaces.
pub(super) fn netlink_filter(config: &Config) -> neighbor::Filter {
    neighbor::Filter {
        addrs: backend_addrs(config).into_iter().collect(),
        interfaces: config.interfaces.clone(),
    }
}

impl Daemon {
    /// Applies what the kernel's events said since the last call: interfaces gone, back or
    /// changed go through `watch_interfaces`; a backend's new MAC through the reconciler.
    pub(super) fn on_netlink(&mut self) {
        let batch = self.netlink.take();
        if batch.is_empty() {
            return;
        }
        if batch.resync {
            log::warn!(
                "the kernel dropped neighbour/link events (receive buffer full): reading the \
                 neighbour table and the interfaces again"
            );
        }
        for name in &batch.deleted {
            self.links_up.remove(name);
            log::info!(event = "link", interface = name.as_str(), state = "deleted"; "{name} was deleted (link event)");
        }
        for link in batch.links.values().filter(|l| !l.removed) {
            // Only changes: our own attach, for one, sends a message about an unchanged link.
            if self.links_up.insert(link.name.clone(), link.up) != Some(link.up) {
                let state = if link.up { "up" } else { "down" };
                log::info!(event = "link", interface = link.name.as_str(), state = state; "{} is {state} (link event)", link.name);
            }
        }
        if batch.resync || !batch.links.is_empty() {
            self.watch_interfaces();
        }
        if batch.resync {
            if let Err(e) = self.refresh_neighbors() {
                log::warn!("neighbour refresh failed: {e:#}");
            }
        }
        let ifindexes: HashSet<u32> = self.attached.values().flatten().map(|(i, _)| *i).collect();
        let mut changed = false;
        for n in batch.neighbours.values() {
            if !ifindexes.contains(&n.ifindex) {
                continue;
            }
            if let Some(mac) = n.mac {
                self.neighbour_failed.remove(&n.addr);
                let at = OnLink {
                    mac,
                    ifindex: n.ifindex,
                };
                let known = self.macs.insert(n.addr, at);
                if known != Some(at) {
                    // Only a new MAC is news to the operator (an interface first learned
                    // after adoption, which knows none, is not).
                    if known.map(|k| k.mac) != Some(mac) {
                        let m = neighbor::format_mac(&mac);
                        log::info!(event = "neighbour", backend:% = n.addr, mac = m.as_str(); "backend {} is at {m} (neighbour event)", n.addr);
                    }
                    changed = true;
                }
            } else if n.state == neighbor::Nud::Failed && self.neighbour_failed.insert(n.addr) {
                // The entry says nothing about the MAC: keep the last one; the health check
                // decides whether the backend is gone.
                log::warn!(
                    event = "neighbour", backend:% = n.addr, state = "failed";
                    "backend {}: no ARP/NDP answer (neighbour entry FAILED); its last known MAC \
                     stays until its health check or a new answer says otherwise",
                    n.addr
                );
            }
        }
        if changed {
            if let Err(e) = self.apply() {
                log::error!(event = "map_write_failed", reason:% = format!("{e:#}"); "applying a MAC change failed: {e:#}");
            }
        }
    }

    /// Asks the kernel to resolve backends whose MAC is still unknown (no check has made it
    /// learn them); answers arrive as neighbour events.
    pub(super) fn poke_unresolved(&self) {
        let missing: Vec<IpAddr> = backend_addrs(&self.config)
            .into_iter()
            .filter(|a| !self.macs.contains_key(a))
            .collect();
        neighbor::poke_all(&missing);
    }

    /// Reads the whole neighbour table (the fallback for lost events): picks up new and
    /// changed MACs.
    pub(super) fn refresh_neighbors(&mut self) -> Result<()> {
        let table = neighbor::table(&self.config.interfaces)?;
        let addrs = backend_addrs(&self.config);
        let mut changed = false;
        for addr in addrs {
            match table.get(&addr) {
                Some(at) if self.macs.get(&addr) != Some(at) => {
                    if self.macs.get(&addr).map(|k| k.mac) != Some(at.mac) {
                        log::info!("backend {addr} is at {}", neighbor::format_mac(&at.mac));
                    }
                    self.macs.insert(addr, *at);
                    changed = true;
                }
                Some(_) => {}
                None => {} // unresolved (poked on the tick), or expired: keep the last known MAC
            }
        }
        if changed {
            self.apply()?;
        }
        Ok(())
    }

    /// Looks up `addr`'s MAC if still unknown; called when its check passes.
    pub(super) fn learn_mac(&mut self, addr: IpAddr) {
        if self.macs.contains_key(&addr) {
            return;
        }
        // The check's own connection made the kernel resolve the MAC.
        if let Ok(Some(at)) = neighbor::lookup(addr, &self.config.interfaces) {
            self.macs.insert(addr, at);
        }
    }
}

/// The backends whose MAC the data plane needs: not those of full-NAT services, whose next hop
/// the program finds by the kernel's FIB (they may sit behind a router, where no ARP/NDP
/// answer ever comes, and waiting for one would only delay start-up and fill the log). An
/// address that also backs another service is still resolved for that one.
fn backend_addrs(config: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = config
        .services
        .iter()
        .filter(|s| s.forwarding != ForwardingKind::Fullnat)
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    v.sort();
    v.dedup();
    v
}
