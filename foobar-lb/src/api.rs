//! The control API: newline-delimited JSON over a root-only Unix socket (mode 0600).
//!
//! One request per connection: the client writes one JSON object and a newline, the daemon
//! answers with one JSON object and a newline, then closes. Requests (`cmd` field):
//!
//! | cmd | fields | answer |
//! |---|---|---|
//! | `stats` | | `snapshot` |
//! | `ready` | | `message`; refused with the reason when a configured interface has no XDP attached |
//! | `config_dump` | | `message`: the running configuration as TOML |
//! | `backend_add` | `service`, `address`, `role`?, `weight`?, `port`? | `message` |
//! | `backend_remove` / `backend_drain` / `backend_undrain` | `service`, `address` | `message` |
//! | `backend_set` | `service`, `address`, `weight`?, `role`? (at least one) | `message` |
//! | `service_add` | `service` (a `[[service]]` table as JSON) | `message` |
//! | `service_remove` | `name` | `message` |
//! | `fw_add` | `rule` (a `[[firewall.rule]]` table as JSON), `position`? | `message` |
//! | `fw_remove` | `index` (1-based) | `message` |
//! | `fw_load` | `name` (what messages call the list, e.g. its file name), `text` (the list) | `message` |
//! | `flows` | `service`?, `backend`?, `limit`? | `flows`: tracked NAT connections |
//!
//! Answers: `{"ok":true,...}` or `{"ok":false,"error":"..."}`. A refused change changes nothing.
//!
//! The daemon opens no path a request names (a FIFO or device would stall it): `fw_load`
//! carries the list itself. Both sides bound every read and write: the daemon drops a
//! connection that has not delivered its request, or taken its answer, within
//! [`DAEMON_IO_TIMEOUT`]; the CLI gives up on a daemon after `--timeout` seconds.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedWriteHalf, UnixStream},
};

use crate::config::{Role, ServiceConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Stats,
    /// Whether this node can carry the VIPs (keepalived's `track_script` asks through
    /// `foobar-lb ready`). Only the main loop answers, and it runs only once the maps are
    /// written and XDP is attached (what `/ready` means); it answers `ok` when every configured
    /// interface has the program attached, and refuses with the reason otherwise.
    Ready,
    /// The running configuration (runtime changes included) as TOML, in `message`.
    ConfigDump,
    BackendAdd {
        service: String,
        address: IpAddr,
        #[serde(default)]
        role: Option<Role>,
        #[serde(default)]
        weight: Option<u32>,
        /// The backend's port (NAT services translate to it).
        #[serde(default)]
        port: Option<u16>,
    },
    BackendRemove {
        service: String,
        address: IpAddr,
    },
    BackendDrain {
        service: String,
        address: IpAddr,
    },
    BackendUndrain {
        service: String,
        address: IpAddr,
    },
    /// Change a backend's weight and/or role in place: its id and flows stay.
    BackendSet {
        service: String,
        address: IpAddr,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        role: Option<Role>,
    },
    ServiceAdd {
        service: ServiceSpecJson,
    },
    ServiceRemove {
        name: String,
    },
    /// Insert a firewall rule at `position` (1-based; default: last).
    FwAdd {
        rule: crate::firewall::RuleConfig,
        #[serde(default)]
        position: Option<usize>,
    },
    /// Remove the rule at `index` (1-based, as `fw list` shows).
    FwRemove {
        index: usize,
    },
    /// Replace the source block list with the prefixes in `text` (one a line, `#` comments);
    /// `name` only labels messages.
    FwLoad {
        name: String,
        text: String,
    },
    /// Read the config file again and apply the difference (as SIGHUP does); the answer lists
    /// what changed.
    Reload,
    /// Make this node not ready (keepalived gives its VIPs to the other node) and withdraw its
    /// `[announce]` VIPs (routers stop sending it new flows).
    NodeDrain,
    /// Ready (and announcing) again.
    NodeUndrain,
    /// Tracked NAT connections, optionally of one service and/or backend address, at most
    /// `limit` of them (default 100; `total` says how many matched).
    Flows {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        backend: Option<IpAddr>,
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// Answer of `flows`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowsAnswer {
    /// Connections that matched (`rows` holds at most the limit of them).
    pub total: usize,
    pub rows: Vec<FlowRow>,
}

/// One tracked NAT connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRow {
    /// The service of its backend (`?` if the backend id is no longer one of a service).
    pub service: String,
    #[serde(flatten)]
    pub conn: crate::dataplane::NatConn,
}

/// A service as the CLI sends it (same fields as a `[[service]]` table).
pub type ServiceSpecJson = serde_json::Value;

/// Parses a `service_add` payload with the config file's rules.
pub fn parse_service(v: &ServiceSpecJson) -> Result<ServiceConfig, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("bad service: {e}"))
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowsAnswer>,
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    pub fn message(msg: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(msg.into()),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<foobar_lb_common::Counters> for CounterView {
    fn from(c: foobar_lb_common::Counters) -> Self {
        CounterView {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: String,
    pub role: Role,
    pub weight: u32,
    pub mac: Option<String>,
    /// `up`, `down`, `unknown` (not checked yet) or `unchecked` (checks disabled).
    pub health: String,
    /// Cause of the last failed check, if the last check failed.
    pub last_error: Option<String>,
    pub check_latency_ms: Option<f64>,
    pub drained: bool,
    /// Data-plane state: `active` (takes new flows), `draining` (keeps its flows), `down`
    /// (flows move), `unresolved` (MAC unknown: not in the data plane).
    pub state: String,
    /// Open connections on this backend: flow-table entries seen within their idle timeout
    /// and not reset (see README, the FLOWS column).
    pub flows: u64,
    /// Forwarded packets and bytes per second over the last 2 s sampling interval.
    #[serde(default)]
    pub packets_per_sec: f64,
    #[serde(default)]
    pub bytes_per_sec: f64,
    pub counters: CounterView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub counters: CounterView,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// (verdict name, packets), in the data plane's verdict order.
    pub verdicts: Vec<(String, u64)>,
    /// Open flows in all (see the FLOWS column).
    pub flows: usize,
    /// Flow-table entries (open or not) at the last count, and the configured capacity.
    #[serde(default)]
    pub flow_table_entries: u64,
    #[serde(default)]
    pub flow_table_size: u32,
    pub services: Vec<ServiceStats>,
    #[serde(default)]
    pub firewall: FirewallStats,
    /// Service and backend map writes this daemon made (an adopting daemon whose checks agree
    /// with the pinned state makes none).
    #[serde(default)]
    pub map_writes: u64,
    #[serde(default)]
    pub nat: NatStats,
    /// Service VIPs that are addresses of this host's XDP interfaces now: a pair's active node
    /// holds them (keepalived adds them), its backup none.
    #[serde(default)]
    pub vips_held: Vec<String>,
    /// Drained by the operator (`node drain`): not ready, takes no VIPs.
    #[serde(default)]
    pub drained: bool,
    /// `[announce]`, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStats>,
    #[serde(default)]
    pub netlink: NetlinkStats,
    /// `[sync]`, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSnapshot>,
}

/// Flow-state sync (`[sync]`), for `status`, `stats --json` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncSnapshot {
    /// The bulk sync completed, or the wait for one ended: the node may be ready.
    pub synced: bool,
    /// Why it is ready, or what it waits for.
    pub gate: String,
    pub peers_connected: u64,
    pub bulk_syncs: u64,
    /// New flows the program announced on its ring.
    pub ring_events: u64,
    /// Announcements lost to a full ring (the flows were forwarded all the same).
    pub ring_full: u64,
    /// Flow entries sent to peers (bulk and live).
    pub sent: u64,
    /// Live flows a slow peer's queue lost.
    pub lagged: u64,
    pub received: u64,
    pub applied: u64,
    /// Entries naming a service or backend this node lacks (skipped).
    pub unknown_backend: u64,
    /// NAT connections among `sent` and `applied`.
    #[serde(default)]
    pub nat_sent: u64,
    /// Re-announcements of live NAT connections, among `nat_sent`.
    #[serde(default)]
    pub nat_refreshed: u64,
    #[serde(default)]
    pub nat_applied: u64,
    /// Peers' NAT connections not written: a reply 5-tuple taken here, or no route or next
    /// hop here.
    #[serde(default)]
    pub nat_skipped: u64,
    /// Connections refused for a key not proven.
    pub auth_failures: u64,
    /// Milliseconds from the newest applied entry's sending to its application.
    pub lag_ms: u64,
    /// Seconds since the newest entry was applied (none yet: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_age_secs: Option<f64>,
}

/// Kernel events the daemon read (neighbour and link changes), for the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetlinkStats {
    /// Neighbour messages about configured backends' addresses.
    pub neighbour_events: u64,
    /// Link messages about configured interfaces.
    pub link_events: u64,
    /// Messages about other addresses and interfaces, dropped on arrival.
    pub ignored_events: u64,
    /// Times the kernel dropped events (receive buffer full) and the tables were read again.
    pub resyncs: u64,
}

/// What this node announces (active-active), for `status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnounceStats {
    pub interface: String,
    /// Withdrawn by `node drain`.
    pub drained: bool,
    /// The VIPs on the interface now (what the BGP daemon announces).
    pub announced: Vec<String>,
}

/// NAT connection tracking, for `status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NatStats {
    /// Connections tracked, as of the sweeper's last walk (every 2 s).
    pub connections: u64,
    /// `nat_table_size`: connections the tables can hold.
    pub table_size: u32,
}

impl StatsSnapshot {
    /// Packets counted under one verdict (`"tx"`, `"drop_blocklist"`, ...); 0 if unknown.
    pub fn verdict(&self, name: &str) -> u64 {
        self.verdicts
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |v| v.1)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirewallStats {
    /// In evaluation order; `index` is 1-based.
    pub rules: Vec<RuleStats>,
    pub blocklist_prefixes: usize,
    /// Interfaces whose VIP policy is drop.
    pub vip_policy_drop: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleStats {
    pub index: usize,
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Why a control request failed. An underlying error is the `source`, printed once by the
/// caller's `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the foobar-lb daemon at {} (is it running? start it with \
         `foobar-lb run --config FILE`, or pass --socket)", path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the foobar-lb daemon at {} did not answer within {} s (busy or stuck? see its log; \
         --timeout SECONDS waits longer)", path.display(), after.as_secs_f64()
    )]
    Timeout { path: PathBuf, after: Duration },
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an unreadable answer")]
    Decode(#[from] serde_json::Error),
    /// The daemon's answer: already the whole chain, rendered by the daemon.
    #[error("{0}")]
    Refused(String),
}

/// How long the daemon waits for a connection's request, and for its answer to be taken.
pub const DAEMON_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the CLI waits for the daemon's answer unless told otherwise.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request the daemon reads: a full block list (262,144 prefixes) fits.
pub const MAX_REQUEST: u64 = 32 << 20;

/// Sends one request and waits at most `timeout` for the whole exchange.
pub async fn call(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    tokio::time::timeout(timeout, exchange(socket, req))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                path: socket.to_owned(),
                after: timeout,
            })
        })
}

async fn exchange(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    let resp: Response = serde_json::from_str(&answer)?;
    if !resp.ok {
        return Err(ClientError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}

/// Reads one request from a connection. `Err` carries the answer for a bad request.
pub async fn read_request(
    stream: UnixStream,
) -> std::io::Result<(Result<Request, Response>, OwnedWriteHalf)> {
    let (read, write) = stream.into_split();
    let mut line = String::new();
    // Bounded: a request is one line, at most a block list long.
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    reader.read_line(&mut line).await?;
    let req = if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST {
        Err(Response::error(format!(
            "request larger than {} MiB",
            MAX_REQUEST >> 20
        )))
    } else {
        serde_json::from_str::<Request>(&line)
            .map_err(|e| Response::error(format!("bad request: {e}")))
    };
    Ok((req, write))
}

pub async fn write_response(mut w: OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}
