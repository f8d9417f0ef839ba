//! Active-passive pair: two balancer nodes running `foobar-lb run` with the same services,
//! keepalived (VRRP, configured by `foobar-lb keepalived-config`, tracking `foobar-lb ready`)
//! moving the VIP between them.
//!
//! Without flow sync, the node that takes over has no flow entries for the connections the
//! other node carried, and schedules their next packet anew (README "Packet handling"). With
//! `scheduler = "maglev"` and the same backends, that pick is the backend the other node used,
//! so established connections survive; with round robin they do not
//! (`with_round_robin_a_takeover_resets_connections`). With `[sync]`, each node writes the
//! other's flows into its own table, so round robin loses nothing either (the `sync_` tests).

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use foobar_lb_tests::{
    daemon::{bin, cli, Daemon},
    load::{start_webs_with_long_file, wait_backends_up, wait_for, Load},
    netns::{tcp_counter, Netns, Topology, LB6, SNAT4, SNAT6, VIP4, VIP6},
    pair::{
        add_sync, holds, nat_backends_via_gateway, write_keepalived_config_with,
        write_node_config_with, write_sync_key, Keepalived, GW4, GW6, NODE_A, NODE_B, NODE_B_HOST,
    },
    root_object_and_binary,
    traffic::http::Download,
};

/// Packets a node forwarded, over all its services.
fn forwarded(d: &Daemon) -> u64 {
    d.stats().services.iter().map(|s| s.counters.packets).sum()
}

/// One node of the pair: its namespace, daemon config, socket and pin directory.
struct Node {
    /// Its own IPv6 address on eth0, with prefix length.
    addr6: String,
    ns: String,
    config: PathBuf,
    socket: PathBuf,
    keepalived_conf: PathBuf,
}

impl Node {
    fn ns(&self) -> std::mem::ManuallyDrop<Netns> {
        Netns::attach(&self.ns)
    }

    fn start(&self) -> Daemon {
        Daemon::start_with(&self.ns(), &self.config, &self.socket, &[]).unwrap()
    }

    /// `foobar-lb ready --socket SOCKET`: (exit code, stdout + stderr).
    fn ready(&self) -> (i32, String) {
        let out = cli(&[
            "ready",
            "--timeout",
            "2",
            "--socket",
            self.socket.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text.trim().to_owned())
    }

    /// Kills the node as a crash does: the daemon SIGKILLed, the interface down, keepalived
    /// SIGKILLed. The pinned data plane stays (the daemon runs without --detach-on-exit).
    fn crash(&self, daemon: &mut Daemon, keepalived: &mut Keepalived) {
        daemon.kill();
        self.ns().ip(&["link", "set", "eth0", "down"]).unwrap();
        keepalived.kill();
    }

    /// Crashes this node (see [`Node::crash`]) and waits until `survivor` holds every one of
    /// `addrs` (keepalived's takeover): (when it crashed, how long the takeover took).
    fn crash_over_to(
        &self,
        (daemon, keepalived): (&mut Daemon, &mut Keepalived),
        survivor: &Node,
        addrs: &[&str],
    ) -> (Instant, Duration) {
        let crashed = Instant::now();
        self.crash(daemon, keepalived);
        let ns = survivor.ns();
        let what = format!("{} takes {addrs:?} from {}", survivor.ns, self.ns);
        let took = wait_for(&what, 15, || addrs.iter().all(|a| holds(&ns, a)));
        (crashed, took)
    }

    /// Brings the node back as a reboot would: interface up without the VIPs (a rebooted
    /// host has no keepalived addresses), then the daemon (adopting its pinned data plane),
    /// then keepalived.
    fn restart(&self) -> (Daemon, Keepalived) {
        let ns = self.ns();
        // The NAT pairs' gateway and SNAT addresses too (absent elsewhere: errors ignored).
        for a in [
            format!("{VIP4}/32"),
            format!("{VIP6}/128"),
            format!("{GW4}/32"),
            format!("{SNAT4}/32"),
        ] {
            let _ = ns.ip(&["addr", "del", &a, "dev", "eth0"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        // Linux drops IPv6 addresses when a link goes down; a booting host configures its own
        // again (without it, this node's checks could not reach the IPv6 backends).
        let _ = ns.ip(&["addr", "add", &self.addr6, "dev", "eth0", "nodad"]);
        let d = self.start();
        let k = Keepalived::start(&ns, &self.keepalived_conf).unwrap();
        (d, k)
    }
}

/// The pair: topology with two balancer nodes (A is the topology's `lb`, B one added), both
/// daemons started and ready, and their keepalived configs written by the binary.
struct Pair {
    topo: Topology,
    a: Node,
    b: Node,
    /// The file every web server serves as `/long`.
    long: Vec<u8>,
}

impl Pair {
    /// Both nodes' keepalived, started: the higher priority (A) wins the first election and
    /// B stays backup. Returns them and how long A took to hold the VIP.
    fn elect(&self) -> (Keepalived, Keepalived, Duration) {
        let (a_ns, b_ns) = (self.a.ns(), self.b.ns());
        let ka = Keepalived::start(&a_ns, &self.a.keepalived_conf).unwrap();
        let kb = Keepalived::start(&b_ns, &self.b.keepalived_conf).unwrap();
        let elected = wait_for("A holds the VIP", 30, || holds(&a_ns, VIP4));
        wait_for("B enters BACKUP", 10, || kb.entered("BACKUP") >= 1);
        (ka, kb, elected)
    }

    /// Both nodes' daemons, started and seeing every backend up.
    fn start_both(&self) -> (Daemon, Daemon) {
        let (da, db) = (self.a.start(), self.b.start());
        wait_backends_up(&da);
        wait_backends_up(&db);
        (da, db)
    }
}

fn pair(tag: &str, scheduler: &str) -> Pair {
    pair_with(tag, scheduler, Forwarding::Dsr)
}

/// How the pair's services forward, and what the topology and keepalived need for it.
#[derive(Clone, Copy, PartialEq)]
enum Forwarding {
    Dsr,
    /// Backends route the clients through the pair's moving gateway address.
    Nat,
    /// The pair's SNAT addresses move with the VIPs; both nodes forward (FIB lookups).
    FullNat,
}

fn pair_with(tag: &str, scheduler: &str, fwd: Forwarding) -> Pair {
    let mut topo = Topology::new(tag, 2).unwrap();
    let long = start_webs_with_long_file(&topo);
    topo.release_lb_vips().unwrap();
    let b_index = topo.add_lb(NODE_B_HOST).unwrap();
    let (service_lines, moved) = match fwd {
        Forwarding::Dsr => (String::new(), vec![]),
        Forwarding::Nat => {
            nat_backends_via_gateway(&topo).unwrap();
            (
                "forwarding = \"nat\"\n".to_owned(),
                vec!["--gateway", GW4, "--gateway", GW6],
            )
        }
        Forwarding::FullNat => {
            topo.plain_backends().unwrap();
            for ns in [&topo.lb, &topo.lbs[b_index].ns] {
                ns.sysctl("net.ipv4.conf.all.forwarding", "1").unwrap();
                ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
            }
            (
                format!("forwarding = \"fullnat\"\nsnat = [\"{SNAT4}\", \"{SNAT6}\"]\n"),
                vec!["--snat", SNAT4, "--snat", SNAT6],
            )
        }
    };
    let (a_config, a_socket) = write_node_config_with(
        &topo,
        "a",
        &topo.pin_dir(),
        scheduler,
        "generic",
        &service_lines,
    )
    .unwrap();
    let b_pin = topo.lbs[b_index].pin_dir.clone();
    let (b_config, b_socket) =
        write_node_config_with(&topo, "b", &b_pin, scheduler, "generic", &service_lines).unwrap();
    let keepalived_conf = |name: &str, socket: &Path, peer: &str, prio: &str| {
        write_keepalived_config_with(&topo, &bin(), name, socket, peer, prio, &moved).unwrap()
    };
    let a = Node {
        addr6: format!("{LB6}/64"),
        ns: topo.lb.name.clone(),
        keepalived_conf: keepalived_conf("a", &a_socket, NODE_B, "150"),
        config: a_config,
        socket: a_socket,
    };
    let b = Node {
        addr6: format!("fd00:f00b::{NODE_B_HOST}/64"),
        ns: topo.lbs[b_index].ns.name.clone(),
        keepalived_conf: keepalived_conf("b", &b_socket, NODE_A, "100"),
        config: b_config,
        socket: b_socket,
    };
    Pair { topo, a, b, long }
}

/// Turns `[sync]` on in both nodes' configs (each listening on its address, the other its
/// peer), A with key `key_a`, B with `key_b`; a starting node waits `bulk_timeout_ms` at most.
fn with_sync(p: &Pair, key_a: &str, key_b: &str, bulk_timeout_ms: u64) {
    for (node, addr, peer, key) in [(&p.a, NODE_A, NODE_B, key_a), (&p.b, NODE_B, NODE_A, key_b)] {
        let key_file = node.config.with_extension("key");
        write_sync_key(&key_file, key).unwrap();
        add_sync(&node.config, addr, peer, &key_file, bulk_timeout_ms).unwrap();
    }
}

const SYNC_KEY: &str = "a shared secret of at least 32 bytes for the pair\n";

/// A node's sync counters (`stats --json`).
fn sync_of(d: &Daemon) -> foobar_lb::api::SyncSnapshot {
    d.stats().sync.expect("[sync] is configured")
}

#[test]
fn ready_answers_for_keepalived_and_keepalived_config_refuses_bad_pairs() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hr", "maglev");
    // No daemon yet: exit 1, one line saying why.
    let (code, text) = p.a.ready();
    assert_eq!(code, 1, "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("cannot reach the foobar-lb daemon"), "{text}");
    let mut d = p.a.start();
    let (code, text) = p.a.ready();
    assert_eq!(
        (code, text.as_str()),
        (0, "ready: XDP attached to eth0; 2 service(s)")
    );
    // The interface gone (the veth pair deleted from the bridge's side): not ready until it
    // returns and is attached again.
    p.topo.bridge.ip(&["link", "del", "lb"]).unwrap();
    let took = wait_for("ready to fail without the interface", 10, || {
        p.a.ready().0 == 1
    });
    let (_, text) = p.a.ready();
    assert!(text.contains("XDP is not attached to eth0"), "{text}");
    eprintln!("ready failed {took:?} after the interface went: {text}");
    // Killed: exit 1 at once, even though the pinned data plane still forwards.
    d.kill();
    let t = Instant::now();
    let (code, text) = p.a.ready();
    assert_eq!(code, 1, "{text}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // keepalived-config refuses what keepalived would misread, naming the problem.
    let bad = cli(&[
        "keepalived-config",
        "--interface",
        "eth0",
        "--vip",
        VIP4,
        "--peer",
        NODE_B,
        "--priority",
        "100",
        "--router-id",
        "51",
        "--auth-pass",
        "x",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--auth-pass needs VRRPv2"));
}

#[test]
fn takeover_loses_nothing_and_a_restarted_node_rejoins_as_backup() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("ha", "maglev");
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (mut da, mut db) = p.start_both();
    let (mut ka, mut kb, elected) = p.elect();
    assert!(!holds(&b_ns, VIP4), "B holds the VIP too");
    assert!(
        holds(&a_ns, VIP6),
        "the IPv6 VIP (virtual_ipaddress_excluded) moves with it"
    );
    eprintln!("first election: A holds the VIP after {elected:?}");
    // `status` tells the roles apart: the active node holds the VIPs, the backup none.
    let status = |d: &Daemon| String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    let (sa, sb) = (status(&da), status(&db));
    assert!(sa.contains(&format!("node: holds {VIP4}")), "{sa}");
    assert!(sb.contains("node: holds no VIP"), "{sb}");

    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let load = Load::start(&p.topo.client, 4, true);
    load.wait_progress("load running through A", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });

    // 1. A crashes: B takes over.
    let (killed_a, takeover) = p.a.crash_over_to((&mut da, &mut ka), &p.b, &[VIP4]);
    let at_takeover = load.download_bytes.load(Ordering::Relaxed);
    load.wait_progress("load running through B", 20);
    let b_stats = db.stats();
    assert!(
        b_stats
            .services
            .iter()
            .map(|s| s.counters.packets)
            .sum::<u64>()
            > 0,
        "B forwarded nothing: the load did not move to it"
    );

    // 2. A restarts: it adopts its pinned data plane (writing nothing), becomes ready, and
    // stays backup (nopreempt) although its priority is higher: no connection moves.
    let restarting = Instant::now();
    let (da, ka) = p.a.restart();
    assert_eq!(
        da.stats().map_writes,
        0,
        "the restarted daemon rewrote its maps"
    );
    wait_for("restarted A enters BACKUP", 30, || {
        ka.entered("BACKUP") >= 1
    });
    let rejoined = restarting.elapsed();
    // Ten advertisement intervals: a preempting node would have taken the VIP by now.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert!(!holds(&a_ns, VIP4), "the restarted node took the VIP back");
        assert!(holds(&b_ns, VIP4), "B lost the VIP while A rejoined");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ka.entered("MASTER"), 0, "{}", ka.log_text());
    load.wait_progress("load running through B after A rejoined", 10);

    // 3. B crashes: the rejoined A takes over again, carrying connections it never saw open.
    let b_verdicts = db.verdicts_text();
    let (killed_b, takeback) = p.b.crash_over_to((&mut db, &mut kb), &p.a, &[VIP4]);
    load.wait_progress("load running through A again", 20);
    let a_verdicts = da.verdicts_text();

    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;

    // Nothing failed, nothing reset, every keep-alive connection stayed on its backend.
    result.assert_nothing_lost();
    let Download {
        body,
        started,
        ended,
    } = result.intact_download_across(killed_a, killed_a + takeover, &p.long);
    assert!(
        at_takeover < p.long.len(),
        "the download ended before the takeover"
    );
    assert_eq!(resets, 0, "the client saw {resets} connection resets");

    let slowest = result
        .new_conns
        .iter()
        .map(|(d, _)| *d)
        .max()
        .unwrap_or_default();
    let keepalive_total: usize = result.keepalive.iter().map(|k| k.answers.len()).sum();
    eprintln!(
        "figures: takeover A->B {takeover:?}, rejoin (interface up to BACKUP, daemon start included) {rejoined:?}, \
         takeover B->A {takeback:?}; {} new connections (slowest {slowest:?}), \
         {keepalive_total} keep-alive requests on {} connections, 0 failed, 0 resets; \
         download of {} bytes over {:?} spanning {}; since A was killed {:?}, since B was killed {:?}\n\
         A verdicts: {a_verdicts}\nB verdicts: {b_verdicts}",
        result.new_conns.len(),
        result.keepalive.len(),
        body.len(),
        *ended - *started,
        if *ended > killed_b + takeback { "both takeovers" } else { "the first takeover" },
        killed_a.elapsed(),
        killed_b.elapsed(),
    );
    drop(ka);
    drop(kb);
}

#[test]
fn split_brain_both_nodes_forward_each_connection_to_the_same_backend() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hs", "maglev");
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (da, db) = p.start_both();
    // Both hold the VIP (VRRP lost between them), and the client's ARP entry for it flips
    // between the two nodes every 100 ms: each connection's packets alternate between them.
    for ns in [&a_ns, &b_ns] {
        ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "eth0"])
            .unwrap();
        // Deprecated, as keepalived adds it (README, "Direct server return").
        let v6 = format!("{VIP6}/128");
        let args = [
            "addr",
            "add",
            &v6,
            "dev",
            "eth0",
            "nodad",
            "preferred_lft",
            "0",
        ];
        ns.ip(&args).unwrap();
    }
    let mac = |ns: &Netns| {
        let out = ns.ip(&["-br", "link", "show", "dev", "eth0"]).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let macs = [mac(&a_ns), mac(&b_ns)];
    let flip = |i: usize| {
        for vip in [VIP4, VIP6] {
            let mac = &macs[i % 2];
            let args = [
                "neigh",
                "replace",
                vip,
                "lladdr",
                mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ];
            p.topo.client.ip(&args).unwrap();
        }
    };
    flip(0);
    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let (a0, b0) = (forwarded(&da), forwarded(&db));
    let load = Load::start(&p.topo.client, 8, false);
    load.wait_progress("load running", 5);
    for i in 1..=40 {
        flip(i);
        thread::sleep(Duration::from_millis(100));
    }
    load.wait_progress("load running after the flips", 5);
    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;
    let (a1, b1) = (forwarded(&da), forwarded(&db));
    assert!(
        a1 - a0 > 100 && b1 - b0 > 100,
        "both nodes forwarded: A {} B {}",
        a1 - a0,
        b1 - b0
    );
    result.assert_nothing_lost();
    assert_eq!(resets, 0);
    eprintln!(
        "figures: 40 flips; A forwarded {} packets, B {}; {} keep-alive requests on 8 connections and {} new connections, 0 failed, 0 resets",
        a1 - a0,
        b1 - b0,
        result.keepalive.iter().map(|k| k.answers.len()).sum::<usize>(),
        result.new_conns.len()
    );
}

/// Why the pair is configured with Maglev: with round robin, the node that takes over
/// schedules the connections it never saw by its own cursor, and about half of them land on
/// another backend, which resets them.
#[test]
fn with_round_robin_a_takeover_resets_connections() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hn", "roundrobin");
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (mut da, _db) = p.start_both();
    let mut ka = Keepalived::start(&a_ns, &p.a.keepalived_conf).unwrap();
    let _kb = Keepalived::start(&b_ns, &p.b.keepalived_conf).unwrap();
    wait_for("A holds the VIP", 30, || holds(&a_ns, VIP4));
    let load = Load::start(&p.topo.client, 16, false);
    load.wait_progress("load running through A", 5);
    p.a.crash(&mut da, &mut ka);
    wait_for("B takes the VIP", 15, || holds(&b_ns, VIP4));
    // Every connection has sent a request through B (or died trying).
    thread::sleep(Duration::from_secs(2));
    let result = load.finish();
    let broken = result
        .keepalive
        .iter()
        .filter(|k| k.error.is_some())
        .count();
    eprintln!(
        "figures: round robin: {broken} of 16 keep-alive connections broken by the takeover: {:?}",
        result
            .keepalive
            .iter()
            .filter_map(|k| k.error.as_ref())
            .collect::<Vec<_>>()
    );
    assert!(
        broken > 0,
        "no connection moved: round robin cannot be told from Maglev here"
    );
}

/// What `foobar-lb ready` is for: a node whose daemon dies (interface still up, keepalived
/// still running) fails keepalived's `track_script`, goes to FAULT and hands the VIP over. Its
/// pinned data plane keeps forwarding meanwhile, so nothing is lost even before the move;
/// restarted, the daemon answers again and the node comes back as backup.
#[test]
fn a_node_whose_daemon_dies_hands_the_vip_over() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hd", "maglev");
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (mut da, _db) = p.start_both();
    let (ka, _kb, _) = p.elect();
    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let load = Load::start(&p.topo.client, 4, false);
    load.wait_progress("load running through A", 5);

    da.kill();
    let handover = wait_for("B takes the VIP from A, whose daemon died", 20, || {
        holds(&b_ns, VIP4)
    });
    assert!(ka.entered("FAULT") >= 1, "{}", ka.log_text());
    assert!(!holds(&a_ns, VIP4), "A kept the VIP in FAULT state");
    load.wait_progress("load running through B", 10);

    let da = p.a.start();
    let rejoined = wait_for("A's check passes again: BACKUP", 20, || {
        ka.entered("BACKUP") >= 2
    });
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert!(
            !holds(&a_ns, VIP4) && holds(&b_ns, VIP4),
            "the VIP moved back to A"
        );
        thread::sleep(Duration::from_millis(50));
    }
    load.wait_progress("load running through B after A's daemon returned", 5);
    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;
    result.assert_nothing_lost();
    assert_eq!(resets, 0);
    eprintln!(
        "figures: daemon killed -> VIP on B after {handover:?} (track_script interval 1 s, \
         fall 2); daemon restarted -> A BACKUP after {rejoined:?}; {} new connections, 0 failed, \
         0 resets; A verdicts {}",
        result.new_conns.len(),
        da.verdicts_text()
    );
}

/// Split brain as VRRP makes it: node A's keepalived freezes (SIGSTOP to its VRRP process, as
/// a stalled host), so its adverts stop while it keeps the VIP; B becomes MASTER too, and both
/// hold the VIP, B announcing it. When A resumes, its higher-priority adverts send B back to
/// BACKUP. Under load, nothing fails or
/// moves: both nodes send each connection to the same backend.
#[test]
fn split_brain_from_a_frozen_master_misroutes_nothing() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hb", "maglev");
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (_da, db) = p.start_both();
    let (ka, _kb, _) = p.elect();
    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let load = Load::start(&p.topo.client, 8, false);
    load.wait_progress("load running through A", 5);

    ka.signal_vrrp("STOP").unwrap();
    let split = wait_for("both nodes hold the VIP", 15, || {
        holds(&b_ns, VIP4) && holds(&a_ns, VIP4)
    });
    let b0 = forwarded(&db);
    load.wait_progress("load running during the split", 30);
    // Still split: the load ran with both nodes announcing the VIP.
    assert!(
        holds(&a_ns, VIP4) && holds(&b_ns, VIP4),
        "the split ended by itself"
    );
    let neigh = p.topo.client.ip(&["neigh", "show", VIP4]).unwrap();
    let b_forwarded = forwarded(&db) - b0;
    ka.signal_vrrp("CONT").unwrap();
    let healed = wait_for("B gives the VIP up", 15, || !holds(&b_ns, VIP4));
    assert!(holds(&a_ns, VIP4), "A lost the VIP");
    load.wait_progress("load running after the split", 10);

    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;
    result.assert_nothing_lost();
    assert_eq!(resets, 0);
    eprintln!(
        "figures: A frozen -> both MASTER after {split:?}; B forwarded {b_forwarded} \
         packets during the split (client's entry: {}); A resumed -> B BACKUP after {healed:?}; \
         {} new connections, 0 failed, 0 resets; B verdicts {}",
        String::from_utf8_lossy(&neigh.stdout).trim(),
        result.new_conns.len(),
        db.verdicts_text()
    );
}

/// Flow sync makes a round-robin pair lose nothing: A's flows are in B's table before A dies,
/// so B sends every established connection to the backend A chose (without sync, the test
/// above shows connections broken). A restarted node is not ready before its bulk sync from
/// the survivor, after which it holds the survivor's flows and takes over again losslessly.
#[test]
fn sync_round_robin_takeover_loses_nothing_and_a_restarted_node_syncs_first() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hy", "roundrobin");
    with_sync(&p, SYNC_KEY, SYNC_KEY, 3000);
    let (mut da, mut db) = p.start_both();
    wait_for("both nodes receive each other's flows", 15, || {
        sync_of(&da).peers_connected == 1 && sync_of(&db).peers_connected == 1
    });
    let (mut ka, mut kb, _) = p.elect();

    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let load = Load::start(&p.topo.client, 16, true);
    load.wait_progress("load running through A", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });
    // Every keep-alive connection and the download are flows of A's, applied on B.
    wait_for("B applied A's flows", 10, || sync_of(&db).applied >= 17);
    let (a_sync, b_sync) = (sync_of(&da), sync_of(&db));
    assert!(a_sync.ring_events >= 17, "A announced {a_sync:?}");
    assert!(b_sync.applied >= 17, "B applied {b_sync:?}");
    assert_eq!(
        b_sync.unknown_backend + a_sync.ring_full,
        0,
        "{a_sync:?} {b_sync:?}"
    );

    // 1. A crashes: B takes over with A's flows.
    let (killed_a, takeover) = p.a.crash_over_to((&mut da, &mut ka), &p.b, &[VIP4]);
    load.wait_progress("load running through B", 20);
    thread::sleep(Duration::from_secs(1));

    // 2. A restarts: not ready until its bulk sync from B is done, then it holds B's flows
    // (those of the connections opened through B since A died among them).
    let b_flows = db.stats().flows;
    let (da, ka) = p.a.restart();
    let a_sync = sync_of(&da);
    if !a_sync.synced {
        let (code, text) = p.a.ready();
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("waiting for a bulk sync"), "{text}");
    }
    wait_for("restarted A synced", 10, || sync_of(&da).synced);
    let a_sync = sync_of(&da);
    assert!(
        a_sync.gate.contains(&format!("bulk sync from {NODE_B}:")),
        "{a_sync:?}"
    );
    assert!(
        a_sync.bulk_syncs >= 1 && a_sync.applied as usize >= b_flows,
        "{a_sync:?}, B had {b_flows} flows"
    );
    assert_eq!(p.a.ready().0, 0);
    wait_for("restarted A enters BACKUP", 30, || {
        ka.entered("BACKUP") >= 1
    });
    load.wait_progress("load running through B after A rejoined", 10);

    // 3. B crashes: A takes over again, with the flows B created meanwhile.
    let (killed_b, takeback) = p.b.crash_over_to((&mut db, &mut kb), &p.a, &[VIP4]);
    load.wait_progress("load running through A again", 20);
    thread::sleep(Duration::from_secs(1));

    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;
    result.assert_nothing_lost();
    let Download { body, .. } =
        result.intact_download_across(killed_a, killed_a + takeover, &p.long);
    assert_eq!(resets, 0, "the client saw {resets} connection resets");
    let keepalive_total: usize = result.keepalive.iter().map(|k| k.answers.len()).sum();
    eprintln!(
        "figures: round robin + sync: takeover A->B {takeover:?}, B->A {takeback:?}; \
         {keepalive_total} keep-alive requests on {} connections, {} new connections, 0 failed, \
         0 resets; download of {} bytes intact; since B was killed {:?}; restarted A: {a_sync:?}",
        result.keepalive.len(),
        result.new_conns.len(),
        body.len(),
        killed_b.elapsed(),
    );
    drop(ka);
    drop(kb);
}

/// A starting node with no reachable peer is not ready until `bulk_timeout_ms` passed; a peer
/// with another key is refused both ways, and none of its flows is written.
#[test]
fn sync_waits_for_a_peer_at_start_and_refuses_a_wrong_key() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hw", "roundrobin");
    with_sync(
        &p,
        SYNC_KEY,
        "another secret, also 32 bytes or more long\n",
        3000,
    );
    let da = p.a.start();
    let (code, text) = p.a.ready();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("not ready: syncing flows: waiting for a bulk sync"),
        "{text}"
    );
    let waited = wait_for("A ready without a peer", 10, || p.a.ready().0 == 0);
    let gate = sync_of(&da).gate;
    assert!(gate.contains("no peer answered within 3000 ms"), "{gate}");
    eprintln!("A became ready {waited:?} after its start with no peer: {gate}");

    // B, with the wrong key, holds the VIP and forwards a few connections.
    let db = p.b.start();
    wait_backends_up(&db);
    wait_for("the handshakes refused both ways", 15, || {
        sync_of(&da).auth_failures >= 2 && sync_of(&db).auth_failures >= 2
    });
    let b_ns = p.b.ns();
    b_ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "eth0"])
        .unwrap();
    for _ in 0..5 {
        foobar_lb_tests::traffic::get(&p.topo.client, &format!("http://{VIP4}/"));
    }
    // The counters are read from the program every 100 ms.
    wait_for("B announces its 5 flows", 5, || {
        sync_of(&db).ring_events >= 5
    });
    let b_sync = sync_of(&db);
    assert_eq!((b_sync.peers_connected, b_sync.sent), (0, 0), "{b_sync:?}");
    thread::sleep(Duration::from_secs(1));
    let a_sync = sync_of(&da);
    assert_eq!(
        (a_sync.peers_connected, a_sync.received, a_sync.applied),
        (0, 0, 0),
        "{a_sync:?}"
    );
    assert_eq!(
        da.stats().flow_table_entries,
        0,
        "A's flow table got entries"
    );
    assert!(
        da.log_text().contains("sync: refused"),
        "the refusal is logged: {}",
        da.log_text()
    );
    let status = String::from_utf8_lossy(&da.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("sync: no bulk sync: no peer answered within 3000 ms")
            && status.contains("0 peer(s) connected"),
        "{status}"
    );
}

/// `foobar-lb node drain` on the active node of a synced pair: its `ready` fails, so its
/// keepalived gives the VIP to the other node, which carries every connection on (it has their
/// flows); undrained, the node is ready again and takes the VIP back when the other is drained
/// in turn. Under keep-alive, new-connection and download load: nothing lost, no reset.
#[test]
fn sync_node_drain_hands_the_vip_over_and_back_losing_nothing() {
    if !root_object_and_binary() {
        return;
    }
    let p = pair("hd", "roundrobin");
    with_sync(&p, SYNC_KEY, SYNC_KEY, 3000);
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (da, db) = p.start_both();
    wait_for("both nodes connected to each other", 15, || {
        sync_of(&da).peers_connected == 1 && sync_of(&db).peers_connected == 1
    });
    let (ka, _kb, _) = p.elect();

    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let load = Load::start(&p.topo.client, 16, true);
    load.wait_progress("load running through A", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });
    wait_for("B applied A's flows", 10, || sync_of(&db).applied >= 17);

    // 1. A drained: not ready, so keepalived moves the VIP to B.
    let drained_a = Instant::now();
    let out = da.cli(&["node", "drain"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("drained"), "{text}");
    let (code, why) = p.a.ready();
    assert_eq!(code, 1, "{why}");
    assert!(why.contains("drained by the operator"), "{why}");
    let takeover = wait_for("B takes the VIP from drained A", 15, || {
        holds(&b_ns, VIP4) && !holds(&a_ns, VIP4)
    });
    let b_before = forwarded(&db);
    load.wait_progress("load running through B", 20);
    assert!(forwarded(&db) > b_before, "B forwards nothing");
    let status = String::from_utf8_lossy(&da.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("node: drained"), "{status}");
    // keepalived re-runs its check every second: A stays out while drained.
    thread::sleep(Duration::from_secs(2));
    assert!(!holds(&a_ns, VIP4), "drained A took the VIP back");

    // 2. A undrained: ready again; B keeps the VIP (nopreempt) until B is drained in turn.
    let out = da.cli(&["node", "undrain"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("A ready again", 10, || p.a.ready().0 == 0);
    wait_for("A's keepalived sees it ready (BACKUP)", 15, || {
        ka.entered("BACKUP") >= 2
    });
    assert!(
        holds(&b_ns, VIP4),
        "B lost the VIP to an undrained A (nopreempt)"
    );
    let drained_b = Instant::now();
    assert!(db.cli(&["node", "drain"]).status.success());
    let takeback = wait_for("A takes the VIP back from drained B", 15, || {
        holds(&a_ns, VIP4) && !holds(&b_ns, VIP4)
    });
    load.wait_progress("load running through A again", 20);
    thread::sleep(Duration::from_secs(1));

    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;
    result.assert_nothing_lost();
    let Download { body, .. } =
        result.intact_download_across(drained_a, drained_a + takeover, &p.long);
    assert_eq!(resets, 0, "the client saw {resets} connection resets");
    let keepalive_total: usize = result.keepalive.iter().map(|k| k.answers.len()).sum();
    eprintln!(
        "figures: node drain A->B {takeover:?}, B->A {takeback:?}; {keepalive_total} keep-alive \
         requests on {} connections, {} new connections, 0 failed, 0 resets; download of {} \
         bytes intact; B drained {:?} ago",
        result.keepalive.len(),
        result.new_conns.len(),
        body.len(),
        drained_b.elapsed(),
    );
}

/// The clients (address, port) of a node's tracked NAT connections, only the established
/// ones if `established` (`foobar-lb flows --json`).
fn nat_clients(
    d: &Daemon,
    established: bool,
) -> std::collections::HashSet<(std::net::IpAddr, u16)> {
    let out = d.cli(&["flows", "--json", "--limit", "100000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: foobar_lb::api::FlowsAnswer = serde_json::from_slice(&out.stdout).unwrap();
    flows
        .rows
        .iter()
        .filter(|r| !established || r.conn.state == foobar_lb::dataplane::NatState::Established)
        .map(|r| r.conn.client)
        .collect()
}

/// Flow sync of NAT connections: a keepalived pair whose services translate (`nat`: the
/// backends route the clients through the gateway address keepalived moves with the VIPs;
/// `fullnat`: the SNAT addresses move instead) loses nothing when the active node crashes.
/// Each connection's pair of entries (and full NAT's SNAT port) is in the backup's NAT tables
/// before the crash, written with the backup's own ids, interface and next hop, so the
/// backup forwards the clients' packets to the same backends and translates the backends'
/// replies, which now reach it through the moved address. Short NAT timeouts show the backup
/// keeps long-lived connections only through the active node's re-announcements. Then the
/// crashed node restarts, gets the survivor's connections by bulk sync, and takes over again
/// when the survivor crashes, losing nothing either.
fn sync_translating_takeover_loses_nothing(tag: &str, fwd: Forwarding) {
    if !root_object_and_binary() {
        return;
    }
    let p = pair_with(tag, "roundrobin", fwd);
    with_sync(&p, SYNC_KEY, SYNC_KEY, 3000);
    // Short idle timeouts: a connection B imported on its SYN would be swept as unanswered
    // after 3 s, an established one after 6 s without a packet B never sees; A re-announces
    // its live connections every second (a third of the shortest).
    for node in [&p.a, &p.b] {
        let mut c = std::fs::read_to_string(&node.config).unwrap();
        c += "\n[nat.timeouts]\ntcp_syn = 3\ntcp_established = 6\n";
        std::fs::write(&node.config, c).unwrap();
    }
    let (a_ns, b_ns) = (p.a.ns(), p.b.ns());
    let (mut da, mut db) = p.start_both();
    wait_for("both nodes receive each other's connections", 15, || {
        sync_of(&da).peers_connected == 1 && sync_of(&db).peers_connected == 1
    });
    let mut ka = Keepalived::start(&a_ns, &p.a.keepalived_conf).unwrap();
    let mut kb = Keepalived::start(&b_ns, &p.b.keepalived_conf).unwrap();
    let moved = if fwd == Forwarding::Nat {
        [GW4, GW6]
    } else {
        [SNAT4, SNAT6]
    };
    wait_for("A holds the VIPs and the NAT addresses", 30, || {
        [VIP4, VIP6].iter().chain(&moved).all(|a| holds(&a_ns, a))
    });
    wait_for("B enters BACKUP", 10, || kb.entered("BACKUP") >= 1);
    assert!(
        !moved.iter().any(|a| holds(&b_ns, a)),
        "B holds a NAT address"
    );

    let resets_before = tcp_counter(&p.topo.client, "EstabResets").unwrap();
    let load_started = Instant::now();
    let load = Load::start(&p.topo.client, 16, true);
    load.wait_progress("load running through A", 10);
    wait_for("the download under way", 30, || {
        load.download_bytes.load(Ordering::Relaxed) >= 256 << 10
    });
    // Every keep-alive connection and the download are A's NAT connections, written on B.
    wait_for("B wrote A's NAT connections", 10, || {
        sync_of(&db).nat_applied >= 17
    });
    let (a_sync, b_sync) = (sync_of(&da), sync_of(&db));
    assert!(a_sync.nat_sent >= 17, "A sent {a_sync:?}");
    assert_eq!(
        b_sync.unknown_backend + b_sync.nat_skipped + a_sync.ring_full,
        0,
        "{a_sync:?} {b_sync:?}"
    );
    // The sweeper counts the tables every 2 s.
    wait_for("B's NAT tables hold them", 5, || {
        db.stats().nat.connections >= 17
    });
    let a_before = nat_clients(&da, true);
    // Longer than both timeouts, with the sweepers running: B keeps its copies of A's live
    // connections only through A's re-announcements.
    thread::sleep(Duration::from_secs(9));
    load.wait_progress("load running through A", 5);
    let a_sync = sync_of(&da);
    assert!(a_sync.nat_refreshed >= 17 * 5, "A re-announced {a_sync:?}");
    // The long-lived connections (established on A then and now: the keep-alive ones and
    // the download; new connections last milliseconds) are all in B's tables still.
    let long_lived: Vec<_> = nat_clients(&da, true)
        .intersection(&a_before)
        .copied()
        .collect();
    let on_b = nat_clients(&db, false);
    assert!(
        long_lived.len() >= 17,
        "A's long-lived connections: {long_lived:?}"
    );
    let missing: Vec<_> = long_lived.iter().filter(|c| !on_b.contains(c)).collect();
    assert!(missing.is_empty(), "B's sweeper forgot {missing:?}");

    // The VIPs and the NAT addresses (the backends' gateway or the SNAT addresses) move.
    let addrs = [VIP4, VIP6, moved[0], moved[1]];
    let (killed_a, takeover) = p.a.crash_over_to((&mut da, &mut ka), &p.b, &addrs);
    load.wait_progress("load running through B", 20);
    thread::sleep(Duration::from_secs(1));
    // A connection B did not know would have been scheduled anew, and its RST from a backend
    // that never saw it dropped as a refusal (so the client retries rather than resets).
    assert_eq!(
        db.stats().verdict("drop_syn_refused"),
        0,
        "{}",
        db.verdicts_text()
    );
    let (b_sync, b_verdicts) = (sync_of(&db), db.verdicts_text());

    // 2. A restarts: its bulk sync from B brings B's NAT connections (A's former ones, and
    // those opened through B since), with B's idle times; then B crashes and A carries on.
    let (da, ka) = p.a.restart();
    wait_for("restarted A synced", 15, || sync_of(&da).synced);
    let a_sync = sync_of(&da);
    // Ready only once the bulk's connections are written (full NAT: a restarted node's
    // neighbour table is empty, and a connection waits for its next hop's resolution).
    assert!(
        a_sync.gate.contains(&format!("bulk sync from {NODE_B}:"))
            && a_sync.nat_applied >= 17
            && a_sync.nat_skipped == 0,
        "{a_sync:?}"
    );
    wait_for("restarted A enters BACKUP", 30, || {
        ka.entered("BACKUP") >= 1
    });
    load.wait_progress("load running through B after A rejoined", 10);
    let (killed_b, takeback) = p.b.crash_over_to((&mut db, &mut kb), &p.a, &addrs);
    load.wait_progress("load running through A again", 20);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        da.stats().verdict("drop_syn_refused"),
        0,
        "{}",
        da.verdicts_text()
    );

    let result = load.finish();
    let resets = tcp_counter(&p.topo.client, "EstabResets").unwrap() - resets_before;
    // When a new connection fails: when it started (the requests run one after another, 20 ms
    // apart), next to the crashes.
    let mut at = Duration::ZERO;
    for (took, r) in &result.new_conns {
        if let Err(e) = r {
            eprintln!(
                "new connection failed: started {at:?} after the load, A crashed at {:?}, B \
                 at {:?}: {e}",
                killed_a - load_started,
                killed_b - load_started
            );
        }
        at += *took + Duration::from_millis(20);
    }
    result.assert_nothing_lost();
    let Download { body, .. } =
        result.intact_download_across(killed_a, killed_a + takeover, &p.long);
    assert_eq!(resets, 0, "the client saw {resets} connection resets");
    let keepalive_total: usize = result.keepalive.iter().map(|k| k.answers.len()).sum();
    eprintln!(
        "figures: {tag} round robin + sync: takeover A->B {takeover:?}, B->A {takeback:?}; \
         {keepalive_total} keep-alive requests on {} connections, {} new connections, 0 failed, \
         0 resets; download of {} bytes intact; since B was killed {:?}; B before its crash: \
         {b_sync:?}, verdicts {b_verdicts}; restarted A: {a_sync:?}",
        result.keepalive.len(),
        result.new_conns.len(),
        body.len(),
        killed_b.elapsed(),
    );
    drop(ka);
}

#[test]
fn sync_nat_takeover_loses_nothing() {
    sync_translating_takeover_loses_nothing("hn", Forwarding::Nat);
}

#[test]
fn sync_fullnat_takeover_loses_nothing() {
    sync_translating_takeover_loses_nothing("hf", Forwarding::FullNat);
}
