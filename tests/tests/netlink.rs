//! The daemon follows the kernel's neighbour and link events: a backend that changes its MAC
//! (and says so with a gratuitous ARP / unsolicited neighbour advertisement) is written with
//! the new one at once, and a load-balancer interface deleted and created again is attached
//! again on its link event; a flood of neighbour messages about other addresses is dropped
//! without slowing the API or the checks. The first two are asserted through the daemon's
//! event counters and log lines, not timing alone; the times are printed. The daemon's
//! fallback re-read of the tables is 30 s, so only events can meet the bounds here. Loops are
//! bounded; namespaces, processes and pins are removed by guards.

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{web4, web6, Netns, Topology, VIP4},
    root_object_and_binary,
    traffic::try_get,
};

const HEALTH: &str =
    "[service.health]\ncheck = \"http\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n";

/// A topology with `webs` web servers and a daemon config over all of them: (topology, control
/// socket, config file).
fn with_config(tag: &str, webs: usize) -> Option<(Topology, PathBuf, PathBuf)> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, webs).expect("topology");
    for i in 1..=webs {
        topo.start_web(i).unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_config_with("generic", &socket, HEALTH, &|_| String::new(), webs)
        .unwrap();
    Some((topo, socket, config))
}

/// Polls `cond` every 20 ms until it holds (true) or `limit` passes (false).
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The MAC the daemon writes for `backend` of service `service` (from `stats --json`).
fn written_mac(daemon: &Daemon, service: &str, backend: &str) -> Option<String> {
    let stats = daemon.stats();
    let svc = stats.services.iter().find(|s| s.name == service)?;
    svc.backends
        .iter()
        .find(|b| b.address == backend)?
        .mac
        .clone()
}

fn has_xdp(ns: &Netns, dev: &str) -> bool {
    let out = ns.ip(&["-d", "link", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// One GET through the VIP on a new connection, given up after 250 ms (a SYN sent to a MAC
/// nobody has any more is lost; the next try goes out at once).
fn quick_get(client: &Netns) -> Option<String> {
    let out = client
        .cmd("curl")
        .args(["-sS", "--max-time", "0.25", &format!("http://{VIP4}/")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn a_backend_mac_change_reaches_the_data_plane_from_a_neighbour_event() {
    let Some((topo, socket, config)) = with_config("nm", 1) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    assert!(try_get(&topo.client, &format!("http://{VIP4}/")).is_ok_and(|b| b == "web1"));
    let web = topo.web(1);
    // The backend announces its new address: a gratuitous ARP (arp_notify) and an unsolicited
    // neighbour advertisement (ndisc_notify), as a failover or a NIC swap would send.
    web.sysctl("net.ipv4.conf.eth0.arp_notify", "1").unwrap();
    web.sysctl("net.ipv6.conf.eth0.ndisc_notify", "1").unwrap();
    let old = written_mac(&daemon, "www", &web4(1)).expect("web1's MAC");
    let events_before = daemon.stats().netlink.neighbour_events;
    const NEW: &str = "02:0f:0b:a4:00:99";
    assert_ne!(old, NEW);

    let t0 = Instant::now();
    web.ip(&["link", "set", "eth0", "address", NEW]).unwrap();
    let mut answered = None;
    for _ in 0..40 {
        if let Some(body) = quick_get(&topo.client) {
            answered = Some((t0.elapsed(), body));
            break;
        }
    }
    let written = eventually(Duration::from_secs(3), || {
        written_mac(&daemon, "www", &web4(1)).as_deref() == Some(NEW)
    })
    .then(|| t0.elapsed());
    println!(
        "MAC change to first answer through the VIP: {answered:?}; to the new MAC in the \
         daemon's state: {written:?}"
    );
    let (took, body) = answered.unwrap_or_else(|| {
        panic!(
            "no answer through the VIP after the MAC change:\n{}",
            daemon.log_text()
        )
    });
    assert_eq!(body, "web1");
    assert!(written.is_some(), "{}", daemon.log_text());
    // Well under the old 2 s poll (and the 30 s fallback now).
    assert!(took < Duration::from_millis(1000), "took {took:?}");

    // Learned from an event: counted, and logged as such.
    let stats = daemon.stats();
    assert!(
        stats.netlink.neighbour_events > events_before,
        "no neighbour event counted: {:?}",
        stats.netlink
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "backend {} is at {NEW} (neighbour event)",
            web4(1)
        )),
        "{log}"
    );
    // The IPv6 service's entry for the same backend follows its advertisement too.
    assert!(
        eventually(Duration::from_secs(1), || {
            written_mac(&daemon, "www6", &web6(1)).as_deref() == Some(NEW)
        }),
        "{}",
        daemon.log_text()
    );
    // The flood of messages about other entries (the client, the bridge) is counted apart.
    assert!(stats.netlink.resyncs == 0, "{:?}", stats.netlink);
}

#[test]
fn a_recreated_interface_is_attached_again_from_its_link_event() {
    let Some((topo, socket, config)) = with_config("nr", 2) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    assert!(try_get(&topo.client, &format!("http://{VIP4}/")).is_ok_and(|b| b.starts_with("web")));
    let before = daemon.stats().netlink.link_events;
    let t0 = Instant::now();
    topo.recreate_lb_eth0().unwrap();
    let commands = t0.elapsed();
    let attached = eventually(Duration::from_secs(5), || has_xdp(&topo.lb, "eth0"));
    let took = t0.elapsed();
    println!("re-created eth0 ({commands:?} of ip commands) attached after {took:?}");
    assert!(attached, "{}", daemon.log_text());
    // The fallback re-check runs every 30 s: only the link event can be this quick.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(daemon.stats().netlink.link_events > before);
    let log = daemon.log_text();
    assert!(
        log.contains("eth0 is a new device: XDP attached again"),
        "{log}"
    );
    assert!(log.contains("eth0 was deleted (link event)"), "{log}");
    assert!(
        eventually(Duration::from_secs(5), || quick_get(&topo.client).is_some()),
        "the VIP did not answer through the new device:\n{}",
        daemon.log_text()
    );
}

#[test]
fn a_flood_of_foreign_neighbour_events_leaves_the_api_and_checks_alone() {
    let Some((topo, socket, config)) = with_config("nf", 1) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let before = daemon.stats().netlink;
    let mac = written_mac(&daemon, "www", &web4(1)).expect("web1's MAC");
    // 300 neighbours that are no backend, each rewritten 60 times (18,000 messages in about a
    // second): a busy segment's churn. Few entries, so the kernel's table (its thresholds are
    // shared by every namespace) stays far from its limits; they go with the namespace.
    let batch = topo.dir.join("neigh.batch");
    let mut lines = String::new();
    for round in 0..60u32 {
        for i in 0..300u32 {
            lines += &format!(
                "neigh replace 10.112.{}.{} lladdr 02:aa:00:{:02x}:{:02x}:{:02x} dev eth0 nud stale\n",
                i / 250,
                i % 250 + 1,
                round,
                i / 256,
                i % 256
            );
        }
    }
    std::fs::write(&batch, lines).unwrap();
    let started = Instant::now();
    let flood = {
        let mut cmd = topo.lb.cmd("ip");
        cmd.args(["-batch"]).arg(&batch);
        thread::spawn(move || cmd.output().map(|o| o.status.success()))
    };
    // Meanwhile the API answers and the backend stays up.
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        let t = Instant::now();
        let stats = daemon.stats();
        slowest = slowest.max(t.elapsed());
        assert_eq!(stats.services[0].backends[0].health, "up", "{stats:?}");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(flood.join().unwrap().unwrap(), "ip -batch failed");
    let took = started.elapsed();
    let after = daemon.stats().netlink;
    println!(
        "flood of {took:?}: slowest stats answer {slowest:?}; before {before:?}, after {after:?}"
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // The messages were read and dropped (or, past the socket's buffer, answered by one
    // resync), none taken for a backend's.
    assert!(
        after.ignored_events - before.ignored_events >= 1000 || after.resyncs > before.resyncs,
        "{after:?}"
    );
    // The backend's MAC is untouched and it still serves.
    assert_eq!(written_mac(&daemon, "www", &web4(1)), Some(mac));
    assert!(try_get(&topo.client, &format!("http://{VIP4}/")).is_ok_and(|b| b == "web1"));
}

/// The attach mode a restarted daemon reads back for an attachment it adopts (an earlier
/// daemon, maybe one that did not record it, chose it; the data plane needs it for partial
/// checksums): as the kernel reports it, for generic, native and no program.
#[test]
fn the_xdp_attach_mode_is_read_back_from_the_kernel() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let ns = Netns::new(&format!("{}m", foobar_lb_tests::netns::unique_prefix("xm"))).unwrap();
    for (a, b) in [("g0", "g1"), ("n0", "n1"), ("x0", "x1")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap();
        ns.ip(&["link", "set", a, "up"]).unwrap();
        ns.ip(&["link", "set", b, "up"]).unwrap();
    }
    foobar_lb_tests::netns::in_netns(&ns.name, || {
        use foobar_lb::{config::XdpMode, dataplane::AuxProgram, netdev};
        let mut generic = AuxProgram::pass()?;
        generic.attach("g0", XdpMode::Generic)?;
        let mut native = AuxProgram::pass()?;
        native.attach("n0", XdpMode::Native)?;
        let mode = |dev: &str| netdev::xdp_generic(netdev::ifindex(dev).unwrap()).unwrap();
        assert_eq!(mode("g0"), Some(true), "generic");
        assert_eq!(mode("n0"), Some(false), "native");
        assert_eq!(mode("x0"), None, "no program");
        Ok(())
    })
    .unwrap();
}
