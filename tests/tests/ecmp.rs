//! Active-active behind an ECMP router (README "Active-active"): two nodes announce the VIP
//! over BGP (BIRD, configured by `foobar-lb bird-config`, fed by the daemon's `[announce]`),
//! a router spreads flows over them by their 5-tuple. Both use Maglev, so a flow that moves to
//! the other node (a node dies, is drained, or comes back) keeps its backend: the node that
//! receives it mid-connection schedules it to the same one.

use std::{sync::atomic::Ordering, time::Instant};

use foobar_lb_tests::{
    daemon::bin,
    ecmp::{Group, ANNOUNCE_IF},
    load::{start_webs_with_long_file, wait_backends_up, wait_for, Load},
    netns::{tcp_counter, VIP4},
    pair::{NODE_A, NODE_B},
    root_object_and_binary,
};

fn both() -> Vec<String> {
    vec![NODE_A.to_owned(), NODE_B.to_owned()]
}

fn ipv4_vip() -> Vec<std::net::SocketAddr> {
    vec![format!("{VIP4}:80").parse().unwrap()]
}

#[test]
fn flows_spread_over_both_nodes_and_a_dead_or_returning_node_loses_nothing() {
    if !root_object_and_binary() {
        return;
    }
    let g = Group::new("ec", "generic", &bin()).unwrap();
    let long = start_webs_with_long_file(&g.topo);
    let mut da = g.a.start().unwrap();
    let db = g.b.start().unwrap();
    wait_backends_up(&da);
    wait_backends_up(&db);
    let mut bird_a = g.a.start_bird().unwrap();
    let _bird_b = g.b.start_bird().unwrap();
    let up = wait_for("the router has both nodes as next hops", 30, || {
        g.next_hops() == both()
    });
    eprintln!("ECMP route with both nodes after {up:?}");

    let resets_before = tcp_counter(&g.topo.client, "EstabResets").unwrap();
    let load = Load::start_on(&g.topo.client, ipv4_vip(), 8, true);
    load.wait_progress("load running through both nodes", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });
    let forwarded = |d: &foobar_lb_tests::daemon::Daemon| -> u64 {
        d.stats().services.iter().map(|s| s.counters.packets).sum()
    };
    let (fa, fb) = (forwarded(&da), forwarded(&db));
    assert!(
        fa > 0 && fb > 0,
        "the router did not spread flows: A forwarded {fa}, B {fb} packets"
    );

    // Node A dies: link down first (so no BGP goodbye gets out), then its daemon and BIRD
    // killed. Only BFD can tell the router.
    let killed = Instant::now();
    g.a.ns().ip(&["link", "set", "eth0", "down"]).unwrap();
    da.kill();
    bird_a.kill();
    let moved = wait_for("the router drops node A", 10, || {
        g.next_hops() == [NODE_B.to_owned()]
    });
    load.wait_progress("load running through B alone", 20);

    // Node A returns (adopting its pinned data plane): flows move back to it mid-connection.
    g.a.ns().ip(&["link", "set", "eth0", "up"]).unwrap();
    let da = g.a.start().unwrap();
    let _bird_a = g.a.start_bird().unwrap();
    let back = wait_for("the router has node A again", 30, || {
        g.next_hops() == both()
    });
    load.wait_progress("load running through both nodes again", 20);
    let a_after = forwarded(&da);
    let result = load.finish();
    let resets = tcp_counter(&g.topo.client, "EstabResets").unwrap() - resets_before;

    result.assert_nothing_lost();
    let body = &result
        .intact_download_across(killed, killed + moved, &long)
        .body;
    assert_eq!(resets, 0, "the client saw {resets} connection resets");
    assert!(a_after > 0, "the returned node A forwarded nothing");
    eprintln!(
        "figures: route withdrawn {moved:?} after node A died, node A announced again \
         {back:?} after its return; {} new connections, {} keep-alive requests on {} \
         connections, 0 failed, 0 resets; {} bytes downloaded across both moves",
        result.new_conns.len(),
        result
            .keepalive
            .iter()
            .map(|k| k.answers.len())
            .sum::<usize>(),
        result.keepalive.len(),
        body.len()
    );
}

/// Round robin picks differently on each node, so without state only the node that opened a
/// connection knows its backend; with flow sync each node has the other's flows, and a node
/// that dies or returns (announced only once its bulk sync is done) moves no connection.
#[test]
fn with_round_robin_and_sync_a_dead_or_returning_node_loses_nothing() {
    if !root_object_and_binary() {
        return;
    }
    let g = Group::with("es", "generic", &bin(), "roundrobin", true).unwrap();
    let long = start_webs_with_long_file(&g.topo);
    let (mut da, db) = (g.a.start().unwrap(), g.b.start().unwrap());
    wait_backends_up(&da);
    wait_backends_up(&db);
    let synced = |d: &foobar_lb_tests::daemon::Daemon| d.stats().sync.expect("[sync]");
    wait_for("each node receives the other's flows", 15, || {
        synced(&da).peers_connected == 1 && synced(&db).peers_connected == 1
    });
    let mut bird_a = g.a.start_bird().unwrap();
    let _bird_b = g.b.start_bird().unwrap();
    wait_for("the router has both nodes as next hops", 30, || {
        g.next_hops() == both()
    });
    let resets_before = tcp_counter(&g.topo.client, "EstabResets").unwrap();
    let load = Load::start_on(&g.topo.client, ipv4_vip(), 16, true);
    load.wait_progress("load running through both nodes", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });
    let (sa, sb) = (synced(&da), synced(&db));
    assert!(
        sa.ring_events > 0 && sb.ring_events > 0 && sa.applied > 0 && sb.applied > 0,
        "both nodes opened flows and applied the other's: A {sa:?}, B {sb:?}"
    );

    let killed = Instant::now();
    g.a.ns().ip(&["link", "set", "eth0", "down"]).unwrap();
    da.kill();
    bird_a.kill();
    let moved = wait_for("the router drops node A", 10, || {
        g.next_hops() == [NODE_B.to_owned()]
    });
    load.wait_progress("load running through B alone", 20);

    g.a.ns().ip(&["link", "set", "eth0", "up"]).unwrap();
    let da = g.a.start().unwrap();
    let _bird_a = g.a.start_bird().unwrap();
    wait_for("the router has node A again", 30, || {
        g.next_hops() == both()
    });
    let sa = synced(&da);
    assert!(
        sa.gate.contains("bulk sync from") && sa.applied > 0,
        "A was announced before its bulk sync: {sa:?}"
    );
    load.wait_progress("load running through both nodes again", 20);
    let result = load.finish();
    let resets = tcp_counter(&g.topo.client, "EstabResets").unwrap() - resets_before;
    result.assert_nothing_lost();
    result.intact_download_across(killed, killed + moved, &long);
    assert_eq!(resets, 0, "the client saw {resets} connection resets");
    eprintln!(
        "figures: ECMP, round robin + sync: {} new connections, {} keep-alive connections, 0 \
         failed, 0 resets, download intact; returned A: {sa:?}",
        result.new_conns.len(),
        result.keepalive.len()
    );
}

#[test]
fn draining_a_node_withdraws_its_route_and_moves_no_connection() {
    if !root_object_and_binary() {
        return;
    }
    let g = Group::new("ed", "generic", &bin()).unwrap();
    start_webs_with_long_file(&g.topo);
    let da = g.a.start().unwrap();
    let db = g.b.start().unwrap();
    wait_backends_up(&da);
    wait_backends_up(&db);
    let _birds = [g.a.start_bird().unwrap(), g.b.start_bird().unwrap()];
    wait_for("the router has both nodes", 30, || g.next_hops() == both());
    let status = String::from_utf8_lossy(&g.a.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains(&format!("node: announcing {VIP4}")),
        "{status}"
    );

    let resets_before = tcp_counter(&g.topo.client, "EstabResets").unwrap();
    let load = Load::start_on(&g.topo.client, ipv4_vip(), 8, false);
    load.wait_progress("load running", 10);
    let out = g.a.cli(&["node", "drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));
    let withdrawn = wait_for("the router drops the drained node", 10, || {
        g.next_hops() == [NODE_B.to_owned()]
    });
    let a_ns = g.a.ns();
    let on_iface = a_ns
        .ip(&["-br", "addr", "show", "dev", ANNOUNCE_IF])
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&on_iface.stdout).contains(VIP4),
        "the VIP is still on {ANNOUNCE_IF}"
    );
    let status = String::from_utf8_lossy(&g.a.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("node: drained"), "{status}");
    // config-dump keeps the drain, so a restart from the dump stays drained.
    let dump = String::from_utf8_lossy(&g.a.cli(&["config-dump"]).stdout).into_owned();
    assert!(dump.contains("drained = true"), "{dump}");
    load.wait_progress("load running through B", 20);
    let out = g.a.cli(&["node", "undrain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let returned = wait_for("the router takes the node back", 10, || {
        g.next_hops() == both()
    });
    load.wait_progress("load running through both again", 20);
    let result = load.finish();
    result.assert_nothing_lost();
    let resets = tcp_counter(&g.topo.client, "EstabResets").unwrap() - resets_before;
    assert_eq!(resets, 0, "the client saw {resets} connection resets");
    eprintln!("figures: drain withdrew the route in {withdrawn:?}, undrain announced it in {returned:?}; 0 failed, 0 resets");
}

#[test]
fn announce_needs_its_interface_and_a_node_without_it_drains_by_readiness() {
    if !root_object_and_binary() {
        return;
    }
    let g = Group::new("ea", "generic", &bin()).unwrap();
    // A node without [announce] (a keepalived pair's): `node drain` makes `ready` fail, which
    // is what keepalived's track script acts on; undrain makes it ready again.
    let plain = g.topo.dir.join("plain.toml");
    let text = std::fs::read_to_string(&g.b.config).unwrap();
    std::fs::write(&plain, text.split("\n[announce]").next().unwrap()).unwrap();
    let sock = g.topo.dir.join("plain.sock");
    let plain_text = std::fs::read_to_string(&plain)
        .unwrap()
        .replace(g.b.socket.to_str().unwrap(), sock.to_str().unwrap());
    std::fs::write(&plain, plain_text).unwrap();
    let d = foobar_lb_tests::daemon::Daemon::start_with(&g.b.ns(), &plain, &sock, &[]).unwrap();
    let ready = || d.cli(&["ready", "--timeout", "2"]);
    assert!(ready().status.success());
    let out = d.cli(&["node", "drain"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("keepalived gives the VIPs"),
        "{text}"
    );
    let out = ready();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("drained by the operator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&d.cli(&["config-dump"]).stdout).into_owned();
    assert!(dump.contains("drained = true"), "{dump}");
    assert!(d.cli(&["node", "undrain"]).status.success());
    assert!(ready().status.success());
    drop(d);
    // [announce] naming a missing interface: refused before anything is attached.
    g.a.ns().ip(&["link", "del", ANNOUNCE_IF]).unwrap();
    let out =
        g.a.ns()
            .cmd(bin().to_str().unwrap())
            .args(["run", "--config"])
            .arg(&g.a.config)
            .output()
            .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("announce.interface \"lbvips\" does not exist") && err.contains("type dummy"),
        "{err}"
    );
    let links = g.a.ns().ip(&["link", "show", "dev", "eth0"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("xdp"),
        "XDP attached although the start was refused"
    );
}
