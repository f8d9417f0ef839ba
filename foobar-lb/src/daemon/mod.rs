//! `foobar-lb run`: load (or adopt) the data plane, health-check the backends, keep the maps true
//! to the configuration and the operator's runtime changes, serve the control API and metrics.
//!
//! One task owns all state: health results, API requests and timers arrive as messages, so
//! every change is planned and written in one place, in order.

mod control;
mod snapshot;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use foobar_lb_common::ServiceKey;
use tokio::{
    net::UnixListener,
    signal::unix::SignalKind,
    sync::{mpsc, oneshot, Semaphore},
    task::JoinHandle,
};

use crate::{
    api::{self, Request, Response},
    config::{BackendConfig, CheckKind, Config, ServiceConfig, VipPolicy, XdpMode},
    dataplane::{self, Dataplane, LoadOptions},
    desired::{BackendSpec, Forwarding, Mac, ServiceSpec},
    firewall,
    health::{self, HealthState, Probe},
    neighbor, netdev,
    pool::{self, Member},
    reconcile::Reconciler,
    schedule::Scheduler,
};

/// How long start-up waits for backend MACs before going on without the missing ones.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the neighbour table is read again (new backends, MAC changes).
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(2);
/// At most this many health checks run at once, however many backends there are.
const MAX_CONCURRENT_CHECKS: usize = 64;

pub struct RunOptions {
    /// Overrides the config's `xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// On SIGINT/SIGTERM detach and unpin everything, instead of leaving the data plane
    /// forwarding for the next daemon.
    pub detach_on_exit: bool,
}

type BackendKey = (String, IpAddr);

/// One health check result.
struct HealthEvent {
    key: BackendKey,
    result: Result<Duration, String>,
}

type ApiCall = (Request, oneshot::Sender<Response>);

#[derive(Default)]
struct BackendRuntime {
    health: HealthState,
    last_error: Option<String>,
    latency: Option<Duration>,
    drained: bool,
    checker: Option<JoinHandle<()>>,
}

impl Drop for BackendRuntime {
    fn drop(&mut self) {
        if let Some(c) = self.checker.take() {
            c.abort();
        }
    }
}

struct Daemon {
    /// The configuration as changed at runtime by the API.
    config: Config,
    dataplane: Dataplane,
    reconciler: Reconciler,
    macs: HashMap<IpAddr, Mac>,
    backends: HashMap<BackendKey, BackendRuntime>,
    events: mpsc::Sender<HealthEvent>,
    checks: Arc<Semaphore>,
    seed: u64,
    /// The source block list now in the data plane.
    blocklist_len: usize,
    /// The last two counter samples per backend id, for packet/byte rates in `status`.
    samples: HashMap<u32, [(Instant, foobar_lb_common::Counters); 2]>,
}

impl Daemon {
    fn desired(&self) -> Vec<ServiceSpec> {
        service_specs(&self.config, &self.macs, |s, b| {
            let rt = self.backends.get(&(s.name.clone(), b.address));
            (
                s.health.check == CheckKind::None || rt.is_some_and(|r| r.health.is_up()),
                rt.is_some_and(|r| r.drained),
            )
        })
    }

    fn apply(&mut self) -> Result<()> {
        let ops = self.reconciler.plan(&self.desired())?;
        if !ops.is_empty() {
            log::debug!("applying {} map operations", ops.len());
        }
        self.dataplane.execute(&ops)?;
        Ok(())
    }

    /// Starts health checks for every backend of `svc` that has none yet.
    fn start_checks(&mut self, svc: &ServiceConfig) {
        for b in &svc.backends {
            let key = (svc.name.clone(), b.address);
            let rt = self.backends.entry(key.clone()).or_default();
            if svc.health.check == CheckKind::None || rt.checker.is_some() {
                continue;
            }
            let h = &svc.health;
            let probe = Probe {
                kind: h.check,
                target: SocketAddr::new(b.address, h.port.or(b.port).unwrap_or(svc.port)),
                host: svc.vip.to_string(),
                path: h.path.clone(),
                status: h.status_range().expect("validated"),
                timeout: Duration::from_millis(h.timeout_ms),
            };
            let interval = Duration::from_millis(h.interval_ms);
            let (events, permits) = (self.events.clone(), self.checks.clone());
            self.seed = self.seed.wrapping_add(0x9e37_79b9);
            let seed = self.seed;
            rt.checker = Some(tokio::spawn(async move {
                for n in 0u64.. {
                    let result = {
                        let Ok(_permit) = permits.acquire().await else {
                            return;
                        };
                        health::check(&probe).await
                    };
                    if events
                        .send(HealthEvent {
                            key: key.clone(),
                            result,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(health::jittered(interval, seed ^ n)).await;
                }
            }));
        }
    }

    /// Records a check result; re-plans when a backend changed state.
    fn on_health(&mut self, ev: HealthEvent) -> Result<()> {
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
            Err(reason) => rt.last_error = Some(reason.clone()),
        }
        if let Some(up) = rt.health.observe(ok, rise, fall) {
            let (svc, addr) = &ev.key;
            match &ev.result {
                Ok(l) => log::info!("{svc}/{addr} is UP (check passed in {} ms)", l.as_millis()),
                Err(reason) => log::warn!("{svc}/{addr} is DOWN ({reason})"),
            }
            if up && !self.macs.contains_key(addr) {
                // The check's own connection made the kernel resolve the MAC.
                if let Ok(Some(mac)) = neighbor::lookup(*addr, &self.config.interfaces) {
                    self.macs.insert(*addr, mac);
                }
            }
            self.apply()?;
        }
        Ok(())
    }

    /// Writes rules and VIP policies from the (runtime) config.
    fn apply_firewall(&mut self) -> Result<()> {
        let set = firewall::compile_all(&self.config.firewall.rules).map_err(anyhow::Error::msg)?;
        self.dataplane.set_rules(&set)?;
        let mut any_drop = false;
        for iface in &self.config.interfaces {
            let drop = self.config.firewall.vip_policy.get(iface) == Some(&VipPolicy::Drop);
            any_drop |= drop;
            self.dataplane
                .set_vip_policy(netdev::ifindex(iface)?, drop)?;
        }
        self.dataplane
            .set_fw_flag(foobar_lb_common::FW_HAS_VIP_POLICY, any_drop)?;
        Ok(())
    }

    fn load_blocklist(&mut self, nets: &[ipnet::IpNet]) -> Result<()> {
        let start = Instant::now();
        self.dataplane.load_blocklist(nets)?;
        self.blocklist_len = nets.len();
        log::info!(
            "block list: {} prefixes live (loaded in {} ms)",
            nets.len(),
            start.elapsed().as_millis()
        );
        Ok(())
    }

    /// Samples every backend's counters (on the refresh timer) so `status` can show rates.
    fn sample_rates(&mut self) -> Result<()> {
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

    fn refresh_neighbors(&mut self) -> Result<()> {
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
}

fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey::new(s.vip, s.port, s.protocol.number())
}

/// The data plane's desired content for `config` with every backend healthy (no health
/// checks), given the backend MACs known so far. Used by tests that provision maps directly.
pub fn desired_state(config: &Config, macs: &HashMap<IpAddr, Mac>) -> Vec<ServiceSpec> {
    service_specs(config, macs, |_, _| (true, false))
}

/// Desired content: per service, the pool decision over its backends, where `status` says
/// (healthy, drained) for each.
fn service_specs(
    config: &Config,
    macs: &HashMap<IpAddr, Mac>,
    status: impl Fn(&ServiceConfig, &BackendConfig) -> (bool, bool),
) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| {
            let members: Vec<Member> = s
                .backends
                .iter()
                .map(|b| {
                    let (healthy, drained) = status(s, b);
                    Member {
                        role: b.role,
                        weight: b.weight,
                        healthy,
                        drained,
                    }
                })
                .collect();
            ServiceSpec {
                name: s.name.clone(),
                key: service_key(s),
                rate_limit: s.rate_limit(),
                scheduler: Scheduler::RoundRobin,
                backends: s
                    .backends
                    .iter()
                    .zip(pool::states(&members, s.failover))
                    .map(|(b, state)| BackendSpec {
                        addr: b.address,
                        mac: macs.get(&b.address).copied(),
                        state,
                        weight: b.weight,
                        forwarding: Forwarding::Dsr,
                    })
                    .collect(),
            }
        })
        .collect()
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

pub async fn run(config_path: &Path, opts: RunOptions) -> Result<()> {
    let config = Config::load(config_path)?;
    config.check_host()?;
    let mode = opts.xdp_mode.unwrap_or(config.xdp_mode);

    // Refuse to start twice on one control socket before touching the kernel.
    let socket = config.control_socket.clone();
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "another foobar-lb daemon answers on {}: stop it first",
            socket.display()
        );
    }

    let addrs = backend_addrs(&config);
    log::info!("resolving {} backend MAC address(es)", addrs.len());
    let macs = {
        let ifaces = config.interfaces.clone();
        tokio::task::spawn_blocking(move || neighbor::resolve_all(&addrs, &ifaces, RESOLVE_TIMEOUT))
            .await??
    };

    let mut dataplane = Dataplane::load(&LoadOptions {
        flow_table_size: config.flow_table_size,
        pin_dir: Some(config.pin_dir.clone()),
    })?;
    let reconciler = if dataplane.adopted() {
        let (services, backends, sets) = dataplane.read_state()?;
        let names: Vec<(String, ServiceKey)> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), service_key(s)))
            .collect();
        log::info!(
            "adopting the pinned data plane in {} ({} service(s), {} backend entries)",
            config.pin_dir.display(),
            services.len(),
            backends.len()
        );
        Reconciler::adopt(&names, &services, &backends, &sets)
    } else {
        Reconciler::default()
    };
    if let Some(logger) = dataplane.take_logger() {
        spawn_log_reader(logger);
    }
    let (events_tx, mut events) = mpsc::channel::<HealthEvent>(1024);
    let mut d = Daemon {
        config,
        dataplane,
        reconciler,
        macs,
        backends: HashMap::new(),
        events: events_tx,
        checks: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
        seed: std::process::id() as u64,
        samples: HashMap::new(),
        blocklist_len: 0,
    };
    d.apply_firewall()?;
    let mut blocklist = Vec::new();
    for path in &d.config.firewall.blocklists {
        blocklist.extend(firewall::load_blocklist(path).map_err(anyhow::Error::msg)?);
    }
    if !blocklist.is_empty() || d.dataplane.adopted() {
        d.load_blocklist(&blocklist)?;
    }
    for svc in d.config.services.clone() {
        d.start_checks(&svc);
    }
    // First round of checks before the first write, so no backend is used unchecked and an
    // adopted data plane is not disturbed by "unknown" states.
    let first_round = d
        .config
        .services
        .iter()
        .filter(|s| s.health.check != CheckKind::None)
        .map(|s| s.health.timeout_ms)
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(first_round + 200);
    while d
        .backends
        .values()
        .any(|b| b.checker.is_some() && b.health.up.is_none())
    {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Some(ev)) => d.on_health(ev)?,
            _ => break,
        }
    }
    // Maps are filled before attaching, so the first packet already sees the services.
    d.apply()?;
    for iface in d.config.interfaces.clone() {
        let attached = d.dataplane.attach(&iface, mode)?;
        println!("foobar-lb: XDP attached to {iface} in {attached} mode");
    }
    let n_backends: usize = d.config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "foobar-lb: {} service(s), {}/{} backend MAC(s) resolved; control socket {}",
        d.config.services.len(),
        d.macs.len(),
        n_backends,
        socket.display()
    );

    let (api_tx, mut api_rx) = mpsc::channel::<ApiCall>(64);
    let listener = bind_socket(&socket)?;
    tokio::spawn(accept_loop(listener, api_tx.clone()));
    if !d.config.metrics_address.is_empty() {
        let addr: SocketAddr = d.config.metrics_address.parse().expect("validated");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        println!("foobar-lb: metrics on http://{addr}/metrics");
        tokio::spawn(crate::metrics::serve(listener, api_tx));
    }
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut refresh = tokio::time::interval(NEIGHBOR_REFRESH);
    // After a stall, wait a full period instead of firing missed ticks back to back: rate
    // samples taken microseconds apart would show zero.
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await;

    let result: Result<()> = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            Some((req, reply)) = api_rx.recv() => {
                let _ = reply.send(d.handle(req));
            }
            Some(ev) = events.recv() => {
                if let Err(e) = d.on_health(ev) {
                    log::error!("applying a health change failed: {e:#}");
                }
            }
            _ = refresh.tick() => {
                if let Err(e) = d.refresh_neighbors() {
                    log::warn!("neighbour refresh failed: {e:#}");
                }
                if let Err(e) = d.sample_rates() {
                    log::warn!("reading counters failed: {e:#}");
                }
            }
        }
    };
    let _ = std::fs::remove_file(&socket);
    let pin_dir = d.config.pin_dir.clone();
    drop(d);
    if opts.detach_on_exit {
        dataplane::teardown(&pin_dir)?;
        println!("foobar-lb: detached and unpinned, exiting");
    } else {
        println!(
            "foobar-lb: exiting; the data plane keeps forwarding (pinned in {}). \
             `foobar-lb teardown --pin-dir {}` removes it",
            pin_dir.display(),
            pin_dir.display()
        );
    }
    result
}

async fn accept_loop(listener: UnixListener, api: mpsc::Sender<ApiCall>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            let Ok((req, write)) = api::read_request(stream).await else {
                return;
            };
            let resp = match req {
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if api.send((req, tx)).await.is_err() {
                        return;
                    }
                    rx.await
                        .unwrap_or_else(|_| Response::error("daemon is stopping"))
                }
                Err(resp) => resp,
            };
            if let Err(e) = api::write_response(write, &resp).await {
                log::debug!("control connection: {e}");
            }
        });
    }
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

fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket file left by a daemon that died: nobody answered on it above.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
