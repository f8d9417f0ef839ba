//! Health checks: one task per checked backend sends results here; the daemon turns
//! rise/fall transitions into map writes.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use tokio::sync::{mpsc, Semaphore};

use super::{BackendKey, Daemon};
use crate::{
    config::{CheckKind, ForwardingKind, Observe, ServiceConfig},
    health::{self, CheckError, HealthState, Probe, Schedule},
};

/// One health check result.
pub(super) struct HealthEvent {
    key: BackendKey,
    result: Result<Duration, CheckError>,
}

impl Daemon {
    /// Starts health checks for every backend that has none yet (after start-up or a change).
    pub(super) fn start_all_checks(&mut self) {
        for svc in self.config.services.clone() {
            self.start_checks(&svc);
        }
    }

    /// Starts health checks for every backend of `svc` that has none yet.
    fn start_checks(&mut self, svc: &ServiceConfig) {
        for b in &svc.backends {
            let key = (svc.name.clone(), b.address);
            let rt = self.backends.entry(key.clone()).or_default();
            if svc.health.check == CheckKind::None || rt.checker.is_some() {
                continue;
            }
            // Distinct seeds spread the checks' jitter so they do not fire in step.
            self.seed = self.seed.wrapping_add(0x9e37_79b9);
            rt.checker = Some(tokio::spawn(check_loop(
                key,
                svc,
                Probe::new(svc, b),
                rt.health.clone(),
                self.seed,
                self.events.clone(),
                self.checks.clone(),
            )));
        }
    }

    /// Records a check result; re-plans when a backend changed state.
    pub(super) fn on_health(&mut self, ev: HealthEvent) -> Result<()> {
        let Some(svc) = self.config.services.iter().find(|s| s.name == ev.key.0) else {
            return Ok(());
        };
        let (rise, fall) = (svc.health.rise, svc.health.fall);
        let Some(rt) = self.backends.get_mut(&ev.key) else {
            return Ok(()); // removed meanwhile
        };
        let Some(ok) = health::counts(&ev.result) else {
            // This host's trouble, not the backend's: shown, logged once per run of such
            // errors, and the backend's state stays as it was.
            let reason = ev.result.as_ref().err().map(ToString::to_string);
            if !rt
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("local error"))
            {
                let (svc, addr) = &ev.key;
                log::warn!(
                    "{svc}/{addr}: check not run: {}",
                    reason.as_deref().unwrap_or("")
                );
            }
            rt.last_error = reason;
            return Ok(());
        };
        match &ev.result {
            Ok(latency) => {
                rt.latency = Some(*latency);
                rt.last_error = None;
            }
            Err(reason) => rt.last_error = Some(reason.to_string()),
        }
        if let Some(up) = rt.health.observe(ok, rise, fall) {
            let (svc, addr) = &ev.key;
            match &ev.result {
                Ok(l) => log::info!(
                    event = "health", service = svc.as_str(), backend:% = addr, state = "up",
                    latency_ms = l.as_millis() as u64;
                    "{svc}/{addr} is UP (check passed in {} ms)", l.as_millis()
                ),
                Err(reason) => log::warn!(
                    event = "health", service = svc.as_str(), backend:% = addr, state = "down",
                    reason:% = reason;
                    "{svc}/{addr} is DOWN ({reason})"
                ),
            }
            if up {
                self.learn_mac(*addr);
            }
            // During start-up the first round's results are written together at its end.
            if self.started {
                self.apply()?;
            }
        }
        Ok(())
    }
}

impl Daemon {
    /// Passive health (`observe = "layer4"`, called every [`super::OBSERVE_EVERY`]): a backend
    /// whose refused-SYN counter (`BACKEND_REFUSED`, moved by the data plane when it answers
    /// a new connection's SYN with a RST) grew since the last look is marked down at once
    /// (HAProxy's `on-error mark-down`); its checks restart from the down state and bring it
    /// back after `rise`. A counter seen for the first time only sets the baseline.
    pub(super) fn observe_refusals(&mut self) -> Result<()> {
        if !self.started {
            return Ok(());
        }
        let mut watched = Vec::new();
        for svc in &self.config.services {
            if svc.health.observe != Some(Observe::Layer4) || svc.forwarding == ForwardingKind::Dsr
            {
                continue;
            }
            let Some(written) = self.reconciler.services().get(&svc.name) else {
                continue;
            };
            for (addr, b) in &written.backends {
                watched.push((svc.name.clone(), *addr, b.id));
            }
        }
        let mut down = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (name, addr, id) in watched {
            let now = self.dataplane.refused(id)?;
            if let Some(&before) = self.refused.get(&id) {
                if now > before {
                    down.push(((name, addr), now - before));
                }
            }
            seen.insert(id, now);
        }
        self.refused = seen;
        let mut changed = false;
        for (key, n) in down {
            let Some(rt) = self.backends.get_mut(&key) else {
                continue;
            };
            if !rt.health.mark_down() {
                continue;
            }
            let (svc, addr) = &key;
            let reason = format!("refused {n} connection(s) (observe layer4)");
            log::warn!(
                event = "health", service = svc.as_str(), backend:% = addr, state = "down",
                reason:% = reason;
                "{svc}/{addr} is DOWN ({reason})"
            );
            rt.last_error = Some(reason);
            // The check loop keeps its own copy of the state: restart it from this one, so
            // it checks at once and at `downinter`, and counts `rise` from here.
            if let Some(c) = rt.checker.take() {
                c.abort();
            }
            changed = true;
        }
        if changed {
            self.start_all_checks();
            self.apply()?;
        }
        Ok(())
    }
}

/// Checks one backend (see [`health::check_loop`]) until aborted or the daemon stops
/// listening. `permits` caps how many checks run at once across all backends.
fn check_loop(
    key: BackendKey,
    svc: &ServiceConfig,
    probe: Probe,
    state: HealthState,
    seed: u64,
    events: mpsc::Sender<HealthEvent>,
    permits: Arc<Semaphore>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (schedule, rise, fall) = (Schedule::new(&svc.health), svc.health.rise, svc.health.fall);
    health::check_loop(
        schedule,
        rise,
        fall,
        state,
        seed,
        move || {
            let (probe, permits) = (probe.clone(), permits.clone());
            async move {
                let _permit = permits.acquire().await.ok()?;
                Some(health::check(&probe).await)
            }
        },
        move |result| {
            let (key, events) = (key.clone(), events.clone());
            async move { events.send(HealthEvent { key, result }).await.is_ok() }
        },
    )
}
