//! www.foobar.com, whole: the seed design's site on real parts, for `cargo xtask run` and the
//! user's journey that `cargo xtask run --check` (and tests/tests/site.rs) walks.
//!
//! On one L2 segment (the test topology's bridge, 10.111.0.0/24):
//! - client 10.111.0.1; the monitoring host 10.111.0.5 (Prometheus);
//! - the balancer pair: node A 10.111.0.2 and node B 10.111.0.3, foobar-lb and keepalived on
//!   each, moving the VIPs; each node's own SNAT address for the database VIPs (.252, .253);
//! - servers web1 10.111.0.11 and web2 10.111.0.12 (the servers' network 10.111.0.8/29), each
//!   with nginx (HTTPS), the guest-book application and MariaDB (primary on web1, replica on
//!   web2);
//! - VIPs: www.foobar.com 10.111.0.100 (80 and 443, direct server return, Maglev), the
//!   database's write VIP 10.111.0.101 (active-passive: the writable server) and read VIP
//!   10.111.0.102 (round robin), both full NAT, so a server's application reaches its own
//!   database through them too.

pub mod db;
pub mod journey;
pub mod pki;
pub mod web;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    netns::{web4, Netns, Topology, VIP4},
    pair::{keepalived_config, Keepalived},
};

pub const WEB_VIP: &str = VIP4;
pub const DB_WRITE_VIP: &str = "10.111.0.101";
pub const DB_READ_VIP: &str = "10.111.0.102";
/// The servers' network: the only sources the database VIPs serve.
pub const SERVERS_NET: &str = "10.111.0.8/29";
/// The monitoring host: Prometheus, and the only source the metrics port serves.
pub const OPS_HOST: u8 = 5;
const OPS4: &str = "10.111.0.5";
/// Sources the firewall blocks (documentation prefixes: a block list from the config).
pub const BLOCKED: &[&str] = &["198.51.100.0/24", "203.0.113.0/24"];
const ROUTER_ID: &str = "52";

pub struct Options {
    /// The foobar-lb binary the nodes run.
    pub bin: PathBuf,
    pub xdp_mode: String,
}

/// One balancer node: its daemon and keepalived.
pub struct Node {
    pub name: &'static str,
    pub ns: String,
    pub addr: &'static str,
    pub snat: &'static str,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
    pub keepalived: Option<Keepalived>,
}

impl Node {
    /// `foobar-lb --socket <this node's> ARGS`.
    pub fn cli(&self, bin: &Path, args: &[&str]) -> std::process::Output {
        crate::daemon::cli_at(bin, &self.socket, args)
    }

    /// SIGKILL to the daemon (its pinned data plane stays attached, as after a crash).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.keepalived = None;
        if let Some(mut c) = self.daemon.take() {
            // SIGTERM: --detach-on-exit takes the program off the interface.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where and how a balancer node runs.
struct NodeSpec {
    name: &'static str,
    ns: String,
    addr: &'static str,
    snat: &'static str,
    pin_dir: PathBuf,
    peer: &'static str,
    priority: &'static str,
}

/// The running site. Dropping it stops everything and removes the namespaces and files.
pub struct Site {
    // Drop order is field order: balancers, monitoring, servers, then the network.
    pub nodes: Vec<Node>,
    prometheus: Option<Child>,
    pub webs: Vec<web::Web>,
    pub dbs: Vec<db::Db>,
    _pass: Vec<foobar_lb::dataplane::AuxProgram>,
    pub pki: pki::Pki,
    pub bin: PathBuf,
    pub topo: Topology,
}

impl Site {
    /// Brings the whole site up, printing each step (`say`); fails naming what did not come
    /// up and where its log is.
    pub fn start(opts: &Options, say: &dyn Fn(&str)) -> Result<Site> {
        say("network: client, monitoring host, balancer nodes A and B, web1, web2, bridge");
        let mut topo = Topology::new("site", 2)?;
        topo.release_lb_vips()?;
        let b = topo.add_lb(3)?;
        let ops = topo.add_client(OPS_HOST)?;
        let _ = ops;
        let pass = vec![topo.attach_lb_peer_pass()?, topo.attach_peer_pass("lb3")?];
        let dir = topo.dir.clone();
        say("certificates: a demo CA and www.foobar.com's certificate (openssl)");
        let pki = pki::create(&dir.join("pki"), WEB_VIP)?;
        say("databases: MariaDB primary on web1, replica on web2");
        let primary = db::Db::start(&topo.webs[0], &dir.join("db1"), 1, &web4(1))?;
        let replica = db::Db::start(&topo.webs[1], &dir.join("db2"), 2, &web4(2))?;
        replica.replicate_from(&web4(1))?;
        primary.init_primary()?;
        replica.wait_for(
            "SELECT COUNT(*) FROM foobar.entries",
            "1",
            Duration::from_secs(30),
        )?;
        say("web servers: nginx (HTTPS) and the guest-book application on web1 and web2");
        let mut webs = Vec::new();
        for i in 1..=2 {
            webs.push(web::Web::start(
                &topo.webs[i - 1],
                &dir.join(format!("web{i}")),
                &format!("web{i}"),
                &pki,
                DB_WRITE_VIP,
                DB_READ_VIP,
            )?);
        }
        let check_writable = dir.join("check-writable");
        fs::write(&check_writable, CHECK_WRITABLE)?;
        run_chmod(&check_writable)?;
        let mut site = Site {
            nodes: Vec::new(),
            prometheus: None,
            webs,
            dbs: vec![primary, replica],
            _pass: pass,
            pki,
            bin: opts.bin.clone(),
            topo,
        };
        let specs = [
            NodeSpec {
                name: "a",
                ns: site.topo.lb.name.clone(),
                addr: "10.111.0.2",
                snat: "10.111.0.252",
                pin_dir: site.topo.pin_dir(),
                peer: "10.111.0.3",
                priority: "150",
            },
            NodeSpec {
                name: "b",
                ns: site.topo.lbs[b].ns.name.clone(),
                addr: "10.111.0.3",
                snat: "10.111.0.253",
                pin_dir: site.topo.lbs[b].pin_dir.clone(),
                peer: "10.111.0.2",
                priority: "100",
            },
        ];
        for spec in &specs {
            say(&format!(
                "balancer node {}: foobar-lb, then keepalived (priority {})",
                spec.name.to_uppercase(),
                spec.priority
            ));
            let node = site.start_node(opts, spec, &check_writable)?;
            site.nodes.push(node);
            let node = site.nodes.last_mut().unwrap();
            let conf = dir.join(format!("{}.keepalived.conf", spec.name));
            fs::write(
                &conf,
                keepalived_config(
                    &opts.bin,
                    &node.socket,
                    "eth0",
                    &[WEB_VIP, DB_WRITE_VIP, DB_READ_VIP],
                    spec.peer,
                    spec.priority,
                    ROUTER_ID,
                )?,
            )?;
            node.keepalived = Some(Keepalived::start(&Netns::attach(&spec.ns), &conf)?);
        }
        say("monitoring: Prometheus on the monitoring host scraping both nodes");
        site.prometheus = Some(site.start_prometheus()?);
        say("waiting for node A to hold the VIPs and every backend to be up");
        site.wait_until_serving(Duration::from_secs(90))?;
        Ok(site)
    }

    fn start_node(&self, opts: &Options, spec: &NodeSpec, check_writable: &Path) -> Result<Node> {
        let NodeSpec {
            name,
            ns,
            addr,
            snat,
            pin_dir,
            ..
        } = spec;
        let netns = Netns::attach(ns);
        // The node's own source address for full NAT (the database VIPs), and forwarding on:
        // full NAT's next hop comes from the kernel's FIB, which answers only a router.
        netns.ip(&["addr", "add", &format!("{snat}/32"), "dev", "eth0", "nodad"])?;
        netns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        let socket = self.topo.dir.join(format!("{name}.sock"));
        let config = self.topo.dir.join(format!("{name}.toml"));
        fs::write(
            &config,
            node_config(opts, &socket, pin_dir, addr, snat, check_writable),
        )?;
        let log = self.topo.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log)?;
        let daemon = netns
            .cmd(opts.bin.to_str().context("binary path")?)
            .args(["run", "--detach-on-exit", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start foobar-lb")?;
        let mut node = Node {
            name,
            ns: ns.to_owned(),
            addr,
            snat,
            socket,
            config,
            log,
            daemon: Some(daemon),
            keepalived: None,
        };
        // keepalived may take the VIPs only once the daemon serves (it would wait anyway).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node.cli(&opts.bin, &["ready"]).status.success() {
            if let Some(status) = node
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "node {name}'s foobar-lb exited ({status}):\n{}",
                    fs::read_to_string(&node.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {name}'s foobar-lb is not ready after 60 s: see {}",
                    node.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(node)
    }

    fn start_prometheus(&self) -> Result<Child> {
        let dir = self.topo.dir.join("prometheus");
        fs::create_dir_all(&dir)?;
        let conf = dir.join("prometheus.yml");
        let targets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'{}:9641'", n.addr))
            .collect();
        fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n\
                 scrape_configs:\n  - job_name: foobar-lb\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        self.ops()
            .cmd("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .args([
                &format!("--web.listen-address={OPS4}:9090"),
                "--log.level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start prometheus (Debian package prometheus)")
    }

    pub fn client(&self) -> &Netns {
        &self.topo.client
    }

    pub fn ops(&self) -> &Netns {
        &self.topo.extra[0]
    }

    pub fn node_ns(&self, i: usize) -> std::mem::ManuallyDrop<Netns> {
        Netns::attach(&self.nodes[i].ns)
    }

    /// `stats --json` of node `i`.
    pub fn stats(&self, i: usize) -> Result<foobar_lb::api::StatsSnapshot> {
        let out = self.nodes[i].cli(&self.bin, &["stats", "--json"]);
        if !out.status.success() {
            bail!(
                "node {}: stats: {}",
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Backends (service, address) of node `i` that are not serving, with why.
    pub fn not_serving(&self, i: usize) -> Result<Vec<String>> {
        let s = self.stats(i)?;
        let mut down = Vec::new();
        for svc in &s.services {
            for b in &svc.backends {
                // The write VIP's backup is healthy only when writable: not expected up.
                let expected =
                    !(svc.name == "db-write" && b.role == foobar_lb::config::Role::Backup);
                if expected && b.health != "up" {
                    down.push(format!(
                        "{} {} ({})",
                        svc.name,
                        b.address,
                        b.last_error.clone().unwrap_or_else(|| b.health.clone())
                    ));
                }
            }
        }
        Ok(down)
    }

    /// Waits until node A holds the VIPs and both nodes see every backend they should up.
    pub fn wait_until_serving(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let held = crate::pair::holds(&self.node_ns(0), WEB_VIP);
            let mut down = Vec::new();
            for i in 0..self.nodes.len() {
                for d in self.not_serving(i)? {
                    down.push(format!("node {}: {d}", self.nodes[i].name));
                }
            }
            if held && down.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the site is not serving after {within:?}: {}{}",
                    if held {
                        ""
                    } else {
                        "node A does not hold the VIP; "
                    },
                    down.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn run_chmod(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The write VIP's external check: up only while the server takes writes (`read_only = 0`),
/// so the VIP follows the server an operator promoted.
const CHECK_WRITABLE: &str = "#!/bin/sh\n\
# foobar-lb external check: exit 0 while this MariaDB server is writable.\n\
ro=$(mariadb --no-defaults --skip-ssl -h \"$FOOBAR_LB_BACKEND_ADDR\" -P \"$FOOBAR_LB_BACKEND_PORT\" \\\n\
  -u check --connect-timeout=1 -N -B -e 'SELECT @@global.read_only') || exit 1\n\
[ \"$ro\" = 0 ] || { echo \"read_only = $ro\"; exit 1; }\n";

/// A balancer node's configuration: the four services, the firewall, metrics on its address.
fn node_config(
    opts: &Options,
    socket: &Path,
    pin_dir: &Path,
    addr: &str,
    snat: &str,
    check_writable: &Path,
) -> String {
    let backends = |extra: &[&str]| -> String {
        (1..=2)
            .map(|i| {
                format!(
                    "\n[[service.backend]]\naddress = \"{}\"\n{}",
                    web4(i),
                    extra.get(i - 1).copied().unwrap_or_default()
                )
            })
            .collect()
    };
    let blocked: Vec<String> = BLOCKED.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"# www.foobar.com: node {addr}
interfaces = ["eth0"]
xdp_mode = "{mode}"
control_socket = "{socket}"
pin_dir = "{pin}"
metrics_address = "{addr}:9641"

[firewall]
block = [{blocked}]
vip_policy = {{ eth0 = "drop" }}   # the web VIP answers 80 and 443 only

[[firewall.rule]]                   # the database VIPs serve the servers' network only
action = "allow"
source = "{SERVERS_NET}"
protocol = "tcp"
port = "3306"
destination = "10.111.0.100/30"

[[firewall.rule]]
action = "drop"
protocol = "tcp"
port = "3306"
destination = "10.111.0.100/30"

[[firewall.rule]]                   # metrics and the stats page: the monitoring host only
action = "allow"
source = "{OPS4}"
protocol = "tcp"
port = "9641"

[[firewall.rule]]
action = "drop"
protocol = "tcp"
port = "9641"

[[service]]
name = "www"
vip = "{WEB_VIP}"
port = 80
scheduler = "maglev"               # the same choice on both nodes: a takeover keeps connections
[service.health]
check = "http"
status = "301"                     # port 80 only redirects to HTTPS
interval_ms = 1000
rise = 2
fall = 2
{www}
[[service]]
name = "www-tls"
vip = "{WEB_VIP}"
port = 443
scheduler = "maglev"
[service.health]
check = "https"
path = "/healthz"
host = "www.foobar.com"
sni = "www.foobar.com"
interval_ms = 1000
rise = 2
fall = 2
{www}
[[service]]
name = "db-write"
vip = "{DB_WRITE_VIP}"
port = 3306
forwarding = "fullnat"
snat = ["{snat}"]
failover = "first"
[service.health]
check = "external"
command = ["{check}"]
interval_ms = 1000
timeout_ms = 900
rise = 1
fall = 2
{write}
[[service]]
name = "db-read"
vip = "{DB_READ_VIP}"
port = 3306
forwarding = "fullnat"
snat = ["{snat}"]
[service.health]
check = "mysql"
mysql_user = "check"
interval_ms = 1000
rise = 2
fall = 2
{www}"#,
        mode = opts.xdp_mode,
        socket = socket.display(),
        pin = pin_dir.display(),
        blocked = blocked.join(", "),
        check = check_writable.display(),
        www = backends(&[]),
        write = backends(&["", "role = \"backup\"\n"]),
    )
}
