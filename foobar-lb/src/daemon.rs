//! `foobar-lb run`: load and attach the data plane, keep the maps true to the configuration,
//! serve the control API, detach on SIGINT/SIGTERM.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use foobar_lb_common::{verdict, ServiceKey};
use tokio::{net::UnixListener, signal::unix::SignalKind};

use crate::{
    api::{self, BackendStats, Request, Response, ServiceStats, StatsSnapshot},
    config::{Config, XdpMode},
    dataplane::{Dataplane, LoadOptions},
    neighbor::{self, Mac},
    reconcile::{BackendSpec, BackendState, Reconciler, ServiceSpec},
};

/// How long start-up waits for backend MACs before going on without the missing ones.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often unresolved or changed backend MACs are looked up again.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(5);

pub struct RunOptions {
    /// Overrides the config's `xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
}

struct State {
    config: Config,
    dataplane: Dataplane,
    reconciler: Reconciler,
    macs: HashMap<IpAddr, Mac>,
}

impl State {
    fn desired(&self) -> Vec<ServiceSpec> {
        desired_state(&self.config, &self.macs)
    }

    fn apply(&mut self) -> Result<()> {
        let ops = self.reconciler.plan(&self.desired())?;
        if !ops.is_empty() {
            log::debug!("applying {} map operations", ops.len());
        }
        self.dataplane.execute(&ops)?;
        Ok(())
    }

    fn stats(&self) -> Result<StatsSnapshot> {
        let verdicts = self.dataplane.verdicts()?;
        let mut services = Vec::new();
        for svc in &self.config.services {
            let Some(w) = self.reconciler.services().get(&svc.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for b in &svc.backends {
                let written = w.backends.get(&b.address);
                backends.push(BackendStats {
                    address: b.address.to_string(),
                    mac: self.macs.get(&b.address).map(neighbor::format_mac),
                    state: match written {
                        Some(x) => format!("{:?}", x.state).to_lowercase(),
                        None => "unresolved".into(),
                    },
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
        Ok(StatsSnapshot {
            verdicts: verdict::NAMES
                .iter()
                .zip(verdicts)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            flows: self.dataplane.flow_count()?,
            services,
        })
    }
}

/// The data plane's desired content for `config`, given the backend MACs known so far.
pub fn desired_state(config: &Config, macs: &HashMap<IpAddr, Mac>) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            key: ServiceKey::new(s.vip, s.port, s.protocol.number()),
            backends: s
                .backends
                .iter()
                .map(|b| BackendSpec {
                    addr: b.address,
                    mac: macs.get(&b.address).copied(),
                    state: BackendState::Active,
                    weight: 1,
                })
                .collect(),
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

    let dataplane = Dataplane::load(&LoadOptions {
        flow_table_size: config.flow_table_size,
    })?;
    let mut state = State {
        config,
        dataplane,
        reconciler: Reconciler::default(),
        macs,
    };
    // Maps are filled before attaching, so the first packet already sees the services.
    state.apply()?;
    for iface in state.config.interfaces.clone() {
        let attached = state.dataplane.attach(&iface, mode)?;
        println!("foobar-lb: XDP attached to {iface} in {attached} mode");
    }
    let n_backends: usize = state.config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "foobar-lb: {} service(s), {}/{} backend MAC(s) resolved; control socket {}",
        state.config.services.len(),
        state.macs.len(),
        n_backends,
        socket.display()
    );

    let state = Arc::new(Mutex::new(state));
    let listener = bind_socket(&socket)?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut refresh = tokio::time::interval(NEIGHBOR_REFRESH);
    refresh.tick().await;

    let result = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let r = api::serve_one(stream, |req| handle(&state, req)).await;
                    if let Err(e) = r {
                        log::debug!("control connection: {e}");
                    }
                });
            }
            _ = refresh.tick() => {
                if let Err(e) = refresh_neighbors(&state).await {
                    log::warn!("neighbour refresh failed: {e:#}");
                }
            }
        }
    };
    let _ = std::fs::remove_file(&socket);
    // Dropping the state detaches the program and frees the maps.
    drop(state);
    println!("foobar-lb: detached, exiting");
    result
}

fn handle(state: &Mutex<State>, req: Request) -> Response {
    let state = state.lock().expect("state lock poisoned");
    match req {
        Request::Stats => match state.stats() {
            Ok(s) => Response {
                ok: true,
                error: None,
                stats: Some(s),
            },
            Err(e) => Response::error(format!("{e:#}")),
        },
    }
}

/// Looks up backend MACs again: picks up backends that were down at start and MAC changes.
async fn refresh_neighbors(state: &Arc<Mutex<State>>) -> Result<()> {
    let (addrs, ifaces) = {
        let s = state.lock().expect("state lock poisoned");
        (backend_addrs(&s.config), s.config.interfaces.clone())
    };
    let found = tokio::task::spawn_blocking(move || {
        neighbor::resolve_all(&addrs, &ifaces, Duration::from_millis(500))
    })
    .await??;
    let mut s = state.lock().expect("state lock poisoned");
    if found != s.macs {
        for (addr, mac) in &found {
            if s.macs.get(addr) != Some(mac) {
                log::info!("backend {addr} is at {}", neighbor::format_mac(mac));
            }
        }
        s.macs = found;
        s.apply()?;
    }
    Ok(())
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
