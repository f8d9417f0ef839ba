//! Network namespaces for end-to-end tests and the demo: unique names, everything removed when
//! the guard drops (on success, failure and panic alike).
//!
//! Topology (shared/TESTING-NETNS.md): one Linux bridge in its own namespace; the client, the
//! load balancer and each web server have one veth into it. Backends hold the VIP on `lo` with
//! `arp_ignore=1`/`arp_announce=2` (direct server return); the load balancer holds it on its
//! interface so it answers ARP/ND for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

pub const VIP4: &str = "10.111.0.100";
pub const VIP6: &str = "fd00:f00b::100";
pub const CLIENT4: &str = "10.111.0.1";
pub const LB4: &str = "10.111.0.2";
pub const LB6: &str = "fd00:f00b::2";
/// The balancer's SNAT addresses in full-NAT topologies ([`Topology::fullnat_setup`]).
pub const SNAT4: &str = "10.111.0.250";
pub const SNAT6: &str = "fd00:f00b::250";

/// Address of web server `i` (1-based).
pub fn web4(i: usize) -> String {
    format!("10.111.0.{}", 10 + i)
}

pub fn web6(i: usize) -> String {
    format!("fd00:f00b::{}", 10 + i)
}

/// Adds the IPv6 address `addr` (with its length) to `ns`'s eth0 deprecated (preferred_lft 0):
/// Linux then never picks it as the source of the host's own connections.
fn add_deprecated(ns: &Netns, addr: &str) -> Result<()> {
    ns.ip(&[
        "addr",
        "add",
        addr,
        "dev",
        "eth0",
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    Ok(())
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// One network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that this value does not own (no cleanup on drop).
    pub fn attach(name: &str) -> std::mem::ManuallyDrop<Netns> {
        std::mem::ManuallyDrop::new(Netns {
            name: name.to_owned(),
        })
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut v = vec!["-n", &self.name];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// A command that runs inside this namespace. `nsenter --net` rather than `ip netns exec`:
    /// the latter gives the process a private mount namespace, where a bpffs the daemon mounts
    /// (and its pins) would vanish with it.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        c
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .cmd("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))
        .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Killing what still runs inside first lets the namespace go at once.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A unique prefix for this process' namespaces (kept short: interface names are 15 bytes).
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "fl{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Splits a name made from [`unique_prefix`] (`fl<tag><pid>x<n>` and whatever follows: a
/// role, `-files`) into the prefix and the pid of the process that made it.
pub fn parse_prefix(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix("fl")?;
    let tag = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let pid_len = rest[tag..].bytes().take_while(u8::is_ascii_digit).count();
    let after_pid = &rest[tag + pid_len..];
    let n_len = after_pid
        .strip_prefix('x')?
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if tag == 0 || pid_len == 0 || n_len == 0 {
        return None;
    }
    let pid = rest[tag..tag + pid_len].parse().ok()?;
    Some((&name[..2 + tag + pid_len + 1 + n_len], pid))
}

/// Whether a name comes from [`unique_prefix`] of a process that no longer runs: what a killed
/// test run leaves behind. Names of running processes (a concurrent run, the demo) are not.
fn left_over(name: &str) -> Option<&str> {
    let (prefix, pid) = parse_prefix(name)?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(prefix)
}

/// Where test topologies pin their data planes.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/foobar-lb-test";

/// Removes what killed test runs left: nginx, mariadbd and foobar-lb processes started from
/// their files, their network namespaces (and anything still running in them), their pin
/// directories under [`TEST_PIN_ROOT`] and their temporary directories. Only names from
/// [`unique_prefix`] whose creating process is gone are touched. Returns what was swept.
pub fn sweep_leftovers() -> Vec<String> {
    let mut swept = Vec::new();
    // Processes first: a daemon still running would hold its pins and interfaces.
    let procs = leftover_processes();
    for (pid, what) in &procs {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        swept.push(format!("killed {what} (pid {pid})"));
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        let list = String::from_utf8_lossy(&out.stdout);
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if left_over(name).is_some() {
                // Netns's drop kills what runs inside, then deletes it.
                drop(Netns {
                    name: name.to_owned(),
                });
                swept.push(format!("removed network namespace {name}"));
            }
        }
    }
    for dir in leftover_entries(Path::new(TEST_PIN_ROOT), "") {
        // Links first (teardown's order); a test's directory may hold test-made maps too.
        let _ = foobar_lb::dataplane::teardown(&dir);
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&dir);
        swept.push(format!("removed pin directory {}", dir.display()));
    }
    for dir in leftover_entries(&std::env::temp_dir(), "-files") {
        let _ = fs::remove_dir_all(&dir);
        swept.push(format!("removed {}", dir.display()));
    }
    swept
}

/// Entries of `dir` named `<left-over prefix><suffix>`.
fn leftover_entries(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            left_over(&name).is_some_and(|p| name.len() == p.len() + suffix.len())
                && name.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect()
}

/// nginx, mariadbd and foobar-lb processes whose command line names a left-over run's files
/// (`/tmp/<prefix>-files/...`), and their children (nginx workers).
fn leftover_processes() -> Vec<(u32, String)> {
    let mut found: Vec<(u32, String)> = Vec::new();
    let mut parents: Vec<(u32, u32, String)> = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !matches!(comm, "nginx" | "foobar-lb" | "mariadbd") {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ppid = fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|st| {
                // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
                st.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        let names_leftover = cmdline
            .split(|c: char| c == '/' || c.is_whitespace())
            .any(|part| {
                part.strip_suffix("-files")
                    .and_then(left_over)
                    .is_some_and(|p| part.len() == p.len() + "-files".len())
            });
        let what = format!("{comm}: {}", cmdline.trim());
        if names_leftover {
            found.push((pid, what));
        } else {
            parents.push((pid, ppid, what));
        }
    }
    let masters: Vec<u32> = found.iter().map(|f| f.0).collect();
    found.extend(
        parents
            .into_iter()
            .filter(|(_, ppid, _)| masters.contains(ppid))
            .map(|(pid, _, what)| (pid, what)),
    );
    found
}

/// The www.foobar.com topology: a client, a load balancer and `webs` nginx web servers on one
/// L2 segment. Drop removes everything.
pub struct Topology {
    pub prefix: String,
    /// Temporary files (nginx configs, logs, pages, daemon config); removed on drop.
    pub dir: PathBuf,
    // Field order is drop order: hosts before the bridge that links them.
    pub client: Netns,
    pub lb: Netns,
    pub webs: Vec<Netns>,
    /// More clients added with [`Topology::add_client`].
    pub extra: Vec<Netns>,
    /// More load balancers added with [`Topology::add_lb`], each with its own pin directory.
    pub lbs: Vec<ExtraLb>,
    /// nginx started after this is set logs requests to `<dir>/web<i>.access` (benchmarks
    /// count them to check the spread).
    pub access_log: bool,
    pub bridge: Netns,
}

impl Topology {
    pub fn new(tag: &str, webs: usize) -> Result<Topology> {
        let prefix = unique_prefix(tag);
        let dir = std::env::temp_dir().join(format!("{prefix}-files"));
        fs::create_dir_all(&dir)?;
        let bridge = Netns::new(&format!("{prefix}br"))?;
        // Partial construction is cleaned up by the guards created so far.
        bridge.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        // br_netfilter is built in: bridged frames must not go through conntrack.
        for fam in ["iptables", "ip6tables", "arptables"] {
            let _ = bridge.sysctl(&format!("net.bridge.bridge-nf-call-{fam}"), "0");
        }
        let host = |role: &str| -> Result<Netns> {
            let ns = Netns::new(&format!("{prefix}{role}"))?;
            bridge.ip(&[
                "link", "add", role, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ])?;
            bridge.ip(&["link", "set", role, "master", "br0", "up"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            for key in ["all", "default", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
            }
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            Ok(ns)
        };
        let client = host("c")?;
        let lb = host("lb")?;
        let mut web_ns = Vec::new();
        for i in 1..=webs {
            web_ns.push(host(&format!("w{i}"))?);
        }
        let topo = Topology {
            prefix,
            dir,
            client,
            lb,
            webs: web_ns,
            extra: Vec::new(),
            lbs: Vec::new(),
            access_log: false,
            bridge,
        };
        topo.configure()?;
        Ok(topo)
    }

    fn configure(&self) -> Result<()> {
        let addr = |ns: &Netns, a: &str, dev: &str| ns.ip(&["addr", "add", a, "dev", dev, "nodad"]);
        addr(&self.client, &format!("{CLIENT4}/24"), "eth0")?;
        addr(&self.client, "fd00:f00b::1/64", "eth0")?;
        addr(&self.lb, &format!("{LB4}/24"), "eth0")?;
        addr(&self.lb, &format!("{LB6}/64"), "eth0")?;
        // The load balancer owns the VIPs on its interface: it answers ARP/ND for them.
        addr(&self.lb, &format!("{VIP4}/32"), "eth0")?;
        // Deprecated (preferred_lft 0), or Linux picks the /128 VIP as the source address of the
        // load balancer's own connections to backends (health checks), whose replies then stay
        // on the backend, which holds the VIP too.
        add_deprecated(&self.lb, &format!("{VIP6}/128"))?;
        for (i, web) in self.webs.iter().enumerate() {
            addr(web, &format!("{}/24", web4(i + 1)), "eth0")?;
            addr(web, &format!("{}/64", web6(i + 1)), "eth0")?;
            // Direct server return: the VIP on lo, never announced or answered for.
            addr(web, &format!("{VIP4}/32"), "lo")?;
            addr(web, &format!("{VIP6}/128"), "lo")?;
            web.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
            web.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        }
        // Frames XDP sends on must carry full checksums (TESTING-NETNS.md).
        for ns in std::iter::once(&self.client).chain(&self.webs) {
            run(ns.cmd("ethtool").args(["-K", "eth0", "tx", "off"]))?;
        }
        // Many short connections from one client: reuse TIME_WAIT ports.
        self.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        Ok(())
    }

    /// Adds another client at 10.111.0.<host> / fd00:f00b::<host>; returns its index in `extra`.
    pub fn add_client(&mut self, host: u8) -> Result<usize> {
        let role = format!("c{host}");
        let ns = Netns::new(&format!("{}{role}", self.prefix))?;
        self.bridge.ip(&[
            "link", "add", &role, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.bridge
            .ip(&["link", "set", &role, "master", "br0", "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("10.111.0.{host}/24"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("fd00:f00b::{host}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        run(ns.cmd("ethtool").args(["-K", "eth0", "tx", "off"]))?;
        self.extra.push(ns);
        Ok(self.extra.len() - 1)
    }

    /// Adds another load balancer namespace at 10.111.0.<host> / fd00:f00b::<host>, set up as
    /// `lb` is but without the VIPs (whoever should hold them adds them, e.g. keepalived), with
    /// a pin directory of its own (a prefix of its own, so a killed run's is swept too).
    /// Returns its index in `lbs`.
    pub fn add_lb(&mut self, host: u8) -> Result<usize> {
        let role = format!("lb{host}");
        let ns = Netns::new(&format!("{}{role}", self.prefix))?;
        let lb = ExtraLb {
            ns,
            pin_dir: PathBuf::from(format!("{TEST_PIN_ROOT}/{}", unique_prefix("lb"))),
        };
        self.bridge.ip(&[
            "link",
            "add",
            &role,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lb.ns.name,
        ])?;
        self.bridge
            .ip(&["link", "set", &role, "master", "br0", "up"])?;
        lb.ns.ip(&["link", "set", "eth0", "up"])?;
        for key in ["all", "default", "eth0"] {
            lb.ns
                .sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        lb.ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        for a in [
            format!("10.111.0.{host}/24"),
            format!("fd00:f00b::{host}/64"),
        ] {
            lb.ns.ip(&["addr", "add", &a, "dev", "eth0", "nodad"])?;
        }
        self.lbs.push(lb);
        Ok(self.lbs.len() - 1)
    }

    /// Removes the VIPs from `lb`'s interface (for a pair whose VIPs keepalived moves).
    pub fn release_lb_vips(&self) -> Result<()> {
        self.lb
            .ip(&["addr", "del", &format!("{VIP4}/32"), "dev", "eth0"])?;
        self.lb
            .ip(&["addr", "del", &format!("{VIP6}/128"), "dev", "eth0"])?;
        Ok(())
    }

    pub fn web(&self, i: usize) -> &Netns {
        &self.webs[i - 1]
    }

    /// Starts nginx in web server `i`: `/` answers `web<i>`, `/big` is 1 MiB.
    pub fn start_web(&self, i: usize) -> Result<()> {
        self.start_nginx(&self.webs[i - 1], &format!("web{i}"), 80)
    }

    /// Starts nginx in `ns` on `port` (IPv4 and IPv6): `/` answers `name`, `/big` is 1 MiB.
    pub fn start_nginx(&self, ns: &Netns, name: &str, port: u16) -> Result<()> {
        let root = self.dir.join(name);
        fs::create_dir_all(&root)?;
        fs::write(root.join("big"), vec![b'x'; 1 << 20])?;
        let conf = self.dir.join(format!("{name}.conf"));
        let access = if self.access_log {
            format!(
                "{}/{name}.access combined buffer=64k flush=1s",
                self.dir.display()
            )
        } else {
            "off".into()
        };
        fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\npid {dir}/{name}.pid;\nerror_log {dir}/{name}.err;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log {access}; keepalive_requests 10000;\n  server {{ listen {port}; listen [::]:{port};\n    root {root};\n    location = / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n  }}\n}}\n",
                dir = self.dir.display(),
                root = root.display(),
            ),
        )?;
        run(ns.cmd("nginx").args(["-c"]).arg(&conf))?;
        Ok(())
    }

    /// Starts nginx on `port` in every web server (`/` answers `web<i>`): unmodified NAT and
    /// full-NAT backends.
    pub fn start_webs_nginx(&self, port: u16) -> Result<()> {
        for (i, web) in self.webs.iter().enumerate() {
            self.start_nginx(web, &format!("web{}", i + 1), port)?;
        }
        Ok(())
    }

    /// Stops nginx in web server `i` (for failover tests).
    pub fn stop_web(&self, i: usize) -> Result<()> {
        let pid = fs::read_to_string(self.dir.join(format!("web{i}.pid")))?;
        run(Command::new("kill").arg(pid.trim())).map(|_| ())
    }

    /// Deletes the load balancer's eth0 and creates it again (a new device with a new MAC), with
    /// its addresses, as a network manager recreating a device would.
    pub fn recreate_lb_eth0(&self) -> Result<()> {
        self.bridge.ip(&["link", "del", "lb"])?;
        self.bridge.ip(&[
            "link",
            "add",
            "lb",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.lb.name,
        ])?;
        self.bridge
            .ip(&["link", "set", "lb", "master", "br0", "up"])?;
        let lb = &self.lb;
        lb.ip(&["link", "set", "eth0", "up"])?;
        lb.sysctl("net.ipv4.conf.eth0.rp_filter", "0")?;
        for a in [
            format!("{LB4}/24"),
            format!("{LB6}/64"),
            format!("{VIP4}/32"),
        ] {
            lb.ip(&["addr", "add", &a, "dev", "eth0", "nodad"])?;
        }
        add_deprecated(lb, &format!("{VIP6}/128"))?;
        // The VIP's MAC changed: neighbours learn it again at once instead of after a timeout.
        for ns in std::iter::once(&self.client).chain(&self.webs) {
            ns.ip(&["neigh", "flush", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Where this topology's daemon pins its data plane.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("{TEST_PIN_ROOT}/{}", self.prefix))
    }

    /// Writes a daemon config for the VIPs with every web server as a backend.
    pub fn write_config(&self, xdp_mode: &str, socket: &Path) -> Result<PathBuf> {
        self.write_config_with(xdp_mode, socket, "", &|_| String::new(), self.webs.len())
    }

    /// Like [`Self::write_config`], with `service_extra` added to each service table (e.g. a
    /// `[service.health]` table), `backend_extra(i)` to web `i`'s backend table, and only the
    /// first `n` web servers as backends.
    pub fn write_config_with(
        &self,
        xdp_mode: &str,
        socket: &Path,
        service_extra: &str,
        backend_extra: &dyn Fn(usize) -> String,
        n: usize,
    ) -> Result<PathBuf> {
        let mut c = format!(
            "interfaces = [\"eth0\"]\nxdp_mode = \"{xdp_mode}\"\ncontrol_socket = \"{}\"\n\
             pin_dir = \"{}\"\n",
            socket.display(),
            self.pin_dir().display()
        );
        for (name, vip, addr) in [
            ("www", VIP4, web4 as fn(usize) -> String),
            ("www6", VIP6, web6),
        ] {
            c += &format!(
                "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\n{service_extra}\n"
            );
            for i in 1..=n {
                c += &format!(
                    "\n[[service.backend]]\naddress = \"{}\"\n{}\n",
                    addr(i),
                    backend_extra(i)
                );
            }
        }
        let path = self.dir.join("foobar-lb.toml");
        fs::write(&path, c)?;
        Ok(path)
    }
}

/// A load balancer added with [`Topology::add_lb`].
pub struct ExtraLb {
    pub ns: Netns,
    /// Where its daemon pins its data plane (torn down with the topology).
    pub pin_dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        // Pins of a daemon that was killed or left the data plane running.
        let _ = foobar_lb::dataplane::teardown(&self.pin_dir());
        for lb in &self.lbs {
            let _ = foobar_lb::dataplane::teardown(&lb.pin_dir);
            let _ = fs::remove_dir(&lb.pin_dir);
        }
    }
}

impl Topology {
    /// Attaches the XDP_PASS program to the load balancer's bridge port, so frames the load
    /// balancer sends with XDP_TX in native mode are delivered. Keep the value alive.
    pub fn attach_lb_peer_pass(&self) -> Result<foobar_lb::dataplane::AuxProgram> {
        self.attach_peer_pass("lb")
    }

    /// The same for bridge port `port` (`lb<host>` for a load balancer from [`Self::add_lb`]).
    pub fn attach_peer_pass(&self, port: &str) -> Result<foobar_lb::dataplane::AuxProgram> {
        in_netns(&self.bridge.name, || {
            let mut p = foobar_lb::dataplane::AuxProgram::pass()?;
            p.attach(port, foobar_lb::config::XdpMode::Native)?;
            Ok(p)
        })
    }
}

/// Runs `f` on a thread that has entered network namespace `name`.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// The index of interface `name` in the calling thread's network namespace (0: none). By
/// name from the kernel: /sys shows the namespace that mounted it, not the thread's.
pub fn ifindex(name: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a valid C string; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Spawns `f` on a thread that has entered network namespace `name` (for load that runs while
/// the test does other things); the thread panics if it cannot enter it.
pub fn spawn_in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        // SAFETY: a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
}

/// A counter of the `Tcp:` line of `/proc/net/snmp` in `ns` (e.g. `EstabResets`, `OutRsts`).
pub fn tcp_counter(ns: &Netns, name: &str) -> Result<u64> {
    let out = run(ns.cmd("cat").arg("/proc/net/snmp"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines in /proc/net/snmp of {}", ns.name);
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Tcp counter {name} in /proc/net/snmp"))
}

impl Topology {
    /// Makes the web servers NAT backends: no VIP on `lo`, ARP sysctls back to Linux's
    /// defaults, and replies to the clients routed through the load balancer. The clients share
    /// the backends' segment here, so a host route (/32, /128) stands in for what a real NAT
    /// backend has: its default route via the balancer.
    pub fn nat_backends(&self) -> Result<()> {
        self.plain_backends()?;
        for web in &self.webs {
            web.ip(&["route", "add", &format!("{CLIENT4}/32"), "via", LB4])?;
            web.ip(&["-6", "route", "add", "fd00:f00b::1/128", "via", LB6])?;
        }
        Ok(())
    }

    /// Undoes the direct-server-return setup of the web servers (VIPs on lo, ARP sysctls at
    /// their defaults): hosts that know nothing of the balancer.
    pub fn plain_backends(&self) -> Result<()> {
        for web in &self.webs {
            web.ip(&["addr", "del", &format!("{VIP4}/32"), "dev", "lo"])?;
            web.ip(&["addr", "del", &format!("{VIP6}/128"), "dev", "lo"])?;
            web.sysctl("net.ipv4.conf.all.arp_ignore", "0")?;
            web.sysctl("net.ipv4.conf.all.arp_announce", "0")?;
        }
        Ok(())
    }

    /// Full NAT: plain backends with no route beyond their subnet; the balancer owns the SNAT
    /// addresses ([`SNAT4`], [`SNAT6`]: it answers ARP/ND for them) and forwards (the FIB
    /// lookup requires it on the receiving interface).
    pub fn fullnat_setup(&self) -> Result<()> {
        self.plain_backends()?;
        self.lb
            .ip(&["addr", "add", &format!("{SNAT4}/32"), "dev", "eth0"])?;
        // Deprecated, so the balancer's own connections (health checks) never pick it.
        add_deprecated(&self.lb, &format!("{SNAT6}/128"))?;
        self.lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        self.lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }

    /// A daemon config with NAT services: `www` (VIP4:80) and `www6` (VIP6:80) over every web
    /// server at `port`, and `extra` appended (e.g. `[nat.timeouts]`, more services).
    pub fn write_nat_config(
        &self,
        xdp_mode: &str,
        socket: &Path,
        port: u16,
        extra: &str,
    ) -> Result<PathBuf> {
        self.write_translating_config(xdp_mode, socket, port, "forwarding = \"nat\"\n", extra)
    }

    /// As [`Topology::write_nat_config`] with `health` (lines of a `[service.health]` table)
    /// in both services.
    pub fn write_nat_config_with_health(
        &self,
        xdp_mode: &str,
        socket: &Path,
        port: u16,
        health: &str,
    ) -> Result<PathBuf> {
        let fwd = format!("forwarding = \"nat\"\n\n[service.health]\n{health}\n");
        self.write_translating_config(xdp_mode, socket, port, &fwd, "")
    }

    /// As [`Topology::write_nat_config`] with `forwarding = "fullnat"` and the SNAT addresses.
    pub fn write_fullnat_config(
        &self,
        xdp_mode: &str,
        socket: &Path,
        port: u16,
        extra: &str,
    ) -> Result<PathBuf> {
        let fwd = format!("forwarding = \"fullnat\"\nsnat = [\"{SNAT4}\", \"{SNAT6}\"]\n");
        self.write_translating_config(xdp_mode, socket, port, &fwd, extra)
    }

    fn write_translating_config(
        &self,
        xdp_mode: &str,
        socket: &Path,
        port: u16,
        forwarding: &str,
        extra: &str,
    ) -> Result<PathBuf> {
        let mut c = format!(
            "interfaces = [\"eth0\"]\nxdp_mode = \"{xdp_mode}\"\ncontrol_socket = \"{}\"\n\
             pin_dir = \"{}\"\n",
            socket.display(),
            self.pin_dir().display()
        );
        for (name, vip, addr) in [
            ("www", VIP4, web4 as fn(usize) -> String),
            ("www6", VIP6, web6),
        ] {
            c += &format!(
                "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\n{forwarding}"
            );
            for i in 1..=self.webs.len() {
                c += &format!(
                    "\n[[service.backend]]\naddress = \"{}\"\nport = {port}\n",
                    addr(i)
                );
            }
        }
        c += extra;
        let path = self.dir.join("foobar-lb.toml");
        fs::write(&path, c)?;
        Ok(path)
    }

    /// Writes a file of `mib` MiB of varied bytes as `/<name>` on every web server; returns
    /// its SHA-256.
    pub fn big_file(&self, name: &str, mib: usize) -> Result<String> {
        let mut data = Vec::with_capacity(mib << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while data.len() < mib << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        for i in 1..=self.webs.len() {
            fs::write(self.dir.join(format!("web{i}")).join(name), &data)?;
        }
        sha256(&self.dir.join("web1").join(name))
    }
}

/// The SHA-256 of a file, by `sha256sum`.
pub fn sha256(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefixes_parse_back_to_their_pid() {
        let p = unique_prefix("lk");
        let (prefix, pid) = parse_prefix(&p).unwrap();
        assert_eq!((prefix, pid), (p.as_str(), std::process::id()));
        for name in [format!("{p}lb"), format!("{p}w1"), format!("{p}-files")] {
            assert_eq!(parse_prefix(&name), Some((p.as_str(), std::process::id())));
        }
        assert_eq!(parse_prefix("flfo123x0br"), Some(("flfo123x0", 123)));
        for other in [
            "foobar-lb",
            "fl123x0",
            "flab x0",
            "flab12",
            "flab12xbr",
            "netns1",
            "",
        ] {
            assert_eq!(parse_prefix(other), None, "{other}");
        }
        // This process runs: nothing of it is a leftover.
        assert_eq!(left_over(&p), None);
    }
}
