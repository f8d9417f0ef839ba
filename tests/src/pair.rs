//! An active-passive pair on the test topology, for `tests/tests/ha.rs` and `cargo xtask run
//! --ha`: node A is the topology's `lb` (10.111.0.2) without its static VIPs, node B one
//! added with [`Topology::add_lb`] (10.111.0.3); both run foobar-lb with the same services,
//! and keepalived (its configuration printed by `foobar-lb keepalived-config`) moves the VIPs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::{web4, web6, Netns, Topology, CLIENT4, VIP4, VIP6};

pub const NODE_A: &str = "10.111.0.2";
pub const NODE_B: &str = "10.111.0.3";
/// Host part of node B's address, for [`Topology::add_lb`].
pub const NODE_B_HOST: u8 = 3;
pub const ROUTER_ID: &str = "51";
/// The gateway address NAT backends route the clients through, moved with the VIPs
/// (`keepalived-config --gateway`): whichever node is active gets their replies.
pub const GW4: &str = "10.111.0.254";
pub const GW6: &str = "fd00:f00b::254";
/// The client's IPv6 address on the segment.
const CLIENT6: &str = "fd00:f00b::1";

/// Makes the web servers NAT backends of the pair: plain hosts (no VIP on `lo`) whose route
/// to the client goes through [`GW4`] / [`GW6`], the pair's moving gateway (a host route
/// stands in for a real backend's default route, the client sharing their segment here).
pub fn nat_backends_via_gateway(topo: &Topology) -> Result<()> {
    topo.plain_backends()?;
    for web in &topo.webs {
        web.ip(&["route", "add", &format!("{CLIENT4}/32"), "via", GW4])?;
        web.ip(&["-6", "route", "add", &format!("{CLIENT6}/128"), "via", GW6])?;
    }
    Ok(())
}

/// Whether `ns` holds `addr` on eth0.
pub fn holds(ns: &Netns, addr: &str) -> bool {
    ns.ip(&["addr", "show", "dev", "eth0"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(addr))
        })
        .unwrap_or(false)
}

/// Writes `<dir>/<name>.toml`: services `www` (IPv4) and `www6` (IPv6) on the VIPs, port 80,
/// every web server a backend, with `scheduler`; returns (config, control socket).
pub fn write_node_config(
    topo: &Topology,
    name: &str,
    pin_dir: &Path,
    scheduler: &str,
    xdp_mode: &str,
) -> Result<(PathBuf, PathBuf)> {
    write_node_config_with(topo, name, pin_dir, scheduler, xdp_mode, "")
}

/// As [`write_node_config`] with `service_lines` in each service (e.g. `forwarding = "nat"`).
pub fn write_node_config_with(
    topo: &Topology,
    name: &str,
    pin_dir: &Path,
    scheduler: &str,
    xdp_mode: &str,
    service_lines: &str,
) -> Result<(PathBuf, PathBuf)> {
    let socket = topo.dir.join(format!("{name}.sock"));
    let mut c = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"{xdp_mode}\"\ncontrol_socket = \"{}\"\n\
         pin_dir = \"{}\"\nmetrics_address = \"127.0.0.1:9641\"\n",
        socket.display(),
        pin_dir.display()
    );
    for (service, vip, web) in [
        ("www", VIP4, web4 as fn(usize) -> String),
        ("www6", VIP6, web6),
    ] {
        c += &format!(
            "\n[[service]]\nname = \"{service}\"\nvip = \"{vip}\"\nport = 80\n\
             scheduler = \"{scheduler}\"\n{service_lines}[service.health]\ninterval_ms = 1000\n"
        );
        for i in 1..=topo.webs.len() {
            c += &format!("\n[[service.backend]]\naddress = \"{}\"\n", web(i));
        }
    }
    let path = topo.dir.join(format!("{name}.toml"));
    fs::write(&path, c)?;
    Ok((path, socket))
}

/// Runs `BIN --socket SOCKET keepalived-config ...` for a node whose peer is `peer` (both
/// VIPs, advert 200 ms) and writes the output to `<dir>/<name>.keepalived.conf`.
pub fn write_keepalived_config(
    topo: &Topology,
    bin: &Path,
    name: &str,
    socket: &Path,
    peer: &str,
    priority: &str,
) -> Result<PathBuf> {
    write_keepalived_config_with(topo, bin, name, socket, peer, priority, &[])
}

/// As [`write_keepalived_config`] with more arguments (`--gateway`, `--snat`).
pub fn write_keepalived_config_with(
    topo: &Topology,
    bin: &Path,
    name: &str,
    socket: &Path,
    peer: &str,
    priority: &str,
    more: &[&str],
) -> Result<PathBuf> {
    let mut args: Vec<String> = ["--interface", "eth0", "--vip", VIP4, "--vip", VIP6]
        .iter()
        .chain(more)
        .map(|a| a.to_string())
        .collect();
    args.extend(
        [
            "--peer",
            peer,
            "--priority",
            priority,
            "--router-id",
            ROUTER_ID,
            "--advert-ms",
            "200",
        ]
        .map(str::to_owned),
    );
    let conf = keepalived_config_args(bin, socket, &args)?;
    let path = topo.dir.join(format!("{name}.keepalived.conf"));
    fs::write(&path, conf)?;
    Ok(path)
}

/// What `BIN --socket SOCKET keepalived-config` prints for a node on `interface` serving
/// `vips` with peer `peer` (adverts every 200 ms).
pub fn keepalived_config(
    bin: &Path,
    socket: &Path,
    interface: &str,
    vips: &[&str],
    peer: &str,
    priority: &str,
    router_id: &str,
) -> Result<String> {
    let mut args: Vec<String> = vec!["--interface".into(), interface.into()];
    for vip in vips {
        args.extend(["--vip".into(), vip.to_string()]);
    }
    args.extend(
        [
            "--peer",
            peer,
            "--priority",
            priority,
            "--router-id",
            router_id,
            "--advert-ms",
            "200",
        ]
        .map(str::to_owned),
    );
    keepalived_config_args(bin, socket, &args)
}

/// What `BIN --socket SOCKET keepalived-config ARGS...` prints.
pub fn keepalived_config_args(bin: &Path, socket: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .arg("keepalived-config")
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "keepalived-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// keepalived in a namespace, in the foreground, VRRP only, with its own pid files and log
/// next to its configuration (never the host's /etc/keepalived). Stopped on drop.
pub struct Keepalived {
    child: Option<Child>,
    vrrp_pid: PathBuf,
    pub log: PathBuf,
    /// Where this run's lines start in the log (a restarted node appends to the same file).
    offset: usize,
}

impl Keepalived {
    pub fn start(ns: &Netns, conf: &Path) -> Result<Keepalived> {
        let base = conf.with_extension("");
        let base = base.to_string_lossy();
        let log = PathBuf::from(format!("{base}.log"));
        let vrrp_pid = PathBuf::from(format!("{base}.vrrp.pid"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let offset = out.metadata()?.len() as usize;
        let child = ns
            .cmd("keepalived")
            .args([
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--vrrp",
            ])
            .arg("--use-file")
            .arg(conf)
            .arg("--pid")
            .arg(format!("{base}.pid"))
            .arg("--vrrp_pid")
            .arg(&vrrp_pid)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start keepalived (`cargo xtask test` installs it; or `apt-get install keepalived`)")?;
        Ok(Keepalived {
            child: Some(child),
            vrrp_pid,
            log,
            offset,
        })
    }

    /// This run's log.
    pub fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.get(self.offset..).unwrap_or_default().to_owned()
    }

    /// How many times this run entered `state` (MASTER, BACKUP, FAULT).
    pub fn entered(&self, state: &str) -> usize {
        self.log_text()
            .matches(&format!("Entering {state} STATE"))
            .count()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the VRRP child: a stopped one sends no adverts
    /// and changes nothing, as a frozen node.
    pub fn signal_vrrp(&self, signal: &str) -> Result<()> {
        let pid = fs::read_to_string(&self.vrrp_pid)?;
        crate::netns::run(Command::new("kill").args([&format!("-{signal}"), pid.trim()]))?;
        Ok(())
    }

    /// SIGKILL to the parent and its VRRP child (no clean-up: the VIPs stay where they were).
    pub fn kill(&mut self) {
        let vrrp = fs::read_to_string(&self.vrrp_pid).unwrap_or_default();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(pid) = vrrp.trim().parse::<u32>() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill();
    }
}

/// Port of the pair's `[sync]` listeners.
pub const SYNC_PORT: u16 = 7700;

/// Writes `key` to `path`, readable by its owner only (as `[sync]` requires).
pub fn write_sync_key(path: &Path, key: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, key)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Appends a `[sync]` section to a node's config: listening on `node`, the peer `peer`,
/// the key in `key_file`, waiting at most `bulk_timeout_ms` for a peer at start.
pub fn add_sync(
    config: &Path,
    node: &str,
    peer: &str,
    key_file: &Path,
    bulk_timeout_ms: u64,
) -> Result<()> {
    let mut c = fs::read_to_string(config)?;
    c += &format!(
        "\n[sync]\nlisten = \"{node}:{SYNC_PORT}\"\npeers = [\"{peer}:{SYNC_PORT}\"]\n\
         key_file = \"{}\"\nbulk_timeout_ms = {bulk_timeout_ms}\n",
        key_file.display()
    );
    // A table header starts a top-level table wherever it stands.
    fs::write(config, c)?;
    Ok(())
}
