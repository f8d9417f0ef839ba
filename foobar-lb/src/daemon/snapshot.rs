//! The counters-and-health snapshot behind `status`, `stats`, `backend list` and `/metrics`,
//! and the counter samples its packet/byte rates come from.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use foobar_lb_common::verdict;

use super::Daemon;
use crate::{
    api::{self, BackendStats, ServiceStats, StatsSnapshot},
    config::{CheckKind, VipPolicy},
    neighbor,
};

impl Daemon {
    pub(super) fn stats(&self) -> Result<StatsSnapshot> {
        let verdicts = self.dataplane.verdicts()?;
        // Counted by another thread: a walk of a large flow table must not hold up this task,
        // which also handles health results.
        let flows = self.flow_counts.latest();
        let mut services = Vec::new();
        for svc in &self.config.services {
            let Some(w) = self.reconciler.services().get(&svc.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for b in &svc.backends {
                let written = w.backends.get(&b.address);
                let rt = self.backends.get(&(svc.name.clone(), b.address));
                backends.push(BackendStats {
                    address: b.address.to_string(),
                    role: b.role,
                    weight: b.weight,
                    mac: self
                        .macs
                        .get(&b.address)
                        .map(|l| neighbor::format_mac(&l.mac)),
                    health: match (svc.health.check, rt.and_then(|r| r.health.up)) {
                        (CheckKind::None, _) => "unchecked",
                        (_, Some(true)) => "up",
                        (_, Some(false)) => "down",
                        (_, None) => "unknown",
                    }
                    .into(),
                    last_error: rt.and_then(|r| r.last_error.clone()),
                    check_latency_ms: rt.and_then(|r| r.latency).map(|d| d.as_secs_f64() * 1000.0),
                    drained: b.drained,
                    state: match written {
                        Some(x) => format!("{:?}", x.state).to_lowercase(),
                        None => "unresolved".into(),
                    },
                    flows: written.and_then(|x| flows.get(&x.id).copied()).unwrap_or(0),
                    packets_per_sec: written.map(|x| self.rates(x.id).0).unwrap_or(0.0),
                    bytes_per_sec: written.map(|x| self.rates(x.id).1).unwrap_or(0.0),
                    counters: match written {
                        Some(x) => self.dataplane.backend_counters(x.id)?.into(),
                        None => Default::default(),
                    },
                });
            }
            services.push(ServiceStats {
                name: svc.name.clone(),
                vip: svc.vip.to_string(),
                port: svc.port,
                protocol: svc.protocol.to_string(),
                counters: self.dataplane.service_counters(w.id)?.into(),
                backends,
            });
        }
        let rule_counters = self
            .dataplane
            .rule_counters(self.config.firewall.rules.len())?;
        let firewall = api::FirewallStats {
            rules: self
                .config
                .firewall
                .rules
                .iter()
                .zip(rule_counters)
                .enumerate()
                .map(|(i, (r, c))| api::RuleStats {
                    index: i + 1,
                    rule: r.to_string(),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
            blocklist_prefixes: self.blocklist.len(),
            vip_policy_drop: self
                .config
                .firewall
                .vip_policy
                .iter()
                .filter(|(_, p)| **p == VipPolicy::Drop)
                .map(|(i, _)| i.clone())
                .collect(),
        };
        Ok(StatsSnapshot {
            firewall,
            verdicts: verdict::NAMES
                .iter()
                .zip(verdicts)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            flows: flows.values().sum::<u64>() as usize,
            flow_table_entries: self.flow_counts.entries(),
            flow_table_size: self.config.flow_table_size,
            services,
            map_writes: self.dataplane.map_writes(),
            announce: self.announce_stats(),
            drained: self.config.drained,
            vips_held: super::announce::held(
                &self.config.services.iter().map(|s| s.vip).collect(),
                &self.config.interfaces,
            )
            .iter()
            .map(ToString::to_string)
            .collect(),
            nat: api::NatStats {
                connections: self.nat_sweeper.as_ref().map_or(0, |s| s.tracked()),
                table_size: self.config.nat_table_size,
            },
            netlink: {
                let c = self.netlink.counts();
                let n =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                api::NetlinkStats {
                    neighbour_events: n(&c.neighbour),
                    link_events: n(&c.link),
                    ignored_events: n(&c.ignored),
                    resyncs: n(&c.resyncs),
                }
            },
            sync: self.sync.as_deref().map(sync_snapshot),
        })
    }

    /// Samples every backend's counters (on the refresh timer) so `status` can show rates.
    pub(super) fn sample_rates(&mut self) -> Result<()> {
        let now = Instant::now();
        let ids: Vec<u32> = self
            .reconciler
            .services()
            .values()
            .flat_map(|s| s.backends.values().map(|b| b.id))
            .collect();
        // Rates over less than a second are noise; keep the older window until then.
        if self
            .samples
            .values()
            .next()
            .is_some_and(|s| now.duration_since(s[1].0) < Duration::from_secs(1))
        {
            return Ok(());
        }
        let mut next = HashMap::new();
        for id in ids {
            let c = self.dataplane.backend_counters(id)?;
            let prev = self.samples.get(&id).map(|s| s[1]).unwrap_or((now, c));
            next.insert(id, [prev, (now, c)]);
        }
        self.samples = next;
        Ok(())
    }

    /// (packets/s, bytes/s) of a backend over the last sampling interval.
    fn rates(&self, id: u32) -> (f64, f64) {
        match self.samples.get(&id) {
            Some([(t0, a), (t1, b)]) if t1 > t0 => {
                let dt = (*t1 - *t0).as_secs_f64();
                (
                    b.packets.saturating_sub(a.packets) as f64 / dt,
                    b.bytes.saturating_sub(a.bytes) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        }
    }
}

/// The sync task's counters as `status`, `stats` and the metrics show them.
fn sync_snapshot(s: &crate::sync::SyncStats) -> api::SyncSnapshot {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    api::SyncSnapshot {
        synced: s.is_ready(),
        gate: s.gate_text(),
        peers_connected: n(&s.peers_connected),
        bulk_syncs: n(&s.bulk_syncs),
        ring_events: n(&s.ring_events),
        ring_full: n(&s.ring_full),
        sent: n(&s.sent),
        lagged: n(&s.lagged),
        received: n(&s.received),
        applied: n(&s.applied),
        unknown_backend: n(&s.unknown_backend),
        nat_sent: n(&s.nat_sent),
        nat_refreshed: n(&s.nat_refreshed),
        nat_applied: n(&s.nat_applied),
        nat_skipped: n(&s.nat_skipped),
        auth_failures: n(&s.auth_failures),
        lag_ms: s.lag_ms(),
        last_applied_age_secs: s.last_applied_age_secs(),
    }
}
