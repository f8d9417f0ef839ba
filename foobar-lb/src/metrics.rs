//! The daemon's HTTP endpoint: `GET /metrics` (OpenMetrics text, built per scrape from the
//! daemon's snapshot: the same numbers `foobar-lb stats` shows; Prometheus' classic text format
//! for clients whose `Accept` does not name OpenMetrics), `/ready` and `/live`.
//!
//! Served by hyper (HTTP/1.1 only). Whoever connects, the endpoint must not cost the daemon its
//! health checks, its descriptors or its main task:
//! - at most [`MAX_CONNECTIONS`] connections at once; more are closed as soon as accepted;
//! - a connection that has not sent a whole request head within [`HEADER_READ_TIMEOUT`] is
//!   closed (this is also the idle time allowed between keep-alive requests), and none lives
//!   longer than [`CONNECTION_LIFETIME`];
//! - the daemon's main task is asked for at most one snapshot at a time, and never sooner than
//!   [`MIN_SNAPSHOT_GAP`] (or 4x the last snapshot's cost) after the previous one; requests
//!   that waited share the result; a request gives up after [`SNAPSHOT_TIMEOUT`] (503);
//! - an accept error (out of descriptors) pauses the accept loop instead of spinning on it.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, Mutex, Semaphore},
};

use crate::api::{Request, Response, StatsSnapshot};

/// Connections served at once; more are closed at once. Prometheus and a few probes need a
/// handful; this keeps the endpoint far below the default limit of 1024 descriptors.
pub const MAX_CONNECTIONS: usize = 256;
/// Time allowed for a request head, from the connection's start or its previous answer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// No connection lives longer (a client that never reads its answer, say).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long a request waits for the daemon's snapshot before answering 503.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two snapshots asked by this endpoint.
pub const MIN_SNAPSHOT_GAP: Duration = Duration::from_millis(100);
/// How long the accept loop pauses after an error (no descriptor left, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Read buffer per connection (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 16 * 1024;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus' classic text format, for clients that do not ask for OpenMetrics.
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The daemon's request channel (the one the control socket uses).
pub type DaemonSender = mpsc::Sender<(Request, oneshot::Sender<Response>)>;

type Labels = Vec<(String, String)>;

/// A label value as the text format wants it. prometheus-client 0.23 writes label values
/// verbatim, so a `"`, `\` or newline would end the value early and let the text forge samples.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Renders a snapshot as OpenMetrics text.
pub fn render(s: &StatsSnapshot) -> String {
    let mut reg = Registry::with_prefix("foobar_lb");
    let counter = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let gauge = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        reg.register(name, help, f.clone());
        f
    };
    let verdicts = counter(
        &mut reg,
        "verdict_packets",
        "Packets by XDP verdict and reason",
    );
    for (name, n) in &s.verdicts {
        verdicts
            .get_or_create(&vec![("verdict".into(), label(name))])
            .inc_by(*n);
    }
    let svc_packets = counter(&mut reg, "service_packets", "Packets forwarded per service");
    let svc_bytes = counter(&mut reg, "service_bytes", "Bytes forwarded per service");
    let svc_flows = counter(
        &mut reg,
        "service_new_flows",
        "New flows scheduled per service",
    );
    let be_packets = counter(&mut reg, "backend_packets", "Packets forwarded per backend");
    let be_bytes = counter(&mut reg, "backend_bytes", "Bytes forwarded per backend");
    let be_flows = counter(
        &mut reg,
        "backend_new_flows",
        "New flows scheduled per backend",
    );
    let be_active = gauge(
        &mut reg,
        "backend_active_flows",
        "Open connections per backend (seen within their idle timeout, not reset)",
    );
    let be_up = gauge(
        &mut reg,
        "backend_up",
        "1 if the last health state is up (or unchecked)",
    );
    let be_serving = gauge(
        &mut reg,
        "backend_in_pool",
        "1 if the backend takes new flows",
    );
    let be_rate = gauge(
        &mut reg,
        "backend_packets_per_second",
        "Forwarded packets/s (2 s window)",
    );
    let be_latency = gauge(
        &mut reg,
        "backend_check_latency_seconds",
        "Last successful check time",
    );
    for svc in &s.services {
        let l = vec![("service".to_string(), label(&svc.name))];
        svc_packets.get_or_create(&l).inc_by(svc.counters.packets);
        svc_bytes.get_or_create(&l).inc_by(svc.counters.bytes);
        svc_flows.get_or_create(&l).inc_by(svc.counters.new_flows);
        for b in &svc.backends {
            let l = vec![
                ("service".to_string(), label(&svc.name)),
                ("backend".to_string(), label(&b.address)),
                ("role".to_string(), format!("{:?}", b.role).to_lowercase()),
            ];
            be_packets.get_or_create(&l).inc_by(b.counters.packets);
            be_bytes.get_or_create(&l).inc_by(b.counters.bytes);
            be_flows.get_or_create(&l).inc_by(b.counters.new_flows);
            be_active.get_or_create(&l).set(b.flows as f64);
            be_rate.get_or_create(&l).set(b.packets_per_sec);
            let up = matches!(b.health.as_str(), "up" | "unchecked");
            be_up.get_or_create(&l).set(if up { 1.0 } else { 0.0 });
            be_serving
                .get_or_create(&l)
                .set(if b.state == "active" { 1.0 } else { 0.0 });
            if let Some(ms) = b.check_latency_ms {
                be_latency.get_or_create(&l).set(ms / 1000.0);
            }
        }
    }
    let rule_packets = counter(
        &mut reg,
        "firewall_rule_packets",
        "Packets matched per rule",
    );
    let rule_bytes = counter(&mut reg, "firewall_rule_bytes", "Bytes matched per rule");
    for r in &s.firewall.rules {
        let l = vec![
            ("rule".to_string(), r.index.to_string()),
            ("spec".to_string(), label(&r.rule)),
        ];
        rule_packets.get_or_create(&l).inc_by(r.packets);
        rule_bytes.get_or_create(&l).inc_by(r.bytes);
    }
    let blocked = gauge(
        &mut reg,
        "firewall_blocklist_prefixes",
        "Prefixes in the block list",
    );
    blocked
        .get_or_create(&vec![])
        .set(s.firewall.blocklist_prefixes as f64);
    let flows = gauge(&mut reg, "flows", "Open flows in all services");
    flows.get_or_create(&vec![]).set(s.flows as f64);
    let entries = gauge(
        &mut reg,
        "flow_table_entries",
        "Entries in the flow table, open or not (LRU: the oldest are evicted when full)",
    );
    entries
        .get_or_create(&vec![])
        .set(s.flow_table_entries as f64);
    let size = gauge(
        &mut reg,
        "flow_table_size",
        "Flows the table is sized for (flow_table_size)",
    );
    size.get_or_create(&vec![]).set(s.flow_table_size as f64);
    let nat = gauge(
        &mut reg,
        "nat_connections",
        "NAT connections tracked (as of the sweeper's last walk)",
    );
    nat.get_or_create(&vec![]).set(s.nat.connections as f64);
    let nat_size = gauge(
        &mut reg,
        "nat_table_size",
        "NAT connections the tables can hold (nat_table_size)",
    );
    nat_size.get_or_create(&vec![]).set(s.nat.table_size as f64);
    let held = gauge(
        &mut reg,
        "vips_held",
        "Service VIPs that are addresses of this node's interfaces (a pair's active node holds them)",
    );
    held.get_or_create(&vec![]).set(s.vips_held.len() as f64);
    if let Some(a) = &s.announce {
        let announced = gauge(
            &mut reg,
            "vips_announced",
            "VIPs this node announces now ([announce]; 0 while drained or not ready)",
        );
        announced
            .get_or_create(&vec![])
            .set(a.announced.len() as f64);
    }
    if let Some(y) = &s.sync {
        for (name, help, value) in [
            (
                "sync_ring_events",
                "New flows the program announced for sync",
                y.ring_events,
            ),
            (
                "sync_ring_full",
                "New-flow announcements lost to a full ring (the flows were forwarded)",
                y.ring_full,
            ),
            (
                "sync_sent",
                "Flow entries sent to sync peers (bulk and live)",
                y.sent,
            ),
            (
                "sync_lagged",
                "Live flow entries a slow sync peer's queue lost",
                y.lagged,
            ),
            (
                "sync_received",
                "Flow entries received from sync peers",
                y.received,
            ),
            (
                "sync_applied",
                "Received flow entries written into the flow table",
                y.applied,
            ),
            (
                "sync_unknown_backend",
                "Flow entries skipped: their service or backend is unknown on the other side",
                y.unknown_backend,
            ),
            (
                "sync_nat_sent",
                "NAT connections sent to sync peers (also in sync_sent)",
                y.nat_sent,
            ),
            (
                "sync_nat_refreshed",
                "Re-announcements of live NAT connections to sync peers (also in sync_nat_sent)",
                y.nat_refreshed,
            ),
            (
                "sync_nat_applied",
                "Peers' NAT connections written into the NAT tables (also in sync_applied)",
                y.nat_applied,
            ),
            (
                "sync_nat_skipped",
                "Peers' NAT connections not written: reply 5-tuple taken here, or no route or next hop",
                y.nat_skipped,
            ),
            (
                "sync_auth_failures",
                "Sync connections refused: the other side did not prove the shared key",
                y.auth_failures,
            ),
            (
                "sync_bulk_syncs",
                "Bulk syncs received from peers",
                y.bulk_syncs,
            ),
        ] {
            counter(&mut reg, name, help)
                .get_or_create(&vec![])
                .inc_by(value);
        }
        for (name, help, value) in [
            (
                "sync_peers_connected",
                "Sync peers this node receives flows from",
                y.peers_connected as f64,
            ),
            (
                "sync_synced",
                "1 once the starting node's bulk sync is done (or was given up)",
                f64::from(u8::from(y.synced)),
            ),
            (
                "sync_lag_seconds",
                "From the newest applied flow's sending to its application",
                y.lag_ms as f64 / 1000.0,
            ),
            (
                "sync_last_applied_age_seconds",
                "Since the newest flow from a peer was applied (-1: none yet)",
                y.last_applied_age_secs.unwrap_or(-1.0),
            ),
        ] {
            gauge(&mut reg, name, help)
                .get_or_create(&vec![])
                .set(value);
        }
    }
    let writes = counter(
        &mut reg,
        "map_writes",
        "Service and backend map writes by this daemon (0 after a restart that changed nothing)",
    );
    writes.get_or_create(&vec![]).inc_by(s.map_writes);
    for (name, help, value) in [
        (
            "neighbour_events",
            "Kernel neighbour (ARP/NDP) messages about configured backends' addresses",
            s.netlink.neighbour_events,
        ),
        (
            "link_events",
            "Kernel link messages about configured interfaces",
            s.netlink.link_events,
        ),
        (
            "netlink_ignored_events",
            "Kernel neighbour and link messages about other addresses or interfaces",
            s.netlink.ignored_events,
        ),
        (
            "netlink_resyncs",
            "Kernel events lost to a full receive buffer, answered by reading the tables again",
            s.netlink.resyncs,
        ),
    ] {
        counter(&mut reg, name, help)
            .get_or_create(&vec![])
            .inc_by(value);
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// The same exposition in Prometheus' classic text format (0.0.4), for scrapers that do not
/// ask for OpenMetrics (Prometheus does, and gets `render`'s text as is): there a counter's
/// HELP and TYPE lines name its `_total` sample, and the text has no `# EOF`. Only counters
/// and gauges occur in `render`'s output.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, rest))) if counters.contains(name) => {
                out.push_str(&format!("{p}{name}_total {rest}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// What `/ready` answers; the daemon sets it as it starts and stops.
#[derive(Clone, Default)]
pub struct Readiness(
    Arc<AtomicU8>,
    Arc<std::sync::OnceLock<Arc<crate::sync::SyncStats>>>,
    /// Drained by the operator (`node drain`).
    Arc<std::sync::atomic::AtomicBool>,
);

/// Why a drained node is not ready (`foobar-lb ready` and `/ready` say the same).
pub const DRAINED: &str =
    "drained by the operator (`foobar-lb node drain`); `foobar-lb node undrain` takes traffic again";

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Readiness {
    /// The maps are written and XDP is attached: the daemon serves.
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::Release);
    }

    /// The daemon is leaving its main loop.
    pub fn set_stopping(&self) {
        self.0.store(STOPPING, Ordering::Release);
    }

    /// `node drain` / `undrain`: a drained node answers 503, so whatever tracks it (keepalived,
    /// a cloud load balancer's probe) sends its traffic elsewhere.
    pub fn set_drained(&self, drained: bool) {
        self.2.store(drained, Ordering::Release);
    }

    /// With `[sync]`: `/ready` also waits for the start-up bulk sync, as `foobar-lb ready` does.
    pub fn set_sync(&self, sync: Arc<crate::sync::SyncStats>) {
        let _ = self.1.set(sync);
    }

    /// What `/ready` answers: [`Readiness::check`], and the sync gate if there is one.
    fn check_ready(&self) -> Result<(), String> {
        self.check().map_err(str::to_owned)?;
        if self.2.load(Ordering::Acquire) {
            return Err(DRAINED.to_owned());
        }
        match self.1.get() {
            Some(sync) => sync.ready(),
            None => Ok(()),
        }
    }

    /// `Err(reason)` unless ready.
    fn check(&self) -> Result<(), &'static str> {
        match self.0.load(Ordering::Acquire) {
            READY => Ok(()),
            STARTING => Err("starting: the maps are not written yet"),
            _ => Err("stopping"),
        }
    }
}

/// Snapshots asked from the daemon's main task: one at a time, spaced, shared by the requests
/// that waited for them.
struct Snapshots {
    daemon: DaemonSender,
    last: Mutex<Option<Fetched>>,
}

struct Fetched {
    done: Instant,
    cost: Duration,
    snap: Arc<StatsSnapshot>,
}

impl Snapshots {
    async fn get(&self) -> Result<Arc<StatsSnapshot>, String> {
        let asked = Instant::now();
        let fetch = async {
            // Held while asking: one snapshot in flight; the others wait here.
            let mut last = self.last.lock().await;
            if let Some(f) = last.as_ref() {
                if f.done >= asked {
                    return Ok(f.snap.clone());
                }
                let gap = (f.cost * 4).max(MIN_SNAPSHOT_GAP);
                tokio::time::sleep_until((f.done + gap).into()).await;
            }
            let start = Instant::now();
            let (tx, rx) = oneshot::channel();
            let stopping = "the daemon is stopping".to_string();
            if self.daemon.send((Request::Stats, tx)).await.is_err() {
                return Err(stopping);
            }
            let resp = rx.await.map_err(|_| stopping)?;
            let snap = Arc::new(resp.stats.ok_or_else(|| {
                resp.error
                    .unwrap_or_else(|| "the daemon sent no snapshot".into())
            })?);
            *last = Some(Fetched {
                done: Instant::now(),
                cost: start.elapsed(),
                snap: snap.clone(),
            });
            Ok(snap)
        };
        tokio::time::timeout(SNAPSHOT_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the daemon did not answer within {} ms",
                    SNAPSHOT_TIMEOUT.as_millis()
                ))
            })
    }
}

struct Shared {
    snapshots: Snapshots,
    readiness: Readiness,
    /// Changes from the stats page need it; `None`: the page is read-only.
    admin_token: Option<String>,
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn unavailable(why: impl std::fmt::Display) -> Reply {
    reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n"))
}

/// Answers one request: `/metrics`, `/ready`, `/live`, the stats page (`/`) and its
/// `/api/stats` (GET or HEAD), and the page's changes (`POST /api/backend`).
async fn answer(req: hyper::Request<Incoming>, shared: &Shared) -> Reply {
    if req.method() == Method::POST && req.uri().path() == "/api/backend" {
        if let Err(why) = shared.readiness.check() {
            return unavailable(why);
        }
        let (status, body) =
            crate::stats_page::admin(req, shared.admin_token.as_deref(), &shared.snapshots.daemon)
                .await;
        return reply(status, TEXT, body);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET or HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            if let Err(why) = shared.readiness.check() {
                return unavailable(why);
            }
            let openmetrics = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.to_ascii_lowercase()
                        .contains("application/openmetrics-text")
                });
            match shared.snapshots.get().await {
                Ok(s) if openmetrics => reply(StatusCode::OK, OPENMETRICS, render(&s)),
                Ok(s) => reply(StatusCode::OK, CLASSIC, classic_text(&render(&s))),
                Err(why) => unavailable(why),
            }
        }
        "/" | "/stats" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::stats_page::PAGE.to_string(),
        ),
        "/api/stats" => {
            if let Err(why) = shared.readiness.check() {
                return unavailable(why);
            }
            match shared.snapshots.get().await {
                Ok(s) => reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&*s).unwrap_or_default(),
                ),
                Err(why) => unavailable(why),
            }
        }
        "/ready" => match shared.readiness.check_ready() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => unavailable(why),
        },
        // Live while the main loop answers; before it runs (start-up) and once it stopped,
        // nobody asks it.
        "/live" => match shared.readiness.check() {
            Err(why) => unavailable(why),
            Ok(()) => match shared.snapshots.get().await {
                Ok(_) => reply(StatusCode::OK, TEXT, "live\n".into()),
                Err(why) => unavailable(why),
            },
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /ready, /live, or / (the stats page)\n".into(),
        ),
    }
}

/// Logs a repeated condition at most every 10 s, with how often it happened meanwhile.
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            count: 0,
        }
    }

    fn warn(&mut self, what: impl FnOnce(u64) -> String) {
        self.count += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            log::warn!("metrics endpoint: {}", what(self.count));
            self.last = Some(Instant::now());
            self.count = 0;
        }
    }
}

/// Serves the endpoint until the daemon stops. `/metrics` and `/live` ask the daemon's main
/// task for a snapshot over `daemon`; `/ready` reads `readiness`.
pub async fn serve(
    listener: TcpListener,
    daemon: DaemonSender,
    readiness: Readiness,
    admin_token: Option<String>,
) {
    let shared = Arc::new(Shared {
        snapshots: Snapshots {
            daemon,
            last: Mutex::new(None),
        },
        readiness,
        admin_token,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (mut accept_errors, mut refused) = (Throttled::new(), Throttled::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // The connection stays queued, so retrying at once would spin.
                accept_errors.warn(|n| format!("accept failed ({n} time(s)): {e}"));
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused
                .warn(|n| format!("{n} connection(s) closed: already serving {MAX_CONNECTIONS}"));
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(|req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(req, &shared).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::api::{FirewallStats, RuleStats};

    fn snapshot(rule: &str) -> StatsSnapshot {
        StatsSnapshot {
            verdicts: vec![("tx".into(), 7)],
            flows: 3,
            flow_table_entries: 5,
            flow_table_size: 1024,
            services: vec![],
            firewall: FirewallStats {
                rules: vec![RuleStats {
                    index: 1,
                    rule: rule.into(),
                    packets: 1,
                    bytes: 60,
                }],
                ..Default::default()
            },
            map_writes: 2,
            nat: crate::api::NatStats {
                connections: 5,
                table_size: 1024,
            },
            announce: None,
            vips_held: vec![],
            drained: false,
            netlink: crate::api::NetlinkStats {
                neighbour_events: 3,
                link_events: 4,
                ignored_events: 5,
                resyncs: 6,
            },
            sync: None,
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&snapshot("drop \"x\" \\ y\nfoobar_lb_flows 999"));
        assert!(
            text.contains(r#"spec="drop \"x\" \\ y\nfoobar_lb_flows 999"}"#),
            "{text}"
        );
        // The value could not forge a sample of its own.
        assert!(!text.lines().any(|l| l.starts_with("foobar_lb_flows 999")));
    }

    #[test]
    fn classic_text_names_counter_samples_and_has_no_eof() {
        let text = classic_text(&render(&snapshot("drop")));
        assert!(text.contains(
            "# HELP foobar_lb_verdict_packets_total Packets by XDP verdict and reason.\n\
             # TYPE foobar_lb_verdict_packets_total counter\n\
             foobar_lb_verdict_packets_total{verdict=\"tx\"} 7\n"
        ));
        assert!(text.contains("# TYPE foobar_lb_flows gauge\nfoobar_lb_flows{} 3.0\n"));
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn kernel_event_counters_are_exported() {
        let text = render(&snapshot("drop"));
        for line in [
            "foobar_lb_neighbour_events_total{} 3",
            "foobar_lb_link_events_total{} 4",
            "foobar_lb_netlink_ignored_events_total{} 5",
            "foobar_lb_netlink_resyncs_total{} 6",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn sync_counters_are_exported_only_with_sync() {
        assert!(!render(&snapshot("drop")).contains("foobar_lb_sync"));
        let mut s = snapshot("drop");
        s.sync = Some(crate::api::SyncSnapshot {
            synced: true,
            peers_connected: 1,
            ring_full: 2,
            applied: 40,
            unknown_backend: 3,
            nat_applied: 5,
            nat_skipped: 6,
            auth_failures: 4,
            lag_ms: 1500,
            ..Default::default()
        });
        let text = render(&s);
        for line in [
            "foobar_lb_sync_ring_full_total{} 2",
            "foobar_lb_sync_applied_total{} 40",
            "foobar_lb_sync_unknown_backend_total{} 3",
            "foobar_lb_sync_auth_failures_total{} 4",
            "foobar_lb_sync_nat_applied_total{} 5",
            "foobar_lb_sync_nat_skipped_total{} 6",
            "foobar_lb_sync_peers_connected{} 1",
            "foobar_lb_sync_synced{} 1",
            "foobar_lb_sync_lag_seconds{} 1.5",
            "foobar_lb_sync_last_applied_age_seconds{} -1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    /// A daemon stand-in answering `stats` requests; counts them.
    fn fake_daemon(delay: Duration) -> (DaemonSender, Arc<std::sync::atomic::AtomicUsize>) {
        let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(64);
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = asked.clone();
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let _ = reply.send(Response {
                    ok: true,
                    stats: Some(snapshot("drop")),
                    ..Default::default()
                });
            }
        });
        (tx, asked)
    }

    async fn start(
        delay: Duration,
    ) -> (SocketAddr, Readiness, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (daemon, asked) = fake_daemon(delay);
        let readiness = Readiness::default();
        tokio::spawn(serve(listener, daemon, readiness.clone(), None));
        (addr, readiness, asked)
    }

    /// One request with `Connection: close`; the status code and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let (code, _, body) = get_with(addr, path, "").await;
        (code, body)
    }

    /// One request with extra header lines; the status code, response head and body.
    async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).await.unwrap();
        let code = text[9..12].parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (code, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn probes_follow_readiness_and_metrics_render() {
        let (addr, readiness, asked) = start(Duration::ZERO).await;
        assert_eq!(get(addr, "/ready").await.0, 503);
        assert_eq!(get(addr, "/live").await.0, 503);
        assert_eq!(get(addr, "/metrics").await.0, 503);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            0,
            "nobody asks a daemon still starting"
        );
        readiness.set_ready();
        // With [sync], /ready waits for the bulk sync too; /live does not.
        let sync = Arc::new(crate::sync::SyncStats::default());
        sync.set_gate("syncing flows: waiting".into(), false);
        readiness.set_sync(sync.clone());
        assert_eq!(
            get(addr, "/ready").await,
            (503, "syncing flows: waiting\n".into())
        );
        assert_eq!(get(addr, "/live").await, (200, "live\n".into()));
        sync.set_gate("flows synced".into(), true);
        assert_eq!(get(addr, "/ready").await, (200, "ready\n".into()));
        assert_eq!(get(addr, "/live").await, (200, "live\n".into()));
        // A drained node is alive but not ready, until undrained.
        readiness.set_drained(true);
        assert_eq!(get(addr, "/ready").await, (503, format!("{DRAINED}\n")));
        assert_eq!(get(addr, "/live").await, (200, "live\n".into()));
        readiness.set_drained(false);
        assert_eq!(get(addr, "/ready").await, (200, "ready\n".into()));
        // Prometheus asks for OpenMetrics; others get the classic text format.
        let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
        let (code, head, body) = get_with(addr, "/metrics", accept).await;
        assert_eq!(code, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            body.contains("foobar_lb_flows{} 3.0\n") && body.ends_with("# EOF\n"),
            "{body}"
        );
        let (code, head, body) = get_with(addr, "/metrics", "").await;
        assert_eq!(code, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(body, classic_text(&render(&snapshot("drop"))));
        assert_eq!(get(addr, "/other").await.0, 404);
        readiness.set_stopping();
        assert_eq!(get(addr, "/ready").await, (503, "stopping\n".into()));
    }

    #[tokio::test]
    async fn a_slow_daemon_gets_503_and_one_request_at_a_time() {
        let (addr, readiness, asked) = start(Duration::from_secs(5)).await;
        readiness.set_ready();
        let t = Instant::now();
        let scrapes: Vec<_> = (0..8)
            .map(|_| tokio::spawn(async move { get(addr, "/metrics").await.0 }))
            .collect();
        for s in scrapes {
            assert_eq!(s.await.unwrap(), 503);
        }
        assert!(t.elapsed() < SNAPSHOT_TIMEOUT + Duration::from_secs(1));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one snapshot in flight at most"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_idle_ones_time_out() {
        let (addr, readiness, _) = start(Duration::ZERO).await;
        readiness.set_ready();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server take them all before the one too many.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(1), extra.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // The idle ones are closed after the header-read timeout; then a scrape gets in.
        let t = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(HEADER_READ_TIMEOUT * 2, idle[0].read_to_end(&mut rest))
            .await
            .expect("idle connection closed")
            .ok();
        assert!(t.elapsed() <= HEADER_READ_TIMEOUT + Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(addr, "/metrics").await.0, 200);
    }
}
