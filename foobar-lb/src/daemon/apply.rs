//! Writing to the data plane: services (planned by the reconciler from config, health and
//! MACs), firewall rules and VIP policies, and the source block list.

use std::time::Instant;

use anyhow::Result;

use super::{specs::service_specs, Daemon};
use crate::{
    config::{CheckKind, VipPolicy},
    desired::ServiceSpec,
    firewall, netdev,
};

impl Daemon {
    /// Desired services from the runtime config; unchecked backends count as healthy.
    fn desired(&self) -> Vec<ServiceSpec> {
        service_specs(&self.config, &self.macs, |s, b| {
            let rt = self.backends.get(&(s.name.clone(), b.address));
            (
                s.health.check == CheckKind::None || rt.is_some_and(|r| r.health.is_up()),
                b.drained,
            )
        })
    }

    /// Writes the difference between the desired services and what the maps hold. The
    /// reconciler's view moves on only when every write succeeded; otherwise the refresh timer
    /// retries (`retry`), planning the same writes again.
    pub(super) fn apply(&mut self) -> Result<()> {
        let plan = self.reconciler.prepare(&self.desired())?;
        if !plan.ops.is_empty() {
            log::debug!("applying {} map operations", plan.ops.len());
        }
        if let Err(e) = self.dataplane.execute(&plan.ops) {
            self.retry = true;
            return Err(e.into());
        }
        // Backends that found no free id: ids retired by this plan serve them on the next
        // one, which the refresh timer makes.
        for (service, addr) in &plan.unplaced {
            log::warn!(
                "{service}/{addr}: no free backend id (the table holds {}); it takes no new \
                 flows until one frees",
                foobar_lb_common::MAX_BACKENDS - 1
            );
        }
        self.retry = !plan.unplaced.is_empty();
        self.reconciler.commit(plan);
        Ok(())
    }

    /// Writes rules and VIP policies from the (runtime) config.
    pub(super) fn apply_firewall(&mut self) -> Result<()> {
        let set = firewall::compile_all(&self.config.firewall.rules)?;
        self.dataplane.set_rules(&set)?;
        let mut any_drop = false;
        for iface in &self.config.interfaces {
            let drop = self.config.firewall.vip_policy.get(iface) == Some(&VipPolicy::Drop);
            any_drop |= drop;
            // A device that is gone gets its policy when it returns (`watch_interfaces`).
            let Ok(index) = netdev::ifindex(iface) else {
                continue;
            };
            self.dataplane.set_vip_policy(index, drop)?;
        }
        self.dataplane
            .set_fw_flag(foobar_lb_common::FW_HAS_VIP_POLICY, any_drop)?;
        Ok(())
    }

    pub(super) fn load_blocklist(&mut self, nets: &[ipnet::IpNet]) -> Result<()> {
        let start = Instant::now();
        self.dataplane.load_blocklist(nets)?;
        self.blocklist = nets.to_vec();
        log::info!(
            event = "firewall", blocklist_prefixes = nets.len() as u64;
            "block list: {} prefixes live (loaded in {} ms)",
            nets.len(),
            start.elapsed().as_millis()
        );
        Ok(())
    }
}
