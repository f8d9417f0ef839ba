//! `foobar-lb run`: load (or adopt) the data plane, health-check the backends, keep the maps true
//! to the configuration and the operator's runtime changes, serve the control API and metrics.
//!
//! One task owns all state: health results, API requests and timers arrive as messages, so
//! every change is planned and written in one place, in order.
//!
//! The phases live in their own modules: `startup` (up to the first write and attach),
//! `socket` (control socket and metrics listener), then this module's main loop, which hands
//! messages to `health_events`, `control` and `macs`; `apply` writes the result.

mod announce;
mod apply;
mod control;
mod health_events;
mod interfaces;
mod lock;
mod macs;
mod reload;
mod snapshot;
mod socket;
mod specs;
mod startup;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{
    signal::unix::{Signal, SignalKind},
    sync::{mpsc, oneshot, Semaphore},
    task::JoinHandle,
};

pub use specs::desired_state;

use crate::{
    api::{Request, Response},
    config::{Config, XdpMode},
    dataplane::{self, Dataplane},
    desired::OnLink,
    health::HealthState,
    metrics, neighbor,
    reconcile::Reconciler,
};
use health_events::HealthEvent;

/// The housekeeping tick: failed map writes retried, unresolved backends asked for again (their
/// answers arrive as neighbour events), counter samples for rates.
const TICK: Duration = Duration::from_secs(2);

/// How often passive health (`observe = "layer4"`) reads the refused-SYN counters: well within
/// a client's first SYN retransmission (1 s), so the retransmitted SYN meets the new schedule.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);

/// The fallback for kernel events: the neighbour table and the interfaces are read in full this
/// often (events drive the normal case; this covers what a lost event would leave wrong).
const NETLINK_FALLBACK: Duration = Duration::from_secs(30);

pub struct RunOptions {
    /// Overrides the config's `xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// On SIGINT/SIGTERM detach and unpin everything, instead of leaving the data plane
    /// forwarding for the next daemon.
    pub detach_on_exit: bool,
}

type BackendKey = (String, IpAddr);

type ApiCall = (Request, oneshot::Sender<Response>);

#[derive(Default)]
struct BackendRuntime {
    health: HealthState,
    last_error: Option<String>,
    latency: Option<Duration>,
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
    /// Backend MACs and the interfaces they are on, from the neighbour table.
    macs: HashMap<IpAddr, OnLink>,
    /// Backends whose neighbour entry was last seen FAILED (logged once per failure).
    neighbour_failed: std::collections::HashSet<IpAddr>,
    /// The kernel's neighbour and link events, filtered to the configuration.
    netlink: neighbor::Watcher,
    /// Configured interfaces' last state seen in a link event (up: IFF_UP and a carrier).
    links_up: HashMap<String, bool>,
    backends: HashMap<BackendKey, BackendRuntime>,
    events: mpsc::Sender<HealthEvent>,
    checks: Arc<Semaphore>,
    seed: u64,
    /// Where the configuration was read from (SIGHUP and `reload` read it again).
    config_path: std::path::PathBuf,
    /// XDP mode to attach in (also when an interface comes back).
    xdp_mode: XdpMode,
    /// Interface name -> (ifindex, MAC) it is attached to; `None` while the device is gone.
    attached: std::collections::BTreeMap<String, Option<(u32, [u8; 6])>>,
    /// The source block list now in the data plane.
    blocklist: Vec<ipnet::IpNet>,
    /// Set once start-up wrote the maps: health transitions before that are not written one by
    /// one (a half-checked first round would write unchecked backends down).
    started: bool,
    /// The last map write failed: the refresh timer applies again.
    retry: bool,
    /// Open flows per backend, counted off this task (see `Dataplane::spawn_flow_counter`).
    flow_counts: dataplane::FlowCounts,
    /// Forgets idle NAT connections on a thread of its own (stops when dropped).
    nat_sweeper: Option<dataplane::NatSweeper>,
    /// Refused-SYN counts per backend id at the last look (passive health).
    refused: HashMap<u32, u64>,
    /// The last two counter samples per backend id, for packet/byte rates in `status`.
    samples: HashMap<u32, [(Instant, foobar_lb_common::Counters); 2]>,
    /// Flow-state sync (`[sync]`): its tasks' counters and readiness gate.
    sync: Option<std::sync::Arc<crate::sync::SyncStats>>,
    /// What `/ready` answers; the daemon tells it about drains.
    readiness_gate: metrics::Readiness,
}

pub async fn run(config_path: &Path, opts: RunOptions) -> Result<()> {
    raise_fd_limit();
    let (api_tx, mut api) = mpsc::channel::<ApiCall>(64);
    let readiness = metrics::Readiness::default();
    // The pin directory stays locked until the data plane is left or torn down.
    // Listeners are bound before the data plane is touched; requests wait for the main loop.
    let (mut d, mut events, _lock) =
        startup::start(config_path, &opts, (api_tx, readiness.clone())).await?;
    let socket = d.config.control_socket.clone();
    if let Some(sync) = &d.sync {
        readiness.set_sync(sync.clone());
    }
    let signals = [
        tokio::signal::unix::signal(SignalKind::interrupt())?,
        tokio::signal::unix::signal(SignalKind::terminate())?,
        tokio::signal::unix::signal(SignalKind::hangup())?,
    ];
    readiness.set_ready();
    d.sync_announcements();
    d.main_loop(&mut events, &mut api, signals).await;
    readiness.set_stopping();
    let _ = std::fs::remove_file(&socket);
    shutdown(d, opts.detach_on_exit)
}

impl Daemon {
    /// Handles messages until SIGINT or SIGTERM (SIGHUP reloads the config file). Errors are
    /// logged, not returned: one failed write must not stop a daemon that keeps the rest of
    /// the data plane correct.
    async fn main_loop(
        &mut self,
        events: &mut mpsc::Receiver<HealthEvent>,
        api: &mut mpsc::Receiver<ApiCall>,
        [mut sigint, mut sigterm, mut sighup]: [Signal; 3],
    ) {
        let mut refresh = tokio::time::interval(TICK);
        // After a stall, wait a full period instead of firing missed ticks back to back: rate
        // samples taken microseconds apart would show zero.
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let mut fallback = tokio::time::interval(NETLINK_FALLBACK);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        fallback.tick().await;
        let mut observe = tokio::time::interval(OBSERVE_EVERY);
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let netlink = self.netlink.changed();
            tokio::select! {
                _ = sigint.recv() => return,
                _ = sigterm.recv() => return,
                _ = sighup.recv() => {
                    match self.reload() {
                        Ok(msg) => log::info!(event = "reload", change = msg.as_str(); "SIGHUP: {msg}"),
                        Err(e) => log::error!(event = "reload_refused", reason:% = format!("{e:#}"); "SIGHUP: {e:#}"),
                    }
                    self.sync_announcements();
                }
                Some((req, reply)) = api.recv() => {
                    // Read-only requests (asked every second by keepalived and scrapers) change
                    // nothing to announce.
                    let changes = !matches!(req, Request::Stats | Request::Ready | Request::Flows { .. } | Request::ConfigDump);
                    let _ = reply.send(self.handle(req));
                    if changes {
                        self.sync_announcements();
                    }
                }
                Some(ev) = events.recv() => {
                    if let Err(e) = self.on_health(ev) {
                        log::error!(event = "map_write_failed", reason:% = format!("{e:#}"); "applying a health change failed: {e:#}");
                    }
                }
                _ = netlink => self.on_netlink(),
                _ = observe.tick() => {
                    if let Err(e) = self.observe_refusals() {
                        log::error!(event = "map_write_failed", reason:% = format!("{e:#}"); "passive health: {e:#}");
                    }
                }
                _ = fallback.tick() => {
                    self.watch_interfaces();
                    if let Err(e) = self.refresh_neighbors() {
                        log::warn!("neighbour refresh failed: {e:#}");
                    }
                }
                _ = refresh.tick() => {
                    if self.retry {
                        if let Err(e) = self.apply() {
                            log::error!(event = "map_write_failed", reason:% = format!("{e:#}"); "retrying the map writes failed: {e:#}");
                        }
                    }
                    self.poke_unresolved();
                    self.sync_announcements();
                    if let Err(e) = self.sample_rates() {
                        log::warn!("reading counters failed: {e:#}");
                    }
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard one: health checks, map handles and the
/// metrics endpoint's connections all take descriptors, and a service manager's usual soft
/// limit (1024) is low for that. Failure is logged; the daemon runs with what it has.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(lim) => lim,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}");
            return;
        }
    };
    // An unlimited hard limit still stops at the kernel's nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = hard.min(nr_open);
    if soft >= want {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
        Ok(()) => log::info!("open-file limit raised from {soft} to {want}"),
        Err(e) => log::warn!("cannot raise the open-file limit from {soft} to {want}: {e}"),
    }
}

/// Drops the daemon (closing its map and program handles) and then either unpins the data
/// plane or leaves it forwarding for the next daemon to adopt.
fn shutdown(mut d: Daemon, detach: bool) -> Result<()> {
    let pin_dir = d.config.pin_dir.clone();
    // Routers move the flows to other nodes before this one stops forwarding them.
    if detach && d.withdraw_announcements() {
        println!(
            "foobar-lb: VIPs withdrawn; forwarding {} s more while the routers move the flows",
            announce::WITHDRAW_GRACE.as_secs()
        );
        std::thread::sleep(announce::WITHDRAW_GRACE);
    }
    drop(d);
    if detach {
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
    Ok(())
}
