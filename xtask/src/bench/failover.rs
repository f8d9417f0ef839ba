//! The failover table: the same active-passive pair (keepalived, VRRPv3 200 ms adverts) and the
//! same load, with foobar-lb (round robin, Maglev, each with and without flow sync) or HAProxy
//! on the nodes; the active node
//! crashes mid-load (interface down, balancer and keepalived SIGKILLed). Counted: new
//! connections that failed, keep-alive connections broken or moved to another backend, resets
//! the client saw, whether a paced download survived, and the takeover time.

use std::{
    fs,
    path::Path,
    process::{Child, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use foobar_lb_tests::{
    daemon::{bin, cli_at, Daemon},
    load::{start_webs_with_long_file, wait_for, Load, LoadResult},
    netns::{tcp_counter, web4, Netns, Topology, VIP4},
    pair::{
        add_sync, holds, keepalived_config, write_node_config, write_sync_key, Keepalived, NODE_A,
        NODE_B, NODE_B_HOST,
    },
};
use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Balancer {
    FoobarRoundRobin,
    FoobarMaglev,
    FoobarRoundRobinSync,
    FoobarMaglevSync,
    Haproxy,
}

impl Balancer {
    pub const ALL: [Balancer; 5] = [
        Balancer::FoobarRoundRobin,
        Balancer::FoobarMaglev,
        Balancer::FoobarRoundRobinSync,
        Balancer::FoobarMaglevSync,
        Balancer::Haproxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Balancer::FoobarRoundRobin => "foobar-lb pair, round robin (no flow sync)",
            Balancer::FoobarMaglev => "foobar-lb pair, Maglev (no flow sync)",
            Balancer::FoobarRoundRobinSync => "foobar-lb pair, round robin + flow sync",
            Balancer::FoobarMaglevSync => "foobar-lb pair, Maglev + flow sync",
            Balancer::Haproxy => "HAProxy pair (TCP mode, round robin)",
        }
    }
}

#[derive(Serialize)]
pub struct Row {
    pub balancer: Balancer,
    pub new_connections: usize,
    pub new_failed: usize,
    pub keepalive_connections: usize,
    /// Broken (an error) or answered by another backend after the takeover.
    pub keepalive_lost: usize,
    pub resets: u64,
    pub download_intact: bool,
    pub takeover_ms: f64,
}

/// Runs the crash for every balancer, one after the other, on fresh topologies.
pub fn run(quick: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for b in Balancer::ALL {
        println!("bench: failover, {}...", b.label());
        rows.push(one(b, quick).with_context(|| format!("failover bench: {}", b.label()))?);
    }
    Ok(rows)
}

/// What runs on a node: the daemon, or HAProxy (with the script keepalived tracks).
enum Node {
    Foobar(Daemon),
    Haproxy(Child),
}

impl Node {
    fn kill(&mut self) {
        match self {
            Node::Foobar(d) => d.kill(),
            Node::Haproxy(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Node::Haproxy(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn one(b: Balancer, quick: bool) -> Result<Row> {
    let mut topo = Topology::new("fo", 2)?;
    let long = start_webs_with_long_file(&topo);
    topo.release_lb_vips()?;
    let bi = topo.add_lb(NODE_B_HOST)?;
    let nodes = [
        ("a", topo.lb.name.clone(), topo.pin_dir(), NODE_B, "150"),
        (
            "b",
            topo.lbs[bi].ns.name.clone(),
            topo.lbs[bi].pin_dir.clone(),
            NODE_A,
            "100",
        ),
    ];
    let mut running = Vec::new();
    let mut keepalived = Vec::new();
    let mut confs = Vec::new();
    for (name, ns, pin_dir, peer, prio) in &nodes {
        let netns = Netns::attach(ns);
        let (node, socket, script_bin) = match b {
            Balancer::Haproxy => {
                let (child, check) = start_haproxy(&topo, &netns, name)?;
                (Node::Haproxy(child), topo.dir.join("unused.sock"), check)
            }
            _ => {
                let maglev = matches!(b, Balancer::FoobarMaglev | Balancer::FoobarMaglevSync);
                let sched = if maglev { "maglev" } else { "roundrobin" };
                let (config, socket) = write_node_config(&topo, name, pin_dir, sched, "generic")?;
                if matches!(
                    b,
                    Balancer::FoobarRoundRobinSync | Balancer::FoobarMaglevSync
                ) {
                    let key = topo.dir.join("sync.key");
                    write_sync_key(&key, "the failover bench's shared secret, 32+ bytes")?;
                    let own = if *name == "a" { NODE_A } else { NODE_B };
                    add_sync(&config, own, peer, &key, 3000)?;
                }
                let d = Daemon::start_with(&netns, &config, &socket, &[])?;
                (Node::Foobar(d), socket, bin())
            }
        };
        let conf = topo.dir.join(format!("{name}.keepalived.conf"));
        // The IPv4 VIP only: the load is IPv4 (HAProxy binds one address here). The same
        // configuration for both balancers; for HAProxy its tracked script replaces
        // `foobar-lb ready`.
        let text = keepalived_config(&bin(), &socket, "eth0", &[VIP4], peer, prio, "53")?;
        let text = text.replace(
            &format!("script \"{} ready", bin().display()),
            &format!("script \"{} ready", script_bin.display()),
        );
        fs::write(&conf, text)?;
        running.push(node);
        confs.push((netns, conf, socket));
    }
    // With sync, a node is ready once it has synced from the other (or waited for it): both
    // are, before keepalived runs, so A (the higher priority) wins the first election.
    for (_, _, socket) in &confs {
        if matches!(
            b,
            Balancer::FoobarRoundRobinSync | Balancer::FoobarMaglevSync
        ) {
            wait_for("the node synced and ready", 15, || {
                cli_at(&bin(), socket, &["ready", "--timeout", "1"])
                    .status
                    .success()
            });
        }
    }
    for (netns, conf, _) in &confs {
        keepalived.push(Keepalived::start(netns, conf)?);
    }
    let a_ns = Netns::attach(&nodes[0].1);
    let b_ns = Netns::attach(&nodes[1].1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holds(&a_ns, VIP4) {
        if Instant::now() > deadline {
            bail!(
                "node A does not hold the VIP after 60 s; its keepalived says:\n{}",
                keepalived[0].log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Backends up on the foobar-lb nodes before the load starts.
    std::thread::sleep(Duration::from_secs(3));
    let resets_before = tcp_counter(&topo.client, "EstabResets")?;
    let vip = vec![format!("{VIP4}:80").parse()?];
    let load = Load::start_on(&topo.client, vip, if quick { 4 } else { 16 }, true);
    load.wait_progress("load through node A", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });
    let crashed = Instant::now();
    a_ns.ip(&["link", "set", "eth0", "down"])?;
    running[0].kill();
    keepalived[0].kill();
    wait_for("node B takes the VIP", 15, || holds(&b_ns, VIP4));
    let takeover = crashed.elapsed();
    // Let the load run on node B long enough for every stream to show whether it survived.
    std::thread::sleep(Duration::from_secs(if quick { 2 } else { 5 }));
    let result = load.finish();
    let resets = tcp_counter(&topo.client, "EstabResets")? - resets_before;
    drop(keepalived);
    drop(running);
    Ok(row(b, &result, resets, &long, takeover))
}

fn row(b: Balancer, r: &LoadResult, resets: u64, long: &[u8], takeover: Duration) -> Row {
    let keepalive_lost = r
        .keepalive
        .iter()
        .filter(|k| k.error.is_some() || k.answers.iter().any(|a| *a != k.answers[0]))
        .count();
    Row {
        balancer: b,
        new_connections: r.new_conns.len(),
        new_failed: r.new_conns.iter().filter(|(_, x)| x.is_err()).count(),
        keepalive_connections: r.keepalive.len(),
        keepalive_lost,
        resets,
        download_intact: matches!(&r.download, Some(Ok(d)) if d.body == long),
        takeover_ms: takeover.as_secs_f64() * 1000.0,
    }
}

/// HAProxy on a node, in TCP mode, bound to the VIP before the node holds it
/// (`ip_nonlocal_bind`); keepalived tracks a script that fails when it is gone.
fn start_haproxy(topo: &Topology, ns: &Netns, name: &str) -> Result<(Child, std::path::PathBuf)> {
    ns.sysctl("net.ipv4.ip_nonlocal_bind", "1")?;
    let cfg = topo.dir.join(format!("{name}.haproxy.cfg"));
    let pid = topo.dir.join(format!("{name}.haproxy.pid"));
    fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
             timeout client 30s\n  timeout server 30s\n\
             frontend www\n  bind {VIP4}:80\n  default_backend webs\n\
             backend webs\n  balance roundrobin\n  server web1 {}:80 check inter 1s\n  \
             server web2 {}:80 check inter 1s\n",
            web4(1),
            web4(2)
        ),
    )?;
    let child = ns
        .cmd("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .arg("-p")
        .arg(&pid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start haproxy")?;
    // keepalived runs `<script> --socket S ready --timeout 1`: this one ignores the arguments
    // and checks that this node's HAProxy runs. Next to the binary: keepalived's script
    // security refuses a script under a world-writable directory such as /tmp.
    let dir = bin().parent().context("binary directory")?.to_owned();
    let check = dir.join(format!("bench-haproxy-alive-{name}"));
    fs::write(
        &check,
        format!("#!/bin/sh\nkill -0 {} 2>/dev/null\n", child.id()),
    )?;
    make_executable(&check)?;
    Ok((child, check))
}

fn make_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    if !p.exists() {
        bail!("{} vanished", p.display());
    }
    Ok(())
}
