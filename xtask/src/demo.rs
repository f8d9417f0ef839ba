//! `cargo xtask run`: the whole www.foobar.com site in network namespaces (tests/src/site):
//! a balancer pair, two servers with nginx (HTTPS), the application and MariaDB replication,
//! Prometheus. `--check` walks the user's journey through it and exits. `--basic`: foobar-lb
//! alone in front of two nginx pages; `--ha`: only the balancer pair. Ctrl-C stops it and
//! removes everything it created.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use foobar_lb_tests::{
    netns::{Topology, VIP4, VIP6},
    routed::routed4,
};

use crate::{build, setup};

#[derive(clap::Args)]
pub struct Args {
    /// XDP attach mode: generic was measured faster on veth; native is what real NICs want.
    #[arg(long, default_value = "generic", value_parser = ["auto", "native", "generic"])]
    xdp_mode: String,
    /// An active-passive pair: two balancer nodes (Maglev) and keepalived moving the VIP
    /// (VRRPv3, 200 ms adverts, tracking `foobar-lb ready`).
    #[arg(long, conflicts_with_all = ["basic", "check"])]
    ha: bool,
    /// Only foobar-lb in front of two nginx pages (no pair, databases or TLS).
    #[arg(long, conflicts_with = "check")]
    basic: bool,
    /// The basic demo's forwarding: dsr (the nginx hosts hold the VIP on lo), nat or fullnat
    /// (unmodified nginx hosts; see README "Forwarding modes").
    #[arg(long, default_value = "dsr", value_parser = ["dsr", "nat", "fullnat"], requires = "basic")]
    forwarding: String,
    /// Bring the site up headless, walk a user's journey through it, print each step and
    /// exit: non-zero if any step fails.
    #[arg(long)]
    check: bool,
    /// Active-active: two balancer nodes announcing the VIP over BGP (BIRD) to a router
    /// namespace that spreads flows over them (ECMP).
    #[arg(long, conflicts_with_all = ["ha", "basic", "check"])]
    ecmp: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.ha {
        return run_pair(args);
    }
    if args.ecmp {
        return run_ecmp(args);
    }
    if !args.basic {
        return run_site(args);
    }
    setup::run()?;
    let bin = build::release()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    println!("demo: creating network namespaces (client, load balancer, web1, web2, bridge)...");
    let topo = Topology::new("demo", 2)?;
    topo.start_web(1)?;
    topo.start_web(2)?;
    let _pass = topo.attach_lb_peer_pass()?;
    let socket = topo.dir.join("control.sock");
    // Full NAT's backends need only a route: they sit behind a router namespace, each in a
    // subnet of its own (kept alive until the demo ends).
    let mut router = None;
    let config = match args.forwarding.as_str() {
        "nat" => {
            topo.nat_backends()?;
            topo.write_nat_config(&args.xdp_mode, &socket, 80, "")?
        }
        "fullnat" => {
            topo.fullnat_setup()?;
            router = Some(topo.backends_behind_router()?);
            println!(
                "demo: web1 and web2 moved behind a router namespace ({} and {})",
                routed4(1),
                routed4(2)
            );
            topo.write_routed_fullnat_config(&args.xdp_mode, &socket, 80)?
        }
        _ => topo.write_config(&args.xdp_mode, &socket)?,
    };
    println!("demo: forwarding {}", args.forwarding);
    println!("demo: config {}", config.display());
    let mut daemon = topo
        .lb
        .cmd(bin.to_str().unwrap())
        .args(["run", "--detach-on-exit", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start foobar-lb")?;
    wait_backends_up(&bin, &socket, &mut daemon)?;
    let c = &topo.client.name;
    println!(
        "\ndemo: www.foobar.com is {VIP4} and [{VIP6}], port 80. Try, in another terminal:\n\
         \n  for i in $(seq 6); do ip netns exec {c} curl -s http://{VIP4}/; done\
         \n  ip netns exec {c} curl -s -g 'http://[{VIP6}]/'\
         \n  {} status --socket {}\
         \n\nCtrl-C stops the demo and removes the namespaces.\n",
        bin.display(),
        socket.display()
    );
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            break if status.success() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("foobar-lb exited: {status}"))
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if daemon.try_wait()?.is_none() {
        let _ = Command::new("kill").arg(daemon.id().to_string()).status();
        let _ = daemon.wait();
    }
    drop(router);
    drop(topo);
    println!("demo: stopped; namespaces removed");
    if let Err(e) = result {
        bail!("{e}");
    }
    Ok(())
}

/// The whole site; with `--check`, the journey, then everything is removed.
fn run_site(args: Args) -> Result<()> {
    use foobar_lb_tests::site::{journey, pki::SITE_NAME, Options, Site, DB_WRITE_VIP, WEB_VIP};
    setup::run()?;
    setup::install(setup::SITE_PACKAGES)?;
    let bin = build::release()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let say = |line: &str| println!("site: {line}");
    let opts = Options {
        bin: bin.clone(),
        xdp_mode: args.xdp_mode.clone(),
    };
    let mut site = Site::start(&opts, &say)?;
    if args.check {
        let result = journey::run(&mut site, &say);
        if result.is_err() {
            for node in &site.nodes {
                println!("site: node {}'s log: {}", node.name, node.log.display());
                if let Ok(text) = std::fs::read_to_string(&node.log) {
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    for line in tail.into_iter().rev() {
                        println!("  {line}");
                    }
                }
            }
        }
        drop(site);
        println!("site: stopped; namespaces removed");
        return result;
    }
    let c = &site.client().name;
    let ops = &site.ops().name;
    let ca = site.pki.ca.display();
    let curl = format!(
        "ip netns exec {c} curl -s --cacert {ca} --resolve {SITE_NAME}:443:{WEB_VIP} --resolve {SITE_NAME}:80:{WEB_VIP}"
    );
    let (a, b) = (&site.nodes[0], &site.nodes[1]);
    println!(
        "\nsite: www.foobar.com is up at {WEB_VIP}. The demo CA is {ca}. Try, in another terminal:\n\
         \n  {curl} https://{SITE_NAME}/                  # the guest book: which server, which database\
         \n  {curl} -d 'hello' https://{SITE_NAME}/api/entries   # sign it (through the write VIP)\
         \n  {curl} -sI http://{SITE_NAME}/                # 301 to HTTPS\
         \n  ip netns exec {c} mariadb -h {DB_WRITE_VIP} -u app -papp-secret   # refused: the database VIPs serve the servers only\
         \n  ip netns exec {ops} curl http://{}:9641/        # the stats page (monitoring host only); Prometheus: http://10.111.0.5:9090\
         \n  {bin} --socket {} status                        # node A (B: --socket {})\
         \n  kill $(cat {}/web1/nginx.pid)                   # web1's nginx stops: new requests go to web2\
         \n  ip -n {} link set eth0 down                      # node A fails: node B takes the VIPs\
         \n\nLogs: node A {}, node B {}. Ctrl-C stops the site and removes everything.\n",
        a.addr,
        a.socket.display(),
        b.socket.display(),
        site.topo.dir.display(),
        a.ns,
        a.log.display(),
        b.log.display(),
        bin = bin.display(),
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(site);
    println!("site: stopped; namespaces removed");
    Ok(())
}

/// `cargo xtask run --ha`: nodes A (the topology's `lb`) and B, both running foobar-lb with the
/// same Maglev service, keepalived in each with the configuration `foobar-lb keepalived-config`
/// prints. The daemons' and keepalived's output goes to files (named at start), so the
/// terminal stays readable while the user kills and restarts nodes.
fn run_pair(args: Args) -> Result<()> {
    use foobar_lb_tests::pair::{
        holds, write_keepalived_config, write_node_config, Keepalived, NODE_A, NODE_B, NODE_B_HOST,
    };
    setup::run()?;
    setup::install(&["keepalived"])?;
    let bin = build::release()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    println!(
        "demo: creating network namespaces (client, balancer nodes A and B, web1, web2, bridge)..."
    );
    let mut topo = Topology::new("demo", 2)?;
    topo.start_web(1)?;
    topo.start_web(2)?;
    topo.release_lb_vips()?;
    let b = topo.add_lb(NODE_B_HOST)?;
    let _pass = [
        topo.attach_lb_peer_pass()?,
        topo.attach_peer_pass(&format!("lb{NODE_B_HOST}"))?,
    ];
    let b_pin = topo.lbs[b].pin_dir.clone();
    let nodes = [
        ("a", topo.lb.name.clone(), topo.pin_dir(), NODE_B, "150"),
        ("b", topo.lbs[b].ns.name.clone(), b_pin, NODE_A, "100"),
    ];
    let mut daemons = Vec::new();
    let mut keepalived = Vec::new();
    let mut lines = Vec::new();
    for (name, ns, pin_dir, peer, priority) in &nodes {
        let (config, socket) = write_node_config(&topo, name, pin_dir, "maglev", &args.xdp_mode)?;
        let log = topo.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let netns = foobar_lb_tests::netns::Netns::attach(ns);
        let child = netns
            .cmd(bin.to_str().unwrap())
            .args(["run", "--detach-on-exit", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start foobar-lb")?;
        daemons.push((name.to_uppercase(), child));
        // The node can take the VIP once its daemon is ready (keepalived would wait anyway).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !Command::new(&bin)
            .arg("--socket")
            .arg(&socket)
            .arg("ready")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            if std::time::Instant::now() > deadline {
                bail!(
                    "node {name}'s daemon is not ready after 60 s: see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let conf = write_keepalived_config(&topo, &bin, name, &socket, peer, priority)?;
        let k = Keepalived::start(&netns, &conf)?;
        let n = name.to_uppercase();
        lines.push(format!(
            "  node {n}: namespace {ns}, priority {priority}\n    \
             foobar-lb log {}, keepalived log {}\n    \
             {} --socket {} ready\n    \
             restart its daemon: nsenter --net=/run/netns/{ns} {} run --config {} &",
            log.display(),
            k.log.display(),
            bin.display(),
            socket.display(),
            bin.display(),
            config.display(),
        ));
        keepalived.push(k);
    }
    let a_ns = foobar_lb_tests::netns::Netns::attach(&topo.lb.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !holds(&a_ns, VIP4) {
        if std::time::Instant::now() > deadline {
            bail!("node A did not take the VIP within 30 s: see its keepalived log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = &topo.client.name;
    let (a, b) = (&nodes[0].1, &nodes[1].1);
    println!(
        "\ndemo: www.foobar.com is {VIP4} (and [{VIP6}]), port 80, served by an active-passive \
         pair; node A holds the VIP.\n\n{}\n\nTry, in another terminal:\n\
         \n  while sleep 0.2; do ip netns exec {c} curl -s -m 5 http://{VIP4}/; done   # keep it running\
         \n  ip -n {a} -br addr show eth0; ip -n {b} -br addr show eth0             # who holds the VIP\
         \n  ip -n {a} link set eth0 down     # A fails: B takes the VIP within a second, no request fails\
         \n  ip -n {a} link set eth0 up       # A returns as backup (nopreempt): the VIP stays on B\
         \n  kill -9 <daemon pid>             # a dead daemon fails `foobar-lb ready`: its node gives the VIP up\
         \n\nCtrl-C stops the demo and removes the namespaces.\n",
        lines.join("\n")
    );
    for (name, child) in &daemons {
        println!("demo: node {name}'s daemon is pid {}", child.id());
    }
    let mut reported = vec![false; daemons.len()];
    while !stop.load(Ordering::SeqCst) {
        for (i, (name, child)) in daemons.iter_mut().enumerate() {
            if !reported[i] {
                if let Some(status) = child.try_wait()? {
                    println!("demo: node {name}'s daemon exited ({status})");
                    reported[i] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(keepalived);
    for (_, child) in &mut daemons {
        if child.try_wait()?.is_none() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
    drop(topo);
    println!("demo: stopped; namespaces removed");
    Ok(())
}

/// `cargo xtask run --ecmp`: nodes A and B announce the VIP over BGP to a router namespace
/// (tests/src/ecmp.rs), which spreads the client's flows over both.
fn run_ecmp(args: Args) -> Result<()> {
    use foobar_lb_tests::{ecmp::Group, load::wait_for};
    setup::run()?;
    setup::install(&["bird2"])?;
    let bin = build::release()?;
    // The topology helpers start daemons from FOOBAR_LB_BIN (set before any thread starts).
    std::env::set_var("FOOBAR_LB_BIN", &bin);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    println!("demo: creating network namespaces (client, router, balancer nodes A and B, web1, web2, bridge)...");
    let g = Group::new("demo", &args.xdp_mode, &bin)?;
    g.topo.start_web(1)?;
    g.topo.start_web(2)?;
    let _pass = [
        g.topo.attach_lb_peer_pass()?,
        g.topo.attach_peer_pass("lb3")?,
    ];
    let daemons = [g.a.start()?, g.b.start()?];
    let _birds = [g.a.start_bird()?, g.b.start_bird()?];
    wait_for("the router has both nodes as next hops", 60, || {
        g.next_hops().len() == 2
    });
    let (c, r) = (&g.topo.client.name, &g.router().name);
    println!(
        "\ndemo: www.foobar.com is {VIP4}, announced by nodes A ({}) and B ({}) to the router \
         {r}, which spreads flows over both. Try, in another terminal:\n\
         \n  for i in $(seq 8); do ip netns exec {c} curl -s http://{VIP4}/; done\
         \n  ip -n {r} route show {VIP4}                          # one route, two next hops\
         \n  {b} --socket {} node drain                           # A withdraws: one next hop left\
         \n  {b} --socket {} node undrain\
         \n  {b} --socket {} status\
         \n  ip -n {} link set eth0 down                           # A dies: BFD drops it in ~0.3 s\
         \n\nDaemon logs: {} and {}. Ctrl-C stops the demo and removes the namespaces.\n",
        g.a.addr,
        g.b.addr,
        g.a.socket.display(),
        g.a.socket.display(),
        g.b.socket.display(),
        g.a.ns,
        daemons[0].log.display(),
        daemons[1].log.display(),
        b = bin.display(),
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(daemons);
    drop(g);
    println!("demo: stopped; namespaces removed");
    Ok(())
}

/// Waits (60 s at most) until the daemon at `socket` answers and sees every backend up, so
/// what the demo then suggests works at once (full NAT also needs the neighbour entries the
/// first checks create).
fn wait_backends_up(
    bin: &std::path::Path,
    socket: &std::path::Path,
    daemon: &mut std::process::Child,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!("foobar-lb exited ({status})");
        }
        let out = Command::new(bin)
            .arg("--socket")
            .arg(socket)
            .args(["stats", "--json"])
            .output()?;
        let up = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                let services = v["services"].as_array()?.clone();
                Some(services.iter().all(|s| {
                    s["backends"]
                        .as_array()
                        .is_some_and(|b| b.iter().all(|b| b["health"] == "up"))
                }))
            })
            .unwrap_or(false);
        if up {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the backends are not all up after 60 s: see `{} status --socket {}`",
                bin.display(),
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
