//! Active-active behind an ECMP router, for `tests/tests/ecmp.rs` and `cargo xtask run --ecmp`:
//! the test topology's `lb` (node A, 10.111.0.2) and a node B (10.111.0.3) run foobar-lb with
//! the same Maglev services and `[announce]`, and BIRD configured by `foobar-lb bird-config`;
//! a router namespace (10.111.0.4) runs BIRD with multipath (`merge paths`) and hashes flows
//! on L4 fields over the nodes; the client reaches the IPv4 VIP through the router.
//!
//! Here there is no `dummy` link type, so each node's announce interface is a veth pair's end.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::{bin, Daemon},
    netns::{run, Netns, Topology, VIP4},
    pair::{write_node_config, NODE_A, NODE_B, NODE_B_HOST},
};

pub const ROUTER: &str = "10.111.0.4";
const ROUTER_HOST: u8 = 4;
pub const ANNOUNCE_IF: &str = "lbvips";

/// BIRD in a namespace, in the foreground with its own control socket; killed on drop.
pub struct Bird {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Bird {
    pub fn start(ns: &Netns, conf: &Path) -> Result<Bird> {
        let base = conf.with_extension("");
        let log = PathBuf::from(format!("{}.bird.log", base.display()));
        let out = fs::File::create(&log)?;
        let child = ns
            .cmd("bird")
            .arg("-f")
            .arg("-c")
            .arg(conf)
            .arg("-s")
            .arg(format!("{}.ctl", base.display()))
            .arg("-P")
            .arg(format!("{}.bird.pid", base.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start bird (Debian package bird2; `cargo xtask test` installs it)")?;
        Ok(Bird {
            child: Some(child),
            log,
        })
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One balancer node: namespace, daemon config and socket, BIRD config.
pub struct Node {
    pub name: &'static str,
    pub ns: String,
    pub addr: &'static str,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub bird_conf: PathBuf,
}

impl Node {
    pub fn ns(&self) -> std::mem::ManuallyDrop<Netns> {
        Netns::attach(&self.ns)
    }

    pub fn start(&self) -> Result<Daemon> {
        Daemon::start_with(&self.ns(), &self.config, &self.socket, &[])
    }

    pub fn start_bird(&self) -> Result<Bird> {
        Bird::start(&self.ns(), &self.bird_conf)
    }

    /// `foobar-lb --socket <node's> ARGS`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        crate::daemon::cli_at(&bin(), &self.socket, args)
    }
}

/// The topology with both nodes configured (daemons and BIRD not started) and the router's
/// BIRD running.
pub struct Group {
    // Drop order: the router's BIRD before the namespaces go.
    pub router_bird: Bird,
    pub a: Node,
    pub b: Node,
    pub topo: Topology,
}

impl Group {
    pub fn new(tag: &str, xdp_mode: &str, lb_bin: &Path) -> Result<Group> {
        Group::with(tag, xdp_mode, lb_bin, "maglev", false)
    }

    /// With `scheduler` in every service, and with `sync` flow sync between the nodes.
    pub fn with(
        tag: &str,
        xdp_mode: &str,
        lb_bin: &Path,
        scheduler: &str,
        sync: bool,
    ) -> Result<Group> {
        let mut topo = Topology::new(tag, 2)?;
        topo.release_lb_vips()?;
        let b = topo.add_lb(NODE_B_HOST)?;
        let r = topo.add_client(ROUTER_HOST)?;
        let router = &topo.extra[r];
        router.sysctl("net.ipv4.ip_forward", "1")?;
        // Hash on the 5-tuple: the flows of one client spread over the nodes.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        // The router forwards out of the interface it received on (one segment): no
        // redirects telling the client to bypass it.
        for k in ["all", "default", "eth0"] {
            router.sysctl(&format!("net.ipv4.conf.{k}.send_redirects"), "0")?;
        }
        topo.client
            .ip(&["route", "add", &format!("{VIP4}/32"), "via", ROUTER])?;
        let router_conf = topo.dir.join("router.conf");
        fs::write(&router_conf, router_config(&topo.dir))?;
        let router_bird = Bird::start(router, &router_conf)?;
        let a = node(
            &topo,
            ("a", &topo.lb.name, NODE_A),
            &topo.pin_dir(),
            (xdp_mode, scheduler),
            lb_bin,
        )?;
        let b_pin = topo.lbs[b].pin_dir.clone();
        let b_ns = topo.lbs[b].ns.name.clone();
        let b = node(
            &topo,
            ("b", &b_ns, NODE_B),
            &b_pin,
            (xdp_mode, scheduler),
            lb_bin,
        )?;
        if sync {
            let key = topo.dir.join("sync.key");
            crate::pair::write_sync_key(&key, "the ECMP group's shared sync secret, 32+ bytes")?;
            crate::pair::add_sync(&a.config, NODE_A, NODE_B, &key, 3000)?;
            crate::pair::add_sync(&b.config, NODE_B, NODE_A, &key, 3000)?;
        }
        Ok(Group {
            router_bird,
            a,
            b,
            topo,
        })
    }

    pub fn router(&self) -> &Netns {
        &self.topo.extra[0]
    }

    /// The router's next hops for the IPv4 VIP (node addresses), sorted.
    pub fn next_hops(&self) -> Vec<String> {
        let out = self
            .router()
            .ip(&["-j", "route", "show", &format!("{VIP4}/32")])
            .map(|o| o.stdout)
            .unwrap_or_default();
        let routes: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        let mut hops = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.push(g.to_owned());
            }
            for n in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = n["gateway"].as_str() {
                    hops.push(g.to_owned());
                }
            }
        }
        hops.sort();
        hops
    }
}

/// Node `name`: the announce interface, its daemon config (the pair's Maglev services plus
/// `[announce]`) and its BIRD config from `foobar-lb bird-config`.
fn node(
    topo: &Topology,
    (name, ns, addr): (&'static str, &str, &'static str),
    pin_dir: &Path,
    (xdp_mode, scheduler): (&str, &str),
    lb_bin: &Path,
) -> Result<Node> {
    let netns = Netns::attach(ns);
    netns.ip(&[
        "link",
        "add",
        ANNOUNCE_IF,
        "type",
        "veth",
        "peer",
        "name",
        "lbvipsp",
    ])?;
    for i in [ANNOUNCE_IF, "lbvipsp"] {
        netns.ip(&["link", "set", i, "up"])?;
    }
    // The VIPs become local addresses of the node: it must not answer ARP for them on eth0.
    netns.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
    let (config, socket) = write_node_config(topo, name, pin_dir, scheduler, xdp_mode)?;
    let mut text = fs::read_to_string(&config)?;
    text += &format!("\n[announce]\ninterface = \"{ANNOUNCE_IF}\"\n");
    fs::write(&config, text)?;
    let out = run(Command::new(lb_bin).args([
        "bird-config",
        "--local",
        addr,
        "--router",
        ROUTER,
        "--interface",
        "eth0",
        "--announce-interface",
        ANNOUNCE_IF,
    ]))?;
    let bird_conf = topo.dir.join(format!("{name}.conf"));
    let log = topo.dir.join(format!("{name}.bird-events.log"));
    fs::write(
        &bird_conf,
        format!(
            "log \"{}\" all;\n{}",
            log.display(),
            String::from_utf8_lossy(&out.stdout)
        ),
    )?;
    if !out.status.success() {
        bail!("bird-config failed");
    }
    Ok(Node {
        name,
        ns: ns.to_owned(),
        addr,
        config,
        socket,
        bird_conf,
    })
}

/// The router: BGP with both nodes (AS 65001) from AS 65000, BFD, and the kernel protocol
/// merging equal routes into one multipath route.
fn router_config(dir: &Path) -> String {
    let mut c = format!(
        "log \"{}/router.bird-events.log\" all;\nrouter id {ROUTER};\n\
         protocol device {{ scan time 1; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol bfd {{ interface \"eth0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
         template bgp lb {{ local {ROUTER} as 65000; hold time 3; keepalive time 1; connect retry time 1; bfd on;\n  \
         ipv4 {{ import all; export none; }};\n  error wait time 1, 5;\n}}\n",
        dir.display()
    );
    for (n, addr) in [("a", NODE_A), ("b", NODE_B)] {
        c += &format!("protocol bgp node_{n} from lb {{ neighbor {addr} as 65001; }}\n");
    }
    c
}
