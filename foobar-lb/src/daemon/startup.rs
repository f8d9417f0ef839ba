//! Start-up, in order: config, MACs, the data plane (loaded or adopted), firewall, a first
//! round of health checks, the first write, then attaching XDP.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use foobar_lb_common::{ServiceKey, ADMIN_DRAINED, ADMIN_HEALTH_DOWN};
use tokio::sync::{mpsc, Semaphore};

use super::{
    health_events::HealthEvent,
    lock::{lock_pin_dir, PinDirLock},
    macs, socket,
    specs::service_key,
    ApiCall, Daemon, RunOptions,
};
use crate::{
    config::{CheckKind, Config, XdpMode},
    dataplane::{self, Dataplane, LoadOptions},
    desired::{OnLink, NEXT_HOP_BY_FIB},
    health::HealthState,
    reconcile::Reconciler,
};

/// How often open flows are counted for `status` and metrics (more rarely when a walk of the
/// table takes longer).
const FLOW_COUNT_EVERY: Duration = Duration::from_millis(500);
/// How often the NAT sweeper walks the connection table (at most; a long walk waits as long).
const NAT_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// At most this many health checks run at once, however many backends there are.
const MAX_CONCURRENT_CHECKS: usize = 64;

/// Brings the daemon up to forwarding; health results keep arriving on the returned channel.
/// The metrics endpoint starts as soon as the config is known, with `metrics`. The returned
/// lock keeps other daemons off this pin directory while it is held.
pub(super) async fn start(
    config_path: &Path,
    opts: &RunOptions,
    metrics: (mpsc::Sender<ApiCall>, crate::metrics::Readiness),
) -> Result<(Daemon, mpsc::Receiver<HealthEvent>, PinDirLock)> {
    let config = Config::load(config_path)?;
    config.check_host()?;
    if let Some(a) = &config.announce {
        super::announce::check_interface(&a.interface)?;
    }
    let mode = opts.xdp_mode.unwrap_or(config.xdp_mode);
    // Before anything touches the data plane: one daemon per pin directory, whatever its socket.
    let lock = lock_pin_dir(&config.pin_dir)?;
    socket::refuse_second_daemon(&config.control_socket).await?;
    // Both listeners before the kernel is touched: a socket that cannot be bound stops the
    // start with nothing attached or pinned.
    socket::serve_metrics(&config, metrics.0.clone(), metrics.1.clone()).await?;
    socket::serve(&config, metrics.0).await?;
    // Subscribed before the first dump, so no change falls between the two.
    let netlink = crate::neighbor::Watcher::spawn(macs::netlink_filter(&config))?;
    let macs = macs::resolve_all(&config).await?;
    let (mut dataplane, reconciler) = load_dataplane(&config)?;
    let flow_counts = dataplane.spawn_flow_counter(FLOW_COUNT_EVERY)?;
    // Before the first write: a starting node's bulk sync runs while its checks do.
    let sync = match &config.sync {
        Some(s) => {
            let (ring, maps, walk) = dataplane.sync_maps()?;
            let key = s.load_key()?;
            let nat = &config.nat.timeouts;
            Some(crate::sync::start(s, key, ring, maps, walk, nat))
        }
        None => None,
    };
    let (mut d, mut events) =
        Daemon::new(config, dataplane, reconciler, (macs, netlink), flow_counts);
    d.config_path = config_path.to_owned();
    d.sync = sync;
    d.readiness_gate = metrics.1.clone();
    d.readiness_gate.set_drained(d.config.drained);
    d.xdp_mode = mode;
    if d.dataplane.adopted() {
        d.take_over_pinned_state();
    }
    // NAT: the reply prefilter from the backends pinned (none on a fresh start), and the
    // sweeper, which resumes forgetting idle connections of an adopted table.
    d.dataplane.refresh_nat_filter()?;
    d.nat_sweeper = Some(
        d.dataplane
            .spawn_nat_sweeper(d.config.nat.timeouts, NAT_SWEEP_EVERY)?,
    );
    d.init_firewall()?;
    for w in
        crate::health_replies::conflicts(&d.config, &crate::health_replies::ReplyView::of_host())
    {
        log::warn!("{w}");
    }
    d.start_all_checks();
    d.first_health_round(&mut events).await?;
    // Maps are filled before attaching, so the first packet already sees the services.
    d.apply()?;
    d.started = true;
    d.detach_unconfigured();
    d.attach()?;
    d.print_summary();
    Ok((d, events, lock))
}

/// Loads the data plane, or adopts the one a previous daemon left pinned; in that case the
/// reconciler starts from the maps' content so the first write changes only what differs.
fn load_dataplane(config: &Config) -> Result<(Dataplane, Reconciler)> {
    let mut dataplane = Dataplane::load(&LoadOptions {
        flow_table_size: config.flow_table_size,
        nat_table_size: config.nat_table_size,
        pin_dir: Some(config.pin_dir.clone()),
        sync: config.sync.is_some(),
    })?;
    let reconciler = if dataplane.adopted() {
        let pinned = dataplane.read_state()?;
        let names: Vec<(String, ServiceKey)> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), service_key(s)))
            .collect();
        log::info!(
            "adopting the pinned data plane in {} ({} service(s), {} backend entries)",
            config.pin_dir.display(),
            pinned.services.len(),
            pinned.backends.len()
        );
        Reconciler::adopt(&names, &pinned)
    } else {
        Reconciler::default()
    };
    if let Some(logger) = dataplane.take_logger() {
        spawn_log_reader(logger);
    }
    Ok((dataplane, reconciler))
}

/// Forwards the XDP program's aya-log records to this process' logger.
fn spawn_log_reader(logger: dataplane::Logger) {
    // SAFETY: the logger owns its ring buffer's fd and moves into the AsyncFd, so the fd stays
    // open and the same for the AsyncFd's whole life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        log::warn!("cannot poll the XDP program's log buffer; its messages are lost");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

impl Daemon {
    fn new(
        config: Config,
        dataplane: Dataplane,
        reconciler: Reconciler,
        (macs, netlink): (HashMap<IpAddr, OnLink>, crate::neighbor::Watcher),
        flow_counts: dataplane::FlowCounts,
    ) -> (Self, mpsc::Receiver<HealthEvent>) {
        let (events_tx, events) = mpsc::channel::<HealthEvent>(1024);
        let d = Daemon {
            config,
            dataplane,
            reconciler,
            macs,
            neighbour_failed: Default::default(),
            netlink,
            links_up: HashMap::new(),
            backends: HashMap::new(),
            events: events_tx,
            checks: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
            seed: std::process::id() as u64,
            started: false,
            retry: false,
            flow_counts,
            refused: HashMap::new(),
            samples: HashMap::new(),
            config_path: Default::default(),
            xdp_mode: XdpMode::Auto,
            attached: Default::default(),
            blocklist: Vec::new(),
            nat_sweeper: None,
            sync: None,
            readiness_gate: Default::default(),
        };
        (d, events)
    }

    /// An adopted data plane is the starting truth: every backend it serves (active or
    /// draining) starts with its pinned health (up unless checks held it down), its pinned
    /// MAC unless resolution found another, and drained if it was (a drain made at run time
    /// survives a restart; the config file can add drains, not undo them). Checks then change
    /// a state only by the usual rise/fall rules, so a restart writes nothing for backends
    /// whose checks agree, however slow or many the checks.
    fn take_over_pinned_state(&mut self) {
        let mut taken = 0;
        for svc in &mut self.config.services {
            let Some(written) = self.reconciler.services().get(&svc.name) else {
                continue;
            };
            for b in &mut svc.backends {
                let Some(w) = written.backends.get(&b.address) else {
                    continue;
                };
                b.drained |= w.admin & ADMIN_DRAINED != 0;
                let rt = self
                    .backends
                    .entry((svc.name.clone(), b.address))
                    .or_default();
                rt.health = HealthState::assumed(w.admin & ADMIN_HEALTH_DOWN == 0);
                if w.mac != NEXT_HOP_BY_FIB {
                    self.macs.entry(b.address).or_insert(OnLink {
                        mac: w.mac,
                        ifindex: w.ifindex,
                    });
                }
                taken += 1;
            }
        }
        log::info!("took over {taken} backend(s) as the pinned data plane has them");
    }

    /// Writes rules, VIP policies and the configured block lists.
    fn init_firewall(&mut self) -> Result<()> {
        self.apply_firewall()?;
        let blocklist = self.config.blocklist()?;
        // An adopted data plane may hold an old list: write even an empty one to clear it.
        if !blocklist.is_empty() || self.dataplane.adopted() {
            self.load_blocklist(&blocklist)?;
        }
        Ok(())
    }

    /// Waits for every started check's first result (at most the longest check timeout), so
    /// no backend is used unchecked and an adopted data plane is not disturbed by "unknown"
    /// states.
    async fn first_health_round(&mut self, events: &mut mpsc::Receiver<HealthEvent>) -> Result<()> {
        let first_round = self
            .config
            .services
            .iter()
            .filter(|s| s.health.check != CheckKind::None)
            .map(|s| s.health.timeout_ms)
            .max()
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_millis(first_round + 200);
        while self
            .backends
            .values()
            .any(|b| b.checker.is_some() && b.health.up.is_none())
        {
            match tokio::time::timeout_at(deadline.into(), events.recv()).await {
                Ok(Some(ev)) => self.on_health(ev)?,
                _ => break,
            }
        }
        Ok(())
    }

    fn attach(&mut self) -> Result<()> {
        for iface in self.config.interfaces.clone() {
            self.attach_one(&iface)?;
        }
        Ok(())
    }

    fn print_summary(&self) {
        let n_backends: usize = self.config.services.iter().map(|s| s.backends.len()).sum();
        println!(
            "foobar-lb: {} service(s), {}/{} backend MAC(s) resolved; control socket {}",
            self.config.services.len(),
            self.macs.len(),
            n_backends,
            self.config.control_socket.display()
        );
    }
}
