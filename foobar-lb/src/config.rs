//! The TOML configuration: parsing and validation. Nothing here touches the kernel, so every rule
//! is unit-tested on the host; checks that need the host (does the interface exist?) live in
//! [`Config::check_host`].

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Errors in a configuration file. Each names what is wrong and where; an underlying error is
/// the `source`, printed once by the caller's `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not valid TOML or does not fit the schema.
    #[error("invalid config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Like `Parse`, for text that did not come from a file.
    #[error("invalid config")]
    Syntax(#[source] Box<toml::de::Error>),
    #[error("cannot write the config as TOML")]
    Serialize(#[source] toml::ser::Error),
    #[error("health status {status:?}: use \"200\" or \"200-399\"")]
    HealthStatus { status: String },
    /// Bad firewall rules or block lists: the firewall's error says which and where.
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    /// An interface that does not exist on this host.
    #[error(transparent)]
    Netdev(#[from] crate::netdev::NetdevError),
    /// A rule of the schema is broken; the text names the setting and the rule.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// How the XDP program is attached.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode: the fast path on real NICs.
    Native,
    /// Generic (SKB) mode: works everywhere; faster than native on veth.
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => foobar_lb_common::PROTO_TCP,
            Protocol::Udp => foobar_lb_common::PROTO_UDP,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the XDP program is attached to.
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Unix socket of the control API.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// bpffs directory where maps and XDP links are pinned, so the data plane outlives the daemon
    /// and a new daemon adopts it.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Prometheus metrics endpoint and stats page (`host:port`); empty string disables it.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: String,
    /// Allows drain, undrain and weight changes from the stats page to requests bearing it
    /// (`Authorization: Bearer ...`); absent, the page is read-only. 16 to 128 visible ASCII.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Flow table capacity; the least recently used flows are evicted beyond it.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// NAT connection table capacity (services with `forwarding = "nat"`): connections are
    /// never evicted; a new one is dropped when the table is full.
    #[serde(default = "default_nat_table_size")]
    pub nat_table_size: u32,
    /// `[nat]`: idle timeouts of tracked NAT connections.
    #[serde(default)]
    pub nat: NatConfig,
    /// Interface -> VLAN ids whose tagged frames are balanced there. Untagged frames always
    /// are; frames with another tag (or two tags) go to the kernel after the firewall.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vlans: BTreeMap<String, Vec<u16>>,
    #[serde(default)]
    pub firewall: FirewallConfig,
    /// Drained by the operator (`foobar-lb node drain` sets it; config-dump keeps it): the node
    /// says it is not ready, so keepalived's `track_script` moves the VIPs to the other node,
    /// and `[announce]` withdraws them; whatever still arrives is forwarded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drained: bool,
    /// `[announce]`: routes to this node's VIPs for a BGP daemon to announce (active-active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// `[sync]`: flow-state sync with the other balancer nodes (README "Redundancy").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// `[announce]`: while this node serves, every service VIP is an address (/32, /128) on
/// `interface`, where a BGP daemon on the node (BIRD's `protocol direct`) picks it up and
/// announces it to the routers; `foobar-lb node drain` withdraws them all.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// A dummy interface of the host's (`ip link add lbvips type dummy`), not one XDP runs on.
    pub interface: String,
}

/// `[sync]`: this node streams the flows its data plane creates to every peer, and writes
/// theirs into its own flow table; a (re)starting node is not ready before a bulk sync.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Where peers connect (`address:port`, an address of this node).
    pub listen: std::net::SocketAddr,
    /// The other nodes' `listen` addresses.
    pub peers: Vec<std::net::SocketAddr>,
    /// File holding the shared secret (at least [`SYNC_KEY_MIN`] bytes, the same on every
    /// node), readable by its owner only.
    pub key_file: PathBuf,
    /// How long a starting node waits for a bulk sync while no peer answers, before it
    /// declares itself ready anyway (the first node of a cluster has nobody to sync from).
    #[serde(default = "default_bulk_timeout_ms")]
    pub bulk_timeout_ms: u64,
}

/// Shortest shared secret `[sync]` accepts, in bytes (as HMAC-SHA256's output).
pub const SYNC_KEY_MIN: usize = 32;

fn default_bulk_timeout_ms() -> u64 {
    5000
}

impl SyncConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.peers.is_empty() {
            return Err(invalid(
                "sync.peers is empty: name the other nodes' sync.listen",
            ));
        }
        if self.peers.contains(&self.listen) {
            return Err(invalid(format!(
                "sync.peers lists this node's own sync.listen {}",
                self.listen
            )));
        }
        if self.listen.port() == 0 {
            return Err(invalid("sync.listen needs a port"));
        }
        if !(100..=600_000).contains(&self.bulk_timeout_ms) {
            return Err(invalid(format!(
                "sync.bulk_timeout_ms {} is out of range 100..=600000",
                self.bulk_timeout_ms
            )));
        }
        Ok(())
    }

    /// The shared secret: the key file's bytes, surrounding whitespace trimmed. Refused when
    /// missing, too short, or readable by anyone but its owner.
    pub fn load_key(&self) -> Result<Vec<u8>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let path = &self.key_file;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(format!("sync.key_file {shown}: cannot read it: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "sync.key_file {shown} is readable by others (mode {mode:o}): `chmod 600` it"
            )));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| invalid(format!("sync.key_file {shown}: cannot read it: {e}")))?;
        let key = bytes.trim_ascii().to_vec();
        if key.len() < SYNC_KEY_MIN {
            return Err(invalid(format!(
                "sync.key_file {shown} holds {} bytes; at least {SYNC_KEY_MIN} are needed \
                 (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                key.len()
            )));
        }
        Ok(key)
    }
}

pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/foobar-lb")
}

fn default_metrics_address() -> String {
    "127.0.0.1:9641".into()
}

fn default_flow_table_size() -> u32 {
    foobar_lb_common::DEFAULT_FLOWS
}

fn default_nat_table_size() -> u32 {
    foobar_lb_common::DEFAULT_NAT
}

/// `[nat]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    #[serde(default)]
    pub timeouts: NatTimeouts,
}

/// `[nat.timeouts]`: how long (seconds) a tracked NAT connection may stay idle in each state
/// before the sweeper forgets it. Conntrack-like states, judged from the TCP flags seen in
/// each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatTimeouts {
    /// TCP, the backend has not answered yet (conntrack's SYN_SENT is 120).
    pub tcp_syn: u32,
    /// TCP, both sides have spoken, no FIN or RST: longer than Linux's default keepalive
    /// time (7200 s) plus its probes, so an idle connection kept alive is never forgotten,
    /// and short enough that the connections of vanished clients do not fill the table for
    /// days (conntrack's 5 days; IPVS's 900 s cuts idle keepalive connections).
    pub tcp_established: u32,
    /// TCP, a FIN seen in either direction (conntrack's FIN_WAIT/TIME_WAIT are 120).
    pub tcp_closing: u32,
    /// TCP, a RST seen (conntrack's CLOSE is 10).
    pub tcp_closed: u32,
    /// UDP, no answer yet (conntrack's 30).
    pub udp: u32,
    /// UDP, answered: a stream (conntrack's 120).
    pub udp_stream: u32,
}

impl Default for NatTimeouts {
    fn default() -> NatTimeouts {
        NatTimeouts {
            tcp_syn: 60,
            tcp_established: 7440,
            tcp_closing: 120,
            tcp_closed: 10,
            udp: 30,
            udp_stream: 120,
        }
    }
}

/// `forwarding` of a service: how packets reach its backends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingKind {
    /// Direct server return: backends hold the VIP and answer clients themselves.
    #[default]
    Dsr,
    /// Destination NAT (one arm): the balancer rewrites the destination to the backend's
    /// address and port, and the replies' source back to the VIP; backends route their
    /// replies through the balancer.
    Nat,
    /// Full NAT: as `nat`, and the source becomes one of the service's `snat` addresses and a
    /// port of `snat_ports`, so backends answer the balancer with no route through it (and a
    /// backend can be a client of its own service); they see the SNAT address, not the client.
    Fullnat,
}

/// `snat_ports` of a full-NAT service: an inclusive range of source ports, written "LO-HI".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// Default `snat_ports`.
pub const DEFAULT_SNAT_PORTS: PortRange = PortRange {
    lo: 1024,
    hi: 65535,
};

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<PortRange, String> {
        s.parse()
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let bad = || format!("port range {s:?} is not LO-HI with 1 <= LO <= HI <= 65535");
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        format!("{}-{}", r.lo, r.hi)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

pub fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/foobar-lb/control.sock")
}

/// Service names are 1 to 64 of `[A-Za-z0-9_.-]`: they go into metrics labels, logs and
/// CLI tables, so none needs quoting or escaping anywhere.
pub fn valid_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// How packets reach the backends (default: direct server return).
    #[serde(default, skip_serializing_if = "is_default")]
    pub forwarding: ForwardingKind,
    /// `forwarding = "fullnat"`: the source addresses connections to backends take (at least
    /// one of the backends' family; several of a family are spread by the client's hash).
    /// Addresses of the balancer's own, answered for on the backends' segment, and used for
    /// nothing else is the expectation (see README "Full NAT").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat: Vec<IpAddr>,
    /// `forwarding = "fullnat"`: the source ports, "LO-HI" (default 1024-65535). TCP/UDP to a
    /// SNAT address on these ports is the balancer's: untracked packets there are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<PortRange>,
    /// Which backups serve when no primary is healthy.
    #[serde(default)]
    pub failover: Failover,
    /// How new flows pick a backend.
    #[serde(default)]
    pub scheduler: SchedulerKind,
    /// Maglev table size: a prime, at most 65537 (the default), at least 10 times the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<u32>,
    #[serde(default)]
    pub health: HealthConfig,
    /// Per-source limit on new flows (TCP SYNs, new UDP flows).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// New flows per second per source address.
    pub per_source: u32,
    /// Bucket depth: new flows a source may open at once (default: `per_source`).
    pub burst: Option<u32>,
    /// IPv6 sources share one bucket per prefix of this length (default 64: one host usually
    /// holds a whole /64, so per-address buckets would not limit it).
    pub ipv6_prefix: Option<u8>,
}

/// Default of [`RateLimit::ipv6_prefix`].
pub const DEFAULT_RATE_IPV6_PREFIX: u8 = 64;

impl ServiceConfig {
    /// The source port range of a full-NAT service.
    pub fn snat_ports(&self) -> PortRange {
        self.snat_ports.unwrap_or(DEFAULT_SNAT_PORTS)
    }

    /// (rate, burst, IPv6 source prefix length) for the data plane; (0, 0, _) when unlimited.
    pub fn rate_limit(&self) -> (u32, u32, u8) {
        self.rate_limit
            .map(|r| {
                (
                    r.per_source,
                    r.burst.unwrap_or(r.per_source),
                    r.ipv6_prefix.unwrap_or(DEFAULT_RATE_IPV6_PREFIX),
                )
            })
            .unwrap_or((0, 0, DEFAULT_RATE_IPV6_PREFIX))
    }
}

/// `scheduler` of a service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Weighted round robin (one cursor shared by all CPUs).
    #[default]
    Roundrobin,
    /// Weighted Maglev consistent hashing: the same backends give the same choice on every
    /// balancer, and a change of backends moves few flows.
    Maglev,
}

impl ServiceConfig {
    /// The scheduler the data plane runs for this service.
    pub fn scheduler(&self) -> crate::schedule::Scheduler {
        match self.scheduler {
            SchedulerKind::Roundrobin => crate::schedule::Scheduler::RoundRobin,
            SchedulerKind::Maglev => crate::schedule::Scheduler::Maglev {
                table_size: self
                    .maglev_table_size
                    .unwrap_or(foobar_lb_common::MAGLEV_DEFAULT_SIZE),
            },
        }
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| n.checked_rem(d) != Some(0))
}

/// `[firewall]`: see `crate::firewall` for the evaluation order.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    // Field order matters for `config-dump`: TOML wants plain values before tables.
    /// Block-list files (one prefix a line) loaded at start.
    #[serde(default)]
    pub blocklists: Vec<PathBuf>,
    /// Prefixes blocked in addition to the files' (`fw load` puts the list it loads here, so
    /// `config-dump` keeps it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<ipnet::IpNet>,
    /// Interface -> policy for traffic to a VIP address that matches no service.
    #[serde(default)]
    pub vip_policy: std::collections::BTreeMap<String, VipPolicy>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<crate::firewall::RuleConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VipPolicy {
    Allow,
    Drop,
}

/// Which healthy backups take new flows when no primary is healthy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    /// The first healthy backup, in configuration order (HAProxy's default).
    #[default]
    First,
    /// Every healthy backup, round-robin (HAProxy's `allbackups`).
    All,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    /// Serves only when no primary is healthy (HAProxy `backup`).
    Backup,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect to the backend.
    #[default]
    Tcp,
    /// An HTTP/1.0 GET of `path`, expecting a status in `status`.
    Http,
    /// A TLS handshake (the certificate chain is not verified: backends are addressed by IP,
    /// not by name; the handshake proves a TLS server holding its key answers).
    Tls,
    /// A TLS handshake, then the `http` check's GET over it.
    Https,
    /// The MySQL/MariaDB server greeting (HAProxy's `option mysql-check`); with `mysql_user`,
    /// a login as that user with an empty password, then `COM_QUIT`.
    Mysql,
    /// Runs `command` (HAProxy's `external-check`): exit status 0 is a success.
    External,
    /// No checks: backends are always considered healthy.
    None,
}

impl CheckKind {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Tls => "tls",
            CheckKind::Https => "https",
            CheckKind::Mysql => "mysql",
            CheckKind::External => "external",
            CheckKind::None => "none",
        }
    }
}

/// Health checks of one service's backends (HAProxy `check inter/rise/fall` semantics).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub check: CheckKind,
    /// Port to check; defaults to the backend's (the service's) port.
    pub port: Option<u16>,
    /// HTTP path for `check = "http"`.
    pub path: String,
    /// Accepted HTTP statuses: `"200"` or `"200-399"`.
    pub status: String,
    /// Time from the start of one check to the start of the next (while up).
    pub interval_ms: u64,
    /// HAProxy's `fastinter`: the interval while a backend is in transition (between its first
    /// contrary result and the `rise`/`fall` threshold). Default: `interval_ms`.
    pub fastinter_ms: Option<u64>,
    /// HAProxy's `downinter`: the interval while a backend is down. Default: `interval_ms`.
    pub downinter_ms: Option<u64>,
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// What happens to a backend's established connections when checks mark it down.
    pub on_marked_down: OnMarkedDown,
    /// HAProxy's `observe layer4` with `on-error mark-down`: passive health from live traffic.
    /// With `"layer4"` (NAT and full-NAT services only: the balancer sees their replies), a
    /// backend that refuses a new connection (answers its SYN with a RST) is marked down at
    /// once, as by `fall` failed checks; the checks bring it back after `rise`. Default: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observe: Option<Observe>,
    /// Host header of `http`/`https` checks. Default: the backend's address (IPv6 in
    /// brackets), with the port when it is not the scheme's (80, 443).
    pub host: Option<String>,
    /// TLS server name (SNI) of `tls`/`https` checks. Default: the host name of `host` when
    /// that is a name; none for an IP address.
    pub sni: Option<String>,
    /// Source address the checks' sockets are bound to (default: the kernel's choice).
    pub source: Option<IpAddr>,
    /// Interface through which link-local IPv6 backends (`fe80::/10`) are checked: the scope
    /// of their address. Required when a checked backend is link-local.
    pub interface: Option<String>,
    /// `mysql` checks: log in as this user (empty password), then quit, so the server does
    /// not count each check as an aborted connection. Without it the check reads the
    /// greeting and closes.
    pub mysql_user: Option<String>,
    /// `external` checks: the program (an absolute path) and its arguments, run without a
    /// shell.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// `health.observe`: what live traffic tells the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Observe {
    /// A refused connection (RST to the SYN) marks the backend down.
    #[serde(rename = "layer4")]
    Layer4,
}

/// HAProxy's `on-marked-down`: by default a backend marked down keeps its established
/// connections (a 503 during a graceful shutdown, a check timeout under load); with
/// `shutdown-sessions` they move to another backend on their next packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMarkedDown {
    #[default]
    Keep,
    ShutdownSessions,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::Tcp,
            port: None,
            path: "/".into(),
            status: "200-399".into(),
            interval_ms: 2000,
            fastinter_ms: None,
            downinter_ms: None,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            on_marked_down: OnMarkedDown::Keep,
            observe: None,
            host: None,
            sni: None,
            source: None,
            interface: None,
            mysql_user: None,
            command: Vec::new(),
        }
    }
}

/// Longest `mysql_user` (MariaDB's limit on user names).
pub const MYSQL_USER_MAX: usize = 80;

impl HealthConfig {
    /// The accepted status range.
    pub fn status_range(&self) -> Result<(u16, u16), ConfigError> {
        let bad = || ConfigError::HealthStatus {
            status: self.status.clone(),
        };
        let (lo, hi) = match self.status.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let v = self.status.trim().parse().map_err(|_| bad())?;
                (v, v)
            }
        };
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        Ok((lo, hi))
    }

    /// The interval while transitioning (`fastinter_ms`, else `interval_ms`).
    pub fn fastinter_ms(&self) -> u64 {
        self.fastinter_ms.unwrap_or(self.interval_ms)
    }

    /// The interval while down (`downinter_ms`, else `interval_ms`).
    pub fn downinter_ms(&self) -> u64 {
        self.downinter_ms.unwrap_or(self.interval_ms)
    }

    /// The TLS server name to send: `sni`, else `host`'s name part when it is a DNS name.
    pub fn server_name(&self) -> Option<rustls::pki_types::ServerName<'static>> {
        let name = match (&self.sni, &self.host) {
            (Some(sni), _) => sni.as_str(),
            (None, Some(host)) => host_name_part(host)?,
            (None, None) => return None,
        };
        dns_name(name)
    }

    fn validate(&self, what: &str, svc: &ServiceConfig) -> Result<(), ConfigError> {
        if self.observe.is_some() {
            if svc.forwarding == ForwardingKind::Dsr {
                return Err(invalid(format!(
                    "{what}: health observe = \"layer4\" needs forwarding = \"nat\" or \
                     \"fullnat\" (under direct server return the balancer sees no replies)"
                )));
            }
            if self.check == CheckKind::None {
                return Err(invalid(format!(
                    "{what}: health observe = \"layer4\" needs health checks (check = \"none\" \
                     would never bring a backend it marked down back up)"
                )));
            }
        }
        for (name, v) in [
            ("interval_ms", Some(self.interval_ms)),
            ("fastinter_ms", self.fastinter_ms),
            ("downinter_ms", self.downinter_ms),
        ] {
            let Some(v) = v else { continue };
            if !(100..=3_600_000).contains(&v) {
                return Err(invalid(format!(
                    "{what}: health {name} {v} is out of range 100..=3600000"
                )));
            }
            // A check never outlives its interval, so checks of one backend never overlap.
            if self.timeout_ms > v {
                return Err(invalid(format!(
                    "{what}: health timeout_ms {} is longer than {name} {v}",
                    self.timeout_ms
                )));
            }
        }
        if self.timeout_ms == 0 {
            return Err(invalid(format!(
                "{what}: health timeout_ms must be at least 1"
            )));
        }
        if let Some(host) = &self.host {
            if host.is_empty() || host.len() > 255 || !host.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "{what}: health host {host:?} must be 1 to 255 visible ASCII characters \
                     (a name or address, optionally with :port)"
                )));
            }
        }
        if let Some(sni) = &self.sni {
            if dns_name(sni).is_none() {
                return Err(invalid(format!(
                    "{what}: health sni {sni:?} is not a DNS name (TLS sends no server name \
                     for an IP address: leave sni out)"
                )));
            }
        }
        if let Some(src) = self.source {
            if src.is_unspecified() || src.is_multicast() || src.is_ipv4() != svc.vip.is_ipv4() {
                return Err(invalid(format!(
                    "{what}: health source {src} must be a unicast address of the VIP's family"
                )));
            }
        }
        if let Some(ifname) = &self.interface {
            if ifname.is_empty()
                || ifname.len() >= 16
                || ifname.contains('/')
                || !ifname.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(format!(
                    "{what}: health interface {ifname:?} is not a valid interface name"
                )));
            }
        } else if !matches!(self.check, CheckKind::None | CheckKind::External) {
            if let Some(b) = svc.backends.iter().find(|b| is_link_local_v6(b.address)) {
                return Err(invalid(format!(
                    "{what}: backend {} is link-local: set health.interface to the interface \
                     it is reached through",
                    b.address
                )));
            }
        }
        self.validate_kind_fields(what)?;
        if self.rise == 0 || self.fall == 0 || self.rise > 100 || self.fall > 100 {
            return Err(invalid(format!(
                "{what}: health rise and fall must be 1..=100"
            )));
        }
        if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "{what}: health path {:?} must start with / and hold no spaces",
                self.path
            )));
        }
        if self.port == Some(0) {
            return Err(invalid(format!("{what}: health port 0 is not valid")));
        }
        self.status_range()
            .map_err(|e| invalid(format!("{what}: {e}")))?;
        Ok(())
    }
}

impl HealthConfig {
    /// Settings that mean something only for some check kinds are refused with the others,
    /// rather than silently ignored.
    fn validate_kind_fields(&self, what: &str) -> Result<(), ConfigError> {
        let kind = self.check.name();
        let only = |field: &str, kinds: &str| {
            invalid(format!(
                "{what}: health {field} is only for check = {kinds} (check is {kind:?})"
            ))
        };
        if self.mysql_user.is_some() && self.check != CheckKind::Mysql {
            return Err(only("mysql_user", "\"mysql\""));
        }
        if !self.command.is_empty() && self.check != CheckKind::External {
            return Err(only("command", "\"external\""));
        }
        let http_like = matches!(
            self.check,
            CheckKind::Tcp | CheckKind::Http | CheckKind::Tls | CheckKind::Https | CheckKind::None
        );
        if !http_like {
            let d = HealthConfig::default();
            for (field, set) in [
                ("path", self.path != d.path),
                ("status", self.status != d.status),
                ("host", self.host.is_some()),
                ("sni", self.sni.is_some()),
            ] {
                if set {
                    return Err(only(field, "\"http\", \"https\" or \"tls\""));
                }
            }
        }
        if self.check == CheckKind::External {
            for (field, set) in [
                ("source", self.source.is_some()),
                ("interface", self.interface.is_some()),
            ] {
                if set {
                    return Err(invalid(format!(
                        "{what}: health {field} has no effect with check = \"external\" (the \
                         command makes its own connections)"
                    )));
                }
            }
        }
        if let Some(user) = &self.mysql_user {
            if user.is_empty()
                || user.len() > MYSQL_USER_MAX
                || !user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(invalid(format!(
                    "{what}: health mysql_user {user:?} must be 1 to {MYSQL_USER_MAX} of \
                     A-Z a-z 0-9 _ . -"
                )));
            }
        }
        if self.check == CheckKind::External {
            let Some(program) = self.command.first() else {
                return Err(invalid(format!(
                    "{what}: check = \"external\" needs command = [\"/path/to/program\", \
                     \"arg\", ...]"
                )));
            };
            if !Path::new(program).is_absolute() {
                return Err(invalid(format!(
                    "{what}: health command {program:?} must be an absolute path (it runs \
                     without a shell or a PATH search)"
                )));
            }
            if let Some(bad) = self.command.iter().find(|a| a.contains('\0')) {
                return Err(invalid(format!(
                    "{what}: health command argument {bad:?} holds a NUL byte"
                )));
            }
        }
        Ok(())
    }

    /// The host-side part of the check's settings: an external check's program is an
    /// executable file here.
    pub fn check_host(&self, what: &str) -> Result<(), ConfigError> {
        if self.check != CheckKind::External {
            return Ok(());
        }
        let Some(program) = self.command.first() else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(program) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(invalid(format!(
                "{what}: health command {program:?} is not an executable file"
            ))),
            Err(e) => Err(invalid(format!(
                "{what}: health command {program:?} cannot be used: {e}"
            ))),
        }
    }
}

/// `fe80::/10`: an address that means something only together with an interface.
pub fn is_link_local_v6(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// The name in a Host value (`name` or `name:port`); `None` for an IP address.
fn host_name_part(host: &str) -> Option<&str> {
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(name),
        _ => Some(host),
    }
}

/// `name` as a TLS server name when it is a DNS name (not an IP address).
fn dns_name(name: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    match rustls::pki_types::ServerName::try_from(name.to_owned()) {
        Ok(n @ rustls::pki_types::ServerName::DnsName(_)) => Some(n),
        _ => None,
    }
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// The backend's port: with `forwarding = "nat"` the destination port becomes it; direct
    /// server return keeps the destination port, so there it may only repeat the service's.
    pub port: Option<u16>,
    #[serde(default)]
    pub role: Role,
    /// Share of new flows among healthy peers of the same role (1..=256).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Drained: keeps its connections, takes no new ones (`backend drain` sets it at run time,
    /// so `config-dump` keeps it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub drained: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_weight() -> u32 {
    1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Syntax(source) => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates; the result is safe to hand to the data plane.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule; runtime changes go through this too before they are applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.metrics_address.is_empty()
            && self
                .metrics_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(invalid(format!(
                "metrics_address {:?} is not host:port (e.g. \"127.0.0.1:9641\"); \"\" disables it",
                self.metrics_address
            )));
        }
        if let Some(t) = &self.admin_token {
            if !(16..=128).contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "admin_token must be 16 to 128 visible ASCII characters (e.g. from \
                     `openssl rand -hex 16`)",
                ));
            }
        }
        if self.interfaces.is_empty() {
            return Err(invalid(
                "`interfaces` is empty: name at least one interface",
            ));
        }
        crate::firewall::compile_all(&self.firewall.rules)?;
        for iface in self.firewall.vip_policy.keys() {
            if !self.interfaces.contains(iface) {
                return Err(invalid(format!(
                    "firewall.vip_policy names {iface:?}, which is not in `interfaces`"
                )));
            }
        }
        let mut pairs = 0;
        for (iface, ids) in &self.vlans {
            if !self.interfaces.contains(iface) {
                return Err(invalid(format!(
                    "vlans names {iface:?}, which is not in `interfaces`"
                )));
            }
            let mut seen = HashSet::new();
            for &id in ids {
                if id > 4094 {
                    return Err(invalid(format!(
                        "vlans.{iface}: VLAN id {id} is out of range 0..=4094 (0: \
                         priority-tagged frames)"
                    )));
                }
                if !seen.insert(id) {
                    return Err(invalid(format!("vlans.{iface}: VLAN {id} is listed twice")));
                }
            }
            pairs += ids.len();
        }
        if let Some(sync) = &self.sync {
            sync.validate()?;
        }
        if let Some(a) = &self.announce {
            let name = &a.interface;
            let valid = (1..16).contains(&name.len())
                && !name.contains(['/', ' ', ':'])
                && name != "."
                && name != "..";
            if !valid {
                return Err(invalid(format!(
                    "announce.interface {name:?} is not an interface name (1 to 15 characters, \
                     no '/', ':' or spaces)"
                )));
            }
            if self.interfaces.contains(name) {
                return Err(invalid(format!(
                    "announce.interface {name:?} is also in `interfaces`: announce on an \
                     interface of its own (e.g. `ip link add lbvips type dummy`)"
                )));
            }
        }
        if pairs > foobar_lb_common::MAX_IFACE_VLANS as usize {
            return Err(invalid(format!(
                "vlans lists {pairs} VLANs in all; at most {} fit",
                foobar_lb_common::MAX_IFACE_VLANS
            )));
        }
        if !(1024..=1 << 24).contains(&self.nat_table_size) {
            return Err(invalid(format!(
                "nat_table_size {} is out of range 1024..=16777216",
                self.nat_table_size
            )));
        }
        let t = &self.nat.timeouts;
        for (name, v) in [
            ("tcp_syn", t.tcp_syn),
            ("tcp_established", t.tcp_established),
            ("tcp_closing", t.tcp_closing),
            ("tcp_closed", t.tcp_closed),
            ("udp", t.udp),
            ("udp_stream", t.udp_stream),
        ] {
            if !(1..=864_000).contains(&v) {
                return Err(invalid(format!(
                    "nat.timeouts.{name} = {v} is out of range 1..=864000 seconds"
                )));
            }
        }
        if !(1024..=1 << 26).contains(&self.flow_table_size) {
            return Err(invalid(format!(
                "flow_table_size {} is out of range 1024..=67108864",
                self.flow_table_size
            )));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for svc in &self.services {
            let what = format!("service {:?}", svc.name);
            svc.health.validate(&what, svc)?;
            if let Some(r) = svc.rate_limit {
                if r.per_source == 0 || r.burst == Some(0) {
                    return Err(invalid(format!(
                        "{what}: rate_limit per_source and burst must be at least 1 (omit \
                         rate_limit for no limit)"
                    )));
                }
                if r.ipv6_prefix.is_some_and(|p| !(1..=128).contains(&p)) {
                    return Err(invalid(format!(
                        "{what}: rate_limit ipv6_prefix must be 1..=128 (64 by default)"
                    )));
                }
            }
            if let Some(m) = svc.maglev_table_size {
                let min = (10 * svc.backends.len() as u32).max(101);
                if !is_prime(m) || m > foobar_lb_common::MAX_SLOTS as u32 || m < min {
                    return Err(invalid(format!(
                        "{what}: maglev_table_size {m} must be a prime from {min} (10 per \
                         backend) to 65537, e.g. 65537, 32749, 16381, 4093"
                    )));
                }
                if svc.scheduler != SchedulerKind::Maglev {
                    return Err(invalid(format!(
                        "{what}: maglev_table_size is set but scheduler is not \"maglev\""
                    )));
                }
            }
            if !valid_service_name(&svc.name) {
                return Err(invalid(format!(
                    "service name {:?} is not valid: use 1 to 64 of A-Z a-z 0-9 _ . - \
                     (it appears in metrics labels, logs and CLI output)",
                    svc.name
                )));
            }
            if !names.insert(svc.name.as_str()) {
                return Err(invalid(format!("{what} is defined twice")));
            }
            if !keys.insert((svc.vip, svc.port, svc.protocol)) {
                return Err(invalid(format!(
                    "{what}: {}:{}/{} is already used by another service",
                    svc.vip, svc.port, svc.protocol
                )));
            }
            if svc.port == 0 {
                return Err(invalid(format!(
                    "{what}: port 0 is not a valid service port"
                )));
            }
            if svc.vip.is_unspecified() || svc.vip.is_multicast() || svc.vip.is_loopback() {
                return Err(invalid(format!(
                    "{what}: VIP {} must be a unicast, non-loopback address",
                    svc.vip
                )));
            }
            if svc.backends.len() > foobar_lb_common::MAX_SERVICE_BACKENDS {
                return Err(invalid(format!(
                    "{what}: {} backends, at most {} per service",
                    svc.backends.len(),
                    foobar_lb_common::MAX_SERVICE_BACKENDS
                )));
            }
            let mut seen = HashSet::new();
            for b in &svc.backends {
                if b.address.is_ipv4() != svc.vip.is_ipv4() {
                    return Err(invalid(format!(
                        "{what}: backend {} is not of the VIP's address family",
                        b.address
                    )));
                }
                if !(1..=foobar_lb_common::MAX_WEIGHT).contains(&b.weight) {
                    return Err(invalid(format!(
                        "{what}: backend {} weight {} is out of range 1..=256",
                        b.address, b.weight
                    )));
                }
                if !seen.insert(b.address) {
                    return Err(invalid(format!(
                        "{what}: backend {} is listed twice",
                        b.address
                    )));
                }
                if b.port == Some(0) {
                    return Err(invalid(format!(
                        "{what}: backend {} port 0 is not a valid port",
                        b.address
                    )));
                }
                if svc.forwarding == ForwardingKind::Dsr && b.port.is_some_and(|p| p != svc.port) {
                    return Err(invalid(format!(
                        "{what}: backend {} port {} differs from the service port {}: direct \
                         server return forwards without changing the port (forwarding = \"nat\" \
                         translates it)",
                        b.address,
                        b.port.unwrap_or_default(),
                        svc.port
                    )));
                }
            }
            self.validate_snat(&what, svc)?;
        }
        if self.services.len() > foobar_lb_common::MAX_SERVICES as usize {
            return Err(invalid(format!(
                "{} services, at most {}",
                self.services.len(),
                foobar_lb_common::MAX_SERVICES
            )));
        }
        // Every backend of every service needs its own id (0 is reserved), so a config the data
        // plane cannot hold is refused here, by check-config too, not half-applied at run time.
        let backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        let ids = foobar_lb_common::MAX_BACKENDS as usize - 1;
        if backends > ids {
            return Err(invalid(format!(
                "{backends} backends in all services, at most {ids} (the data plane's backend \
                 table)"
            )));
        }
        Ok(())
    }

    /// `snat` and `snat_ports`: only with full NAT, where an address of the backends' family is
    /// required; no SNAT address may be a VIP or a backend (replies to it would be taken for
    /// that), nor listed twice, and one address used by several services has one port range.
    fn validate_snat(&self, what: &str, svc: &ServiceConfig) -> Result<(), ConfigError> {
        if svc.forwarding != ForwardingKind::Fullnat {
            if !svc.snat.is_empty() || svc.snat_ports.is_some() {
                return Err(invalid(format!(
                    "{what}: snat and snat_ports apply only to forwarding = \"fullnat\""
                )));
            }
            return Ok(());
        }
        let family = |a: &IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        if !svc.snat.iter().any(|a| a.is_ipv4() == svc.vip.is_ipv4()) {
            return Err(invalid(format!(
                "{what}: forwarding = \"fullnat\" needs an {} address in snat (the source of \
                 connections to its backends)",
                family(&svc.vip)
            )));
        }
        let per_family = |v4: bool| svc.snat.iter().filter(|a| a.is_ipv4() == v4).count();
        if per_family(true) > foobar_lb_common::MAX_SNAT_ADDRS
            || per_family(false) > foobar_lb_common::MAX_SNAT_ADDRS
        {
            return Err(invalid(format!(
                "{what}: at most {} snat addresses per address family",
                foobar_lb_common::MAX_SNAT_ADDRS
            )));
        }
        let mut seen = HashSet::new();
        for a in &svc.snat {
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return Err(invalid(format!(
                    "{what}: snat address {a} must be a unicast, non-loopback address"
                )));
            }
            if !seen.insert(a) {
                return Err(invalid(format!("{what}: snat address {a} is listed twice")));
            }
            for other in &self.services {
                if other.vip == *a {
                    return Err(invalid(format!(
                        "{what}: snat address {a} is the VIP of service {:?}",
                        other.name
                    )));
                }
                if other.backends.iter().any(|b| b.address == *a) {
                    return Err(invalid(format!(
                        "{what}: snat address {a} is a backend of service {:?}",
                        other.name
                    )));
                }
                if other.forwarding == ForwardingKind::Fullnat
                    && other.snat.contains(a)
                    && other.snat_ports() != svc.snat_ports()
                {
                    return Err(invalid(format!(
                        "{what}: snat address {a} has snat_ports {} here and {} in service {:?}: \
                         one address, one range",
                        svc.snat_ports(),
                        other.snat_ports(),
                        other.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The configuration as TOML (what `config-dump` prints: runtime changes included).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(ConfigError::Serialize)
    }

    /// Checks against this host: every interface exists, every block list parses.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        for name in &self.interfaces {
            crate::netdev::ifindex(name)?;
        }
        for svc in &self.services {
            svc.health.check_host(&format!("service {:?}", svc.name))?;
        }
        self.blocklist()?;
        if let Some(sync) = &self.sync {
            sync.load_key()?;
        }
        Ok(())
    }

    /// The source block list: every file's prefixes, then the inline ones.
    pub fn blocklist(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        let mut nets = Vec::new();
        for path in &self.firewall.blocklists {
            nets.extend(crate::firewall::load_blocklist(path)?);
        }
        nets.extend(self.firewall.block.iter().copied());
        Ok(nets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_backends_than_the_data_plane_holds_are_refused() {
        let mut text = String::from("interfaces = [\"eth0\"]\n");
        for s in 0..17 {
            text += &format!("\n[[service]]\nname = \"s{s}\"\nvip = \"10.0.{s}.100\"\nport = 80\n");
            for b in 0..241 {
                text += &format!("[[service.backend]]\naddress = \"10.1.{s}.{b}\"\n");
            }
        }
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("4097 backends in all services, at most 4095"),
            "{err}"
        );
    }

    const GOOD: &str = r#"
interfaces = ["eth0"]
xdp_mode = "generic"

[[service]]
name = "www"
vip = "10.0.0.100"
port = 80

[[service.backend]]
address = "10.0.0.11"

[[service.backend]]
address = "10.0.0.12"
port = 80

[[service]]
name = "www6"
vip = "fd00::100"
port = 80
protocol = "udp"
"#;

    /// The message as users see it: the error and its causes, each once.
    fn shown(e: ConfigError) -> String {
        format!("{:#}", anyhow::Error::new(e))
    }

    fn err(text: &str) -> String {
        shown(Config::parse(text).unwrap_err())
    }

    #[test]
    fn parses_a_valid_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.interfaces, ["eth0"]);
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].protocol, Protocol::Tcp);
        assert_eq!(c.services[0].backends.len(), 2);
        assert_eq!(c.services[1].protocol, Protocol::Udp);
        assert_eq!(c.control_socket, default_control_socket());
    }

    #[test]
    fn rejects_bad_address() {
        let e = err(&GOOD.replace("10.0.0.11", "10.0.0.300"));
        assert!(e.contains("invalid IP address"), "{e}");
    }

    #[test]
    fn rejects_duplicate_service_name_and_key() {
        let twice = GOOD.replace("name = \"www6\"", "name = \"www\"");
        assert!(err(&twice).contains("defined twice"));
        let same_key =
            format!("{GOOD}\n[[service]]\nname = \"other\"\nvip = \"10.0.0.100\"\nport = 80\n");
        assert!(err(&same_key).contains("already used"));
    }

    #[test]
    fn rejects_service_names_outside_the_charset() {
        for ok in ["web", "a", "api-v2.internal_1", &"x".repeat(64)] {
            let text = GOOD.replace("name = \"www6\"", &format!("name = {ok:?}"));
            assert!(Config::parse(&text).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "with space",
            "quote\"d",
            "back\\slash",
            "new\nline",
            "caf\u{e9}",
            "a{b}",
            &"x".repeat(65),
        ] {
            let text = GOOD.replace("name = \"www6\"", &format!("name = {bad:?}"));
            let e = err(&text);
            assert!(
                e.contains("is not valid: use 1 to 64 of A-Z a-z 0-9 _ . -"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn rejects_family_mismatch_duplicate_backend_and_port_change() {
        assert!(err(&GOOD.replace("10.0.0.12", "fd00::12")).contains("address family"));
        assert!(err(&GOOD.replace("10.0.0.12", "10.0.0.11")).contains("listed twice"));
        assert!(
            err(&GOOD.replace("port = 80\n\n[[service]]", "port = 8080\n\n[[service]]"))
                .contains("direct server return")
        );
    }

    #[test]
    fn rejects_unknown_fields_bad_protocol_and_mode() {
        assert!(err(&GOOD.replace("xdp_mode", "xdp_mdoe")).contains("unknown field"));
        assert!(err(&GOOD.replace("\"udp\"", "\"sctp\"")).contains("unknown variant"));
        assert!(err(&GOOD.replace("\"generic\"", "\"fast\"")).contains("unknown variant"));
    }

    #[test]
    fn rejects_port_zero_bad_vip_and_no_interface() {
        assert!(err(&GOOD.replace(
            "port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
            "port = 0\n\n[[service.backend]]\naddress = \"10.0.0.11\""
        ))
        .contains("port 0"));
        assert!(err(&GOOD.replace("10.0.0.100", "0.0.0.0")).contains("unicast"));
        assert!(err(&GOOD.replace("[\"eth0\"]", "[]")).contains("interfaces"));
    }

    #[test]
    fn health_roles_and_weights() {
        let c = Config::parse(&GOOD.replace(
            "address = \"10.0.0.12\"",
            "address = \"10.0.0.12\"\nrole = \"backup\"\nweight = 3",
        ))
        .unwrap();
        let b = &c.services[0].backends[1];
        assert_eq!((b.role, b.weight), (Role::Backup, 3));
        assert_eq!(c.services[0].backends[0].role, Role::Primary);
        assert_eq!(c.services[0].health, HealthConfig::default());
        assert_eq!(c.services[0].health.status_range().unwrap(), (200, 399));
        let with_health = GOOD.replace(
            "port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
            "port = 80\nfailover = \"all\"\n[service.health]\ncheck = \"http\"\npath = \"/healthz\"\nstatus = \"200\"\ninterval_ms = 500\ntimeout_ms = 200\nrise = 1\nfall = 2\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
        );
        let c = Config::parse(&with_health).unwrap();
        let h = &c.services[0].health;
        assert_eq!(
            (h.check, h.rise, h.fall, h.status_range().unwrap()),
            (CheckKind::Http, 1, 2, (200, 200))
        );
        assert_eq!(c.services[0].failover, Failover::All);
        for (from, to, msg) in [
            ("timeout_ms = 200", "timeout_ms = 900", "timeout_ms"),
            ("rise = 1", "rise = 0", "rise and fall"),
            ("status = \"200\"", "status = \"2xx\"", "health status"),
            (
                "path = \"/healthz\"",
                "path = \"healthz\"",
                "must start with /",
            ),
            ("interval_ms = 500", "interval_ms = 5", "interval_ms"),
        ] {
            let e = err(&with_health.replace(from, to));
            assert!(e.contains(msg), "{from} -> {to}: {e}");
        }
        assert!(err(&GOOD.replace(
            "address = \"10.0.0.12\"",
            "address = \"10.0.0.12\"\nweight = 0"
        ))
        .contains("weight"));
        assert!(err(&GOOD.replace(
            "address = \"10.0.0.12\"",
            "address = \"10.0.0.12\"\nrole = \"standby\""
        ))
        .contains("unknown variant"));
        assert!(err(&format!("metrics_address = \"nope\"\n{GOOD}")).contains("metrics_address"));
    }

    #[test]
    fn health_intervals_host_sni_source_and_interface() {
        let with = |health: &str| {
            GOOD.replace(
                "port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
                &format!(
                    "port = 80\n[service.health]\n{health}\n\n[[service.backend]]\naddress = \"10.0.0.11\""
                ),
            )
        };
        let c = Config::parse(&with("interval_ms = 2000")).unwrap();
        let h = &c.services[0].health;
        assert_eq!(
            (h.fastinter_ms(), h.downinter_ms()),
            (2000, 2000),
            "default: interval"
        );
        let c = Config::parse(&with(
            "check = \"https\"\nfastinter_ms = 500\ntimeout_ms = 400\ndowninter_ms = 10000\nhost = \"www.example\"\n\
             sni = \"api.example\"\nsource = \"10.0.0.2\"\ninterface = \"eth1\"",
        ))
        .unwrap();
        let h = &c.services[0].health;
        assert_eq!(h.check, CheckKind::Https);
        assert_eq!((h.fastinter_ms(), h.downinter_ms()), (500, 10000));
        assert_eq!(h.server_name(), Some("api.example".try_into().unwrap()));
        for (health, msg) in [
            (
                "fastinter_ms = 0",
                "fastinter_ms 0 is out of range 100..=3600000",
            ),
            (
                "downinter_ms = 99",
                "downinter_ms 99 is out of range 100..=3600000",
            ),
            (
                "downinter_ms = 3600001",
                "downinter_ms 3600001 is out of range",
            ),
            (
                "fastinter_ms = 500",
                "timeout_ms 1000 is longer than fastinter_ms 500",
            ),
            (
                "host = \"\"",
                "health host \"\" must be 1 to 255 visible ASCII",
            ),
            (
                "host = \"www example\"",
                "health host \"www example\" must be",
            ),
            ("host = \"a\\r\\nX: y\"", "must be 1 to 255 visible ASCII"),
            (
                "sni = \"10.0.0.11\"",
                "health sni \"10.0.0.11\" is not a DNS name",
            ),
            ("sni = \"bad name\"", "is not a DNS name"),
            (
                "source = \"fd00::2\"",
                "health source fd00::2 must be a unicast address of the VIP's family",
            ),
            ("source = \"0.0.0.0\"", "health source 0.0.0.0 must be"),
            ("source = \"224.0.0.1\"", "health source 224.0.0.1 must be"),
            (
                "interface = \"\"",
                "health interface \"\" is not a valid interface name",
            ),
            ("interface = \"a/b\"", "is not a valid interface name"),
            (
                "interface = \"sixteen-chars-xx\"",
                "is not a valid interface name",
            ),
        ] {
            let e = err(&with(health));
            assert!(e.contains(msg), "{health}: {e}");
            assert!(e.starts_with("service \"www\": "), "{health}: {e}");
        }
        // A link-local IPv6 backend is reachable only through a named interface.
        let ll = GOOD.replace(
            "\nprotocol = \"udp\"\n",
            "\nprotocol = \"udp\"\n[[service.backend]]\naddress = \"fe80::11\"\n",
        );
        assert!(err(&ll)
            .contains("service \"www6\": backend fe80::11 is link-local: set health.interface"));
        let ll_ok = ll.replace(
            "protocol = \"udp\"\n",
            "protocol = \"udp\"\nhealth = { interface = \"eth0\" }\n",
        );
        Config::parse(&ll_ok).unwrap();
        let unchecked = ll.replace(
            "protocol = \"udp\"\n",
            "protocol = \"udp\"\nhealth = { check = \"none\" }\n",
        );
        Config::parse(&unchecked).unwrap();
    }

    #[test]
    fn mysql_and_external_checks_take_only_their_own_fields() {
        let with = |health: &str| {
            GOOD.replace(
                "port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
                &format!(
                    "port = 3306\n[service.health]\n{health}\n\n[[service.backend]]\naddress = \"10.0.0.11\""
                ),
            )
            .replace("address = \"10.0.0.12\"\nport = 80", "address = \"10.0.0.12\"")
        };
        let c = Config::parse(&with("check = \"mysql\"\nmysql_user = \"haproxy_check\"")).unwrap();
        let h = &c.services[0].health;
        assert_eq!(
            (h.check, h.mysql_user.as_deref()),
            (CheckKind::Mysql, Some("haproxy_check"))
        );
        Config::parse(&with("check = \"mysql\"")).unwrap();
        let ext = "check = \"external\"\ncommand = [\"/usr/local/bin/db-writable\", \"--port\", \"3306\"]";
        let c = Config::parse(&with(ext)).unwrap();
        assert_eq!(
            c.services[0].health.command,
            ["/usr/local/bin/db-writable", "--port", "3306"]
        );
        // Both survive config-dump.
        for text in [
            with("check = \"mysql\"\nmysql_user = \"haproxy_check\""),
            with(ext),
        ] {
            let c = Config::parse(&text).unwrap();
            let dumped = c.to_toml().unwrap();
            let again = Config::parse(&dumped).unwrap_or_else(|e| panic!("{}\n{dumped}", shown(e)));
            assert_eq!(again.services[0].health, c.services[0].health);
            assert_eq!(again.to_toml().unwrap(), dumped);
        }
        // Other kinds dump neither field.
        let dumped = Config::parse(GOOD).unwrap().to_toml().unwrap();
        assert!(
            !dumped.contains("mysql_user") && !dumped.contains("command"),
            "{dumped}"
        );
        for (health, msg) in [
            (
                "check = \"tcp\"\nmysql_user = \"x\"",
                "health mysql_user is only for check = \"mysql\" (check is \"tcp\")",
            ),
            (
                "check = \"mysql\"\ncommand = [\"/bin/true\"]",
                "health command is only for check = \"external\" (check is \"mysql\")",
            ),
            (
                "check = \"mysql\"\nmysql_user = \"\"",
                "health mysql_user \"\" must be 1 to 80 of A-Z a-z 0-9 _ . -",
            ),
            (
                "check = \"mysql\"\nmysql_user = \"a'b\"",
                "health mysql_user \"a'b\" must be",
            ),
            ("check = \"mysql\"\nmysql_user = \"a b\"", "must be 1 to 80"),
            (
                &format!("check = \"mysql\"\nmysql_user = \"{}\"", "u".repeat(81)),
                "must be 1 to 80",
            ),
            (
                "check = \"mysql\"\npath = \"/health\"",
                "health path is only for check = \"http\", \"https\" or \"tls\"",
            ),
            (
                "check = \"external\"\ncommand = [\"/bin/true\"]\nhost = \"db\"",
                "health host is only",
            ),
            (
                "check = \"mysql\"\nsni = \"db.example\"",
                "health sni is only",
            ),
            (
                "check = \"mysql\"\nstatus = \"200\"",
                "health status is only",
            ),
            (
                "check = \"external\"",
                "check = \"external\" needs command = [\"/path/to/program\"",
            ),
            ("check = \"external\"\ncommand = []", "needs command"),
            (
                "check = \"external\"\ncommand = [\"db-writable\"]",
                "health command \"db-writable\" must be an absolute path",
            ),
            (
                "check = \"external\"\ncommand = [\"/bin/true\"]\nsource = \"10.0.0.2\"",
                "health source has no effect with check = \"external\"",
            ),
        ] {
            let e = err(&with(health));
            assert!(e.contains(msg), "{health}: {e}");
            assert!(e.starts_with("service \"www\": "), "{health}: {e}");
        }
    }

    #[test]
    fn an_external_checks_program_must_be_an_executable_file_here() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("foobar-lb-ext-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("check.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let text = |program: &Path| {
            GOOD.replace(
                "port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
                &format!(
                    "port = 80\nhealth = {{ check = \"external\", command = [{:?}] }}\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
                    program.display().to_string()
                ),
            )
        };
        let host_err = |program: &Path| {
            let c = Config::parse(&text(program)).unwrap();
            c.services[0]
                .health
                .check_host("service \"www\"")
                .err()
                .map(shown)
        };
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = host_err(&script).unwrap();
        assert!(e.ends_with("check.sh\" is not an executable file"), "{e}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(host_err(&script), None);
        let e = host_err(&dir).unwrap();
        assert!(e.contains("is not an executable file"), "a directory: {e}");
        let e = host_err(&dir.join("missing")).unwrap();
        assert!(e.contains("missing\" cannot be used: No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn firewall_and_rate_limit_sections() {
        let text = format!(
            "{GOOD}\n[firewall]\nvip_policy = {{ eth0 = \"drop\" }}\n\n[[firewall.rule]]\naction = \"drop\"\nsource = \"192.0.2.0/24\"\nprotocol = \"tcp\"\nport = \"22\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.firewall.rules.len(), 1);
        assert_eq!(c.firewall.vip_policy["eth0"], VipPolicy::Drop);
        assert!(err(&text.replace("\"22\"", "\"x\"")).contains("firewall rule 1"));
        assert!(err(&text.replace("eth0 = \"drop\"", "eth9 = \"drop\"")).contains("eth9"));
        let rl = GOOD.replace("port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"", "port = 80\nrate_limit = { per_source = 5 }\n\n[[service.backend]]\naddress = \"10.0.0.11\"");
        assert_eq!(
            Config::parse(&rl).unwrap().services[0].rate_limit(),
            (5, 5, 64)
        );
        assert!(
            err(&rl.replace("per_source = 5", "per_source = 5, ipv6_prefix = 0"))
                .contains("ipv6_prefix")
        );
        assert!(err(&rl.replace("per_source = 5", "per_source = 0")).contains("rate_limit"));
    }

    #[test]
    fn vlans_per_interface() {
        let c = Config::parse(GOOD).unwrap();
        assert!(c.vlans.is_empty(), "untagged only by default");
        assert!(!c.to_toml().unwrap().contains("vlans"));
        let text = GOOD.replace(
            "interfaces = [\"eth0\"]\n",
            "interfaces = [\"eth0\"]\nvlans = { eth0 = [10, 20] }\n",
        );
        assert_eq!(Config::parse(&text).unwrap().vlans["eth0"], [10, 20]);
        assert!(err(&text.replace("eth0 = [", "eth1 = [")).contains("\"eth1\", which is not in"));
        assert!(err(&text.replace("20]", "4095]")).contains("VLAN id 4095 is out of range"));
        assert!(err(&text.replace("20]", "10]")).contains("VLAN 10 is listed twice"));
    }

    #[test]
    fn sync_needs_peers_and_a_private_key_file_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("foobar-lb-sync-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        let text = format!(
            "{GOOD}\n[sync]\nlisten = \"10.0.0.2:7946\"\npeers = [\"10.0.0.3:7946\"]\n\
             key_file = \"{}\"\n",
            key.display()
        );
        let c = Config::parse(&text).unwrap();
        let sync = c.sync.as_ref().unwrap();
        assert_eq!(sync.bulk_timeout_ms, 5000);
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap().sync, c.sync);
        let load = || shown(sync.load_key().unwrap_err());
        assert!(load().contains("cannot read it"), "{}", load());
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            load().contains("readable by others (mode 644)"),
            "{}",
            load()
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(sync.load_key().unwrap().len(), 32);
        std::fs::write(&key, "short\n").unwrap();
        assert!(load().contains("holds 5 bytes; at least 32"), "{}", load());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err(&text.replace("\"10.0.0.3:7946\"", "")).contains("sync.peers is empty"));
        assert!(err(&text.replace("10.0.0.3:7946", "10.0.0.2:7946")).contains("own sync.listen"));
        assert!(err(&format!("{text}bulk_timeout_ms = 1\n")).contains("out of range"));
    }

    #[test]
    fn announce_names_an_interface_of_its_own_and_keeps_a_drain() {
        let text = format!("{GOOD}\n[announce]\ninterface = \"lbvips\"\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.announce.as_ref().unwrap().interface, "lbvips");
        assert!(!c.drained && !c.to_toml().unwrap().contains("drained"));
        // A drained node stays drained through config-dump, with or without [announce].
        for base in [GOOD.to_string(), text.clone()] {
            let drained = format!("drained = true\n{base}");
            let dumped = Config::parse(&drained).unwrap().to_toml().unwrap();
            assert!(Config::parse(&dumped).unwrap().drained, "{dumped}");
        }
        // Where it used to be: refused with the field named, not silently ignored.
        assert!(err(&format!("{text}drained = true\n")).contains("drained"));
        assert!(err(&text.replace("lbvips", "eth0")).contains("also in `interfaces`"));
        assert!(err(&text.replace("lbvips", "a/b")).contains("is not an interface name"));
        assert!(
            err(&text.replace("lbvips", "sixteen-chars-xx")).contains("is not an interface name")
        );
        assert!(err(&format!("{text}bogus = 1\n")).contains("bogus"));
    }

    #[test]
    fn dumps_a_config_that_parses_back_the_same() {
        let text = format!(
            "{}\n[firewall]\nblocklists = [\"/tmp/x\"]\nblock = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nvip_policy = {{ eth0 = \"drop\" }}\n\n[[firewall.rule]]\naction = \"drop\"\nsource = \"192.0.2.0/24\"\n",
            GOOD.replace("address = \"10.0.0.12\"", "address = \"10.0.0.12\"\nrole = \"backup\"\nweight = 3")
                .replace("interfaces = [\"eth0\"]\n", "interfaces = [\"eth0\"]\nvlans = { eth0 = [0, 42] }\n")
        )
        .replace("protocol = \"udp\"", "protocol = \"udp\"\nrate_limit = { per_source = 5 }\n\
                  health = { check = \"https\", fastinter_ms = 500, timeout_ms = 400, downinter_ms = 9000, \
                  host = \"www.example:8443\", sni = \"api.example\", source = \"fd00::2\", \
                  interface = \"eth1\" }");
        let c = Config::parse(&text).unwrap();
        let dumped = c.to_toml().unwrap();
        let again = Config::parse(&dumped).unwrap_or_else(|e| panic!("{}\n{dumped}", shown(e)));
        assert_eq!(again.to_toml().unwrap(), dumped);
        assert_eq!(again.services[1].health, c.services[1].health);
        let h = &again.services[1].health;
        assert_eq!(
            (
                h.check,
                h.fastinter_ms,
                h.downinter_ms,
                h.host.as_deref(),
                h.sni.as_deref()
            ),
            (
                CheckKind::Https,
                Some(500),
                Some(9000),
                Some("www.example:8443"),
                Some("api.example")
            )
        );
        assert_eq!(h.source, Some("fd00::2".parse().unwrap()));
        assert_eq!(h.interface.as_deref(), Some("eth1"));
        assert_eq!(again.services[0].backends[1].weight, 3);
        assert_eq!(again.services[1].rate_limit(), (5, 5, 64));
        assert_eq!(again.firewall.rules.len(), 1);
        assert_eq!(again.firewall.block.len(), 2);
        assert_eq!(again.vlans["eth0"], [0, 42]);
    }

    #[test]
    fn maglev_scheduler_and_its_table_size() {
        let mg = GOOD.replacen("port = 80\n", "port = 80\nscheduler = \"maglev\"\n", 1);
        let c = Config::parse(&mg).unwrap();
        assert_eq!(
            c.services[0].scheduler(),
            crate::schedule::Scheduler::Maglev { table_size: 65537 }
        );
        let sized = mg.replacen(
            "scheduler = \"maglev\"\n",
            "scheduler = \"maglev\"\nmaglev_table_size = 4093\n",
            1,
        );
        let c = Config::parse(&sized).unwrap();
        assert_eq!(
            c.services[0].scheduler(),
            crate::schedule::Scheduler::Maglev { table_size: 4093 }
        );
        // Survives config-dump.
        let again = Config::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.services[0].scheduler(), c.services[0].scheduler());
        for bad in ["4096", "65539", "7"] {
            let e = err(&sized.replace("4093", bad));
            assert!(
                e.contains("maglev_table_size") && e.contains("prime"),
                "{bad}: {e}"
            );
        }
        let e = err(&sized.replace("scheduler = \"maglev\"\n", ""));
        assert!(e.contains("scheduler is not"), "{e}");
    }

    #[test]
    fn rejects_syntax_errors_with_location() {
        let e = err("interfaces = [\"eth0\"\n");
        assert!(e.starts_with("invalid config: "), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn load_errors_name_the_file_and_print_the_cause_once() {
        let dir =
            std::env::temp_dir().join(format!("foobar-lb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        let e = Config::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        let e = shown(e);
        assert!(
            e.starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{e}"
        );
        assert_eq!(e.matches("os error").count(), 1, "{e}");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, GOOD.replace("xdp_mode", "xdp_mdoe")).unwrap();
        let e = Config::load(&bad).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let e = shown(e);
        assert!(
            e.starts_with(&format!("invalid config file {}: ", bad.display())),
            "{e}"
        );
        assert_eq!(e.matches("unknown field").count(), 1, "{e}");
    }

    #[test]
    fn observe_layer4_is_off_by_default_nat_only_and_needs_checks() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.services[0].health.observe, None, "off by default");
        assert!(!c.to_toml().unwrap().contains("observe"), "and not dumped");
        let nat = GOOD.replacen(
            "port = 80\n\n[[service.backend]]",
            "port = 80\nforwarding = \"nat\"\n\n[service.health]\nobserve = \"layer4\"\n\n\
             [[service.backend]]",
            1,
        );
        let c = Config::parse(&nat).unwrap();
        assert_eq!(c.services[0].health.observe, Some(Observe::Layer4));
        let again = Config::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.services[0].health.observe, Some(Observe::Layer4));
        let full = nat.replace(
            "forwarding = \"nat\"",
            "forwarding = \"fullnat\"\nsnat = [\"10.0.0.250\"]",
        );
        assert!(Config::parse(&full).is_ok(), "{}", err(&full));
        // Under direct server return the balancer never sees the refusal.
        let e = err(&nat.replace("forwarding = \"nat\"\n", ""));
        assert!(e.contains("observe") && e.contains("nat"), "{e}");
        // Without checks nothing would bring a marked-down backend back.
        let e = err(&nat.replace(
            "observe = \"layer4\"",
            "observe = \"layer4\"\ncheck = \"none\"",
        ));
        assert!(e.contains("observe") && e.contains("check"), "{e}");
        let e = err(&nat.replace("\"layer4\"", "\"layer7\""));
        assert!(e.contains("layer7"), "{e}");
    }

    #[test]
    fn nat_services_translate_ports_and_keep_through_config_dump() {
        let nat = GOOD
            .replacen(
                "port = 80\n\n[[service.backend]]",
                "port = 80\nforwarding = \"nat\"\n\n[[service.backend]]",
                1,
            )
            .replace(
                "address = \"10.0.0.12\"\nport = 80",
                "address = \"10.0.0.12\"\nport = 8080",
            );
        // The same port change under direct server return is refused, naming the fix.
        let dsr = nat.replace("forwarding = \"nat\"\n", "");
        let e = err(&dsr);
        assert!(e.contains("8080") && e.contains("nat"), "{e}");
        let text =
            format!("nat_table_size = 4096\n{nat}\n[nat.timeouts]\ntcp_established = 3600\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.services[0].forwarding, ForwardingKind::Nat);
        assert_eq!(c.services[1].forwarding, ForwardingKind::Dsr);
        assert_eq!(c.nat_table_size, 4096);
        assert_eq!(c.nat.timeouts.tcp_established, 3600);
        assert_eq!(c.nat.timeouts.tcp_syn, NatTimeouts::default().tcp_syn);
        let dumped = c.to_toml().unwrap();
        let again = Config::parse(&dumped).unwrap();
        assert_eq!(again.to_toml().unwrap(), dumped);
        assert_eq!(again.services[0].forwarding, ForwardingKind::Nat);
        assert_eq!(again.services[0].backends[1].port, Some(8080));
        assert_eq!(again.nat, c.nat);
        // DSR services dump without the field, as before.
        assert!(!Config::parse(GOOD)
            .unwrap()
            .to_toml()
            .unwrap()
            .contains("forwarding"));
        for (bad, what) in [
            ("nat_table_size = 10\n", "nat_table_size"),
            ("[nat.timeouts]\nudp = 0\n", "nat.timeouts.udp"),
        ] {
            let t = if bad.starts_with('[') {
                format!("{nat}\n{bad}")
            } else {
                format!("{bad}{nat}")
            };
            let e = err(&t);
            assert!(e.contains(what), "{bad}: {e}");
        }
        let e = err(&nat.replace("port = 8080", "port = 0"));
        assert!(e.contains("port 0"), "{e}");
    }

    #[test]
    fn fullnat_services_need_snat_addresses_and_keep_them_through_config_dump() {
        let full = GOOD.replacen(
            "port = 80\n\n[[service.backend]]",
            "port = 80\nforwarding = \"fullnat\"\nsnat = [\"10.0.0.250\", \"fd00::250\"]\n\
             snat_ports = \"20000-29999\"\n\n[[service.backend]]",
            1,
        );
        let c = Config::parse(&full).unwrap();
        assert_eq!(c.services[0].forwarding, ForwardingKind::Fullnat);
        assert_eq!(c.services[0].snat.len(), 2);
        assert_eq!(
            c.services[0].snat_ports(),
            PortRange {
                lo: 20000,
                hi: 29999
            }
        );
        assert_eq!(c.services[1].snat_ports(), DEFAULT_SNAT_PORTS);
        let dumped = c.to_toml().unwrap();
        assert!(dumped.contains("forwarding = \"fullnat\""), "{dumped}");
        assert!(dumped.contains("snat_ports = \"20000-29999\""), "{dumped}");
        let again = Config::parse(&dumped).unwrap();
        assert_eq!(again.to_toml().unwrap(), dumped);
        assert_eq!(again.services[0].snat, c.services[0].snat);
        // Refusals, each naming the problem.
        for (from, to, what) in [
            (
                "snat = [\"10.0.0.250\", \"fd00::250\"]",
                "snat = [\"fd00::250\"]",
                "needs an IPv4 address in snat",
            ),
            (
                "snat = [\"10.0.0.250\", \"fd00::250\"]",
                "snat = [\"10.0.0.100\"]",
                "is the VIP of service \"www\"",
            ),
            (
                "snat = [\"10.0.0.250\", \"fd00::250\"]",
                "snat = [\"10.0.0.12\"]",
                "is a backend of service \"www\"",
            ),
            (
                "snat = [\"10.0.0.250\", \"fd00::250\"]",
                "snat = [\"10.0.0.250\", \"10.0.0.250\"]",
                "listed twice",
            ),
            ("\"20000-29999\"", "\"29999-20000\"", "not LO-HI"),
            ("\"20000-29999\"", "\"0-100\"", "not LO-HI"),
            (
                "forwarding = \"fullnat\"\n",
                "forwarding = \"nat\"\n",
                "only to forwarding = \"fullnat\"",
            ),
        ] {
            let e = err(&full.replace(from, to));
            assert!(e.contains(what), "{to}: {e}");
        }
    }
}
