//! Full NAT end to end in network namespaces: real, unmodified nginx backends on 8080 with no
//! VIP, no sysctl and no route beyond their own subnet (nothing through the balancer); the
//! real controller binary; curl as the client. The hairpin case: a web server that is also a
//! client of the VIP it serves, answered by itself and by the other backend. Every loop is
//! bounded; every namespace is removed by its guard on every exit path.

use std::time::{Duration, Instant};

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{Topology, SNAT4, SNAT6, VIP4, VIP6},
    root_object_and_binary,
    traffic::{
        assert_balanced_and_intact, assert_even, assert_no_drops, download_sha256, tally,
        wait_answers,
    },
};

struct Setup {
    daemon: Daemon,
    topo: Topology,
}

/// None: skipped (no root or no XDP object outside `cargo xtask test`).
fn setup(tag: &str) -> Option<Setup> {
    if !root_object_and_binary() {
        return None;
    }
    let mut topo = Topology::new(tag, 2).expect("topology");
    topo.fullnat_setup().unwrap();
    topo.access_log = true;
    topo.start_webs_nginx(8080).unwrap();
    for i in 1..=2 {
        // No route beyond the subnet: the client (10.111.0.1) is on it, the SNAT address too.
        let routes = String::from_utf8(topo.web(i).ip(&["route", "show"]).unwrap().stdout).unwrap();
        assert!(
            !routes.contains("default") && !routes.contains("via"),
            "{routes}"
        );
    }
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_fullnat_config("generic", &socket, 8080, "")
        .unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    // Served once the first health checks (TCP to 8080) passed: they also give the balancer
    // the neighbour entries its FIB lookups need.
    wait_answers(&topo.client, &format!("http://{VIP4}/"), 10);
    Some(Setup { daemon, topo })
}

#[test]
fn fullnat_round_robin_download_and_hairpin() {
    let Some(s) = setup("fe") else {
        return;
    };
    let n = 20;
    // Client -> VIP:80 -> backend:8080 from the SNAT address, round robin, both families.
    assert_even(&tally(&s.topo.client, &format!("http://{VIP4}/"), n), n);
    assert_even(&tally(&s.topo.client, &format!("http://[{VIP6}]/"), 10), 10);
    // The hairpin: web1 is a client of the VIP it serves; it gets answers from itself and
    // from web2, with no failure.
    let web1 = s.topo.web(1);
    assert_even(&tally(web1, &format!("http://{VIP4}/"), n), n);
    assert_even(&tally(web1, &format!("http://[{VIP6}]/"), 10), 10);
    // A download arrives intact, to the client and to the hairpin client.
    let want = s.topo.big_file("big16", 16).unwrap();
    for (who, ns) in [("client", &s.topo.client), ("web1", web1)] {
        for url in [
            format!("http://{VIP4}/big16"),
            format!("http://[{VIP6}]/big16"),
        ] {
            let out = s.topo.dir.join(format!("download-{who}"));
            assert_eq!(
                download_sha256(ns, &url, &out),
                want,
                "{who} {url}: content differs"
            );
        }
    }
    let st = s.daemon.stats();
    assert!(st.verdict("tx_nat_reply") > 0, "replies were translated");
    // The backends saw the SNAT addresses, never a client: nginx's access logs say so
    // (written within 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    for i in 1..=2 {
        let log = std::fs::read_to_string(s.topo.dir.join(format!("web{i}.access"))).unwrap();
        assert!(log.lines().count() >= n, "web{i}: {log}");
        for line in log.lines() {
            assert!(
                line.starts_with(&format!("{SNAT4} ")) || line.starts_with(&format!("{SNAT6} ")),
                "web{i} saw another source: {line}"
            );
        }
    }
    // `flows` lists each connection with its SNAT endpoint.
    let out = s.daemon.cli(&["flows", "--json", "--limit", "1000"]);
    assert!(out.status.success());
    let flows: foobar_lb::api::FlowsAnswer = serde_json::from_slice(&out.stdout).unwrap();
    assert!(flows.total >= 2 * n + 20, "{}", flows.total);
    for r in &flows.rows {
        let (addr, port) = r
            .conn
            .snat
            .expect("full-NAT connections list their SNAT endpoint");
        assert!(
            addr.to_string() == SNAT4 || addr.to_string() == SNAT6,
            "{r:?}"
        );
        assert!(port >= 1024, "{r:?}");
        assert_eq!(r.conn.backend.1, 8080);
    }
    let text = String::from_utf8(s.daemon.cli(&["flows", "--limit", "3"]).stdout).unwrap();
    assert!(text.contains("snat"), "{text}");
    assert_no_drops(&s.daemon);
}

#[test]
fn a_fullnat_service_added_at_run_time_serves_and_is_dumped() {
    let Some(s) = setup("fa") else {
        return;
    };
    let ok = |args: &[&str]| {
        let out = s.daemon.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Refused without a SNAT address of the VIP's family, with the reason.
    let out = s.daemon.cli(&[
        "service",
        "add",
        "alt",
        "--vip",
        VIP4,
        "--port",
        "81",
        "--forwarding",
        "fullnat",
        "--snat",
        SNAT6,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an IPv4 address in snat"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&[
        "service",
        "add",
        "alt",
        "--vip",
        VIP4,
        "--port",
        "81",
        "--forwarding",
        "fullnat",
        "--snat",
        SNAT4,
        "--snat-ports",
        "1024-65535",
    ]);
    ok(&["backend", "add", "alt", "10.111.0.12", "--port", "8080"]);
    // Served once its first health check passes; from web1 too (no route anywhere).
    let deadline = Instant::now() + Duration::from_secs(10);
    for client in [&s.topo.client, s.topo.web(1)] {
        loop {
            match foobar_lb_tests::traffic::try_get(client, &format!("http://{VIP4}:81/")) {
                Ok(body) if body == "web2" => break,
                other => assert!(Instant::now() < deadline, "{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let dump = String::from_utf8(s.daemon.cli(&["config-dump"]).stdout).unwrap();
    assert!(
        dump.contains("forwarding = \"fullnat\"")
            && dump.contains(&format!("snat = [\"{SNAT4}\"]"))
            && dump.contains("snat_ports = \"1024-65535\""),
        "{dump}"
    );
    assert_no_drops(&s.daemon);
}

/// Full NAT's backends may be anywhere routable: here each web server sits in a subnet of its
/// own behind a router namespace, with a default route via the router and nothing else. The
/// balancer has no neighbour entry for them (nor waits for one): its health checks reach them
/// through the router, and its FIB lookup gives the router's MAC as each connection's next hop.
#[test]
fn fullnat_backends_behind_a_router_are_checked_and_served() {
    use foobar_lb_tests::routed::{routed4, routed6, ROUTER4};
    if !root_object_and_binary() {
        return;
    }
    let mut topo = Topology::new("fr", 2).expect("topology");
    topo.fullnat_setup().unwrap();
    let _router = topo.backends_behind_router().unwrap();
    topo.access_log = true;
    topo.start_webs_nginx(8080).unwrap();
    for i in 1..=2 {
        // Not on the balancer's link: reached through the router.
        let route = topo.lb.ip(&["route", "get", &routed4(i)]).unwrap().stdout;
        let route = String::from_utf8(route).unwrap();
        assert!(route.contains(&format!("via {ROUTER4}")), "{route}");
    }
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_routed_fullnat_config("generic", &socket, 8080)
        .unwrap();
    let started = Instant::now();
    let mut daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    wait_answers(&topo.client, &format!("http://{VIP4}/"), 10);
    // Start-up did not wait for ARP answers that never come (3 s per missing MAC).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let log = daemon.log_text();
    assert!(!log.contains("no ARP/NDP answer"), "{log}");
    // Every backend, both families, checked up through the router.
    foobar_lb_tests::load::wait_backends_up(&daemon);

    let n = 20;
    assert_balanced_and_intact(&topo, &topo.client, n);
    // The backends saw the SNAT addresses, through the router.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 1..=2 {
        let log = std::fs::read_to_string(topo.dir.join(format!("web{i}.access"))).unwrap();
        assert!(log.lines().count() >= n / 2, "web{i}: {log}");
        for line in log.lines() {
            assert!(
                line.starts_with(&format!("{SNAT4} ")) || line.starts_with(&format!("{SNAT6} ")),
                "web{i} saw another source: {line}"
            );
        }
    }
    assert_no_drops(&daemon);

    // Health-checked through the router: web2 stops listening, its checks fail, and new
    // connections all go to web1; back when it listens again.
    topo.stop_web(2).unwrap();
    let web2_state = |d: &Daemon| {
        d.stats()
            .services
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.address == routed4(2) || b.address == routed6(2))
            .map(|b| b.state.clone())
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while web2_state(&daemon).iter().any(|s| s == "active") {
        assert!(Instant::now() < deadline, "{:?}", web2_state(&daemon));
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = tally(&topo.client, &format!("http://{VIP4}/"), 6);
    assert_eq!(seen.get("web1"), Some(&6), "{seen:?}");
    topo.start_nginx(topo.web(2), "web2", 8080).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !web2_state(&daemon).iter().all(|s| s == "active") {
        assert!(Instant::now() < deadline, "{:?}", web2_state(&daemon));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_even(&tally(&topo.client, &format!("http://{VIP4}/"), n), n);
    assert!(daemon.stop());
}

/// Path-MTU discovery through a full-NAT service: as `nat_path_mtu_discovery_*` in
/// nat_e2e.rs, a client behind a router whose link to it has an MTU of 1280. The router's
/// errors go to the VIP; the balancer sends them to the backend from the SNAT address, quoting
/// what the backend sent (to the SNAT address and port), so the backend learns the path MTU
/// towards the SNAT address: without it the downloads stall.
#[test]
fn fullnat_path_mtu_discovery_through_a_router_with_a_small_mtu() {
    let Some(s) = setup("fp") else {
        return;
    };
    let topo = &s.topo;
    let far = topo.client_behind_small_mtu_router().unwrap();
    // Some backend learns the router's MTU towards the SNAT address.
    topo.assert_path_mtu_learnt(&far, [SNAT4, SNAT6]);
    assert_no_drops(&s.daemon);
    drop(far);
}
