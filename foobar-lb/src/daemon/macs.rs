//! Backend MAC addresses: resolved at start-up, re-read from the neighbour table on a timer,
//! and learned when a check passes. A backend without a MAC cannot be written.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::Result;

use super::Daemon;
use crate::{config::Config, desired::Mac, neighbor};

/// How long start-up waits for backend MACs before going on without the missing ones.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves every backend's MAC, waiting at most `RESOLVE_TIMEOUT`.
pub(super) async fn resolve_all(config: &Config) -> Result<HashMap<IpAddr, Mac>> {
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

impl Daemon {
    /// Picks up new and changed MACs; pokes backends still unresolved so the kernel asks.
    pub(super) fn refresh_neighbors(&mut self) -> Result<()> {
        let table = neighbor::table(&self.config.interfaces)?;
        let addrs = backend_addrs(&self.config);
        let mut changed = false;
        let mut missing = Vec::new();
        for addr in addrs {
            match table.get(&addr) {
                Some(mac) if self.macs.get(&addr) != Some(mac) => {
                    log::info!("backend {addr} is at {}", neighbor::format_mac(mac));
                    self.macs.insert(addr, *mac);
                    changed = true;
                }
                Some(_) => {}
                None if !self.macs.contains_key(&addr) => missing.push(addr),
                None => {} // entry expired: keep the last known MAC
            }
        }
        neighbor::poke_all(&missing);
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
        if let Ok(Some(mac)) = neighbor::lookup(addr, &self.config.interfaces) {
            self.macs.insert(addr, mac);
        }
    }
}

fn backend_addrs(config: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    v.sort();
    v.dedup();
    v
}
