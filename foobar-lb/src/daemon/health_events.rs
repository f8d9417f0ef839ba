//! Health checks: one task per checked backend sends results here; the daemon turns
//! rise/fall transitions into map writes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::sync::{mpsc, Semaphore};

use super::{BackendKey, Daemon};
use crate::{
    config::{BackendConfig, CheckKind, ServiceConfig},
    health::{self, CheckError, Probe},
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
            let interval = Duration::from_millis(svc.health.interval_ms);
            // Distinct seeds spread the checks' jitter so they do not fire in step.
            self.seed = self.seed.wrapping_add(0x9e37_79b9);
            rt.checker = Some(tokio::spawn(check_loop(
                key,
                probe(svc, b),
                interval,
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
        let ok = ev.result.is_ok();
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
                Ok(l) => log::info!("{svc}/{addr} is UP (check passed in {} ms)", l.as_millis()),
                Err(reason) => log::warn!("{svc}/{addr} is DOWN ({reason})"),
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

/// The check for backend `b` of `svc`.
fn probe(svc: &ServiceConfig, b: &BackendConfig) -> Probe {
    let h = &svc.health;
    Probe {
        kind: h.check,
        target: SocketAddr::new(b.address, h.port.or(b.port).unwrap_or(svc.port)),
        host: svc.vip.to_string(),
        path: h.path.clone(),
        status: h.status_range().expect("validated"),
        timeout: Duration::from_millis(h.timeout_ms),
    }
}

/// Checks one backend every `interval` (jittered) until aborted or the daemon stops
/// listening. `permits` caps how many checks run at once across all backends.
async fn check_loop(
    key: BackendKey,
    probe: Probe,
    interval: Duration,
    seed: u64,
    events: mpsc::Sender<HealthEvent>,
    permits: Arc<Semaphore>,
) {
    for n in 0u64.. {
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            health::check(&probe).await
        };
        let event = HealthEvent {
            key: key.clone(),
            result,
        };
        if events.send(event).await.is_err() {
            return;
        }
        tokio::time::sleep(health::jittered(interval, seed ^ n)).await;
    }
}
