//! NAT forwarding end to end in network namespaces: real, unmodified nginx backends listening
//! on 8080 with no VIP anywhere on them, replies routed through the balancer; the real
//! controller binary; curl and socat as clients. Every loop is bounded; every namespace is
//! removed by its guard on every exit path.

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{sha256, spawn_in_netns, Topology, LB4, LB6, VIP4, VIP6},
    root_object_and_binary,
    routed::{FAR_CLIENT4, FAR_CLIENT6},
    traffic::{
        assert_even, assert_no_drops, download_sha256, keepalive_client, keepalive_result, tally,
    },
};

struct Setup {
    daemon: Daemon,
    // Drop order: the daemon first, then the pass program, then the namespaces.
    _pass: Option<foobar_lb::dataplane::AuxProgram>,
    topo: Topology,
}

/// None: skipped (no root or no XDP object outside `cargo xtask test`).
fn setup(tag: &str, mode: &str, extra: &str) -> Option<Setup> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, 2).expect("topology");
    topo.nat_backends().unwrap();
    for i in 1..=2 {
        topo.start_nginx(topo.web(i), &format!("web{i}"), 8080)
            .unwrap();
    }
    let pass = (mode == "native").then(|| topo.attach_lb_peer_pass().unwrap());
    let socket = topo.dir.join("control.sock");
    let config = topo.write_nat_config(mode, &socket, 8080, extra).unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    Some(Setup {
        daemon,
        _pass: pass,
        topo,
    })
}

fn round_robin(mode: &str, tag: &str) {
    let Some(s) = setup(tag, mode, "") else {
        return;
    };
    let n = 20;
    // VIP:80 -> backend:8080, round robin, both families.
    assert_even(&tally(&s.topo.client, &format!("http://{VIP4}/"), n), n);
    assert_even(&tally(&s.topo.client, &format!("http://[{VIP6}]/"), 10), 10);
    // Keep-alive: every request of one connection on one backend.
    let (bodies, connects) = keepalive_result(keepalive_client(&s.topo.client, 10));
    assert_eq!(connects, 1);
    assert_eq!(bodies.len(), 10);
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "one connection, one backend: {bodies:?}"
    );
    let st = s.daemon.stats();
    assert!(st.verdict("tx_nat_reply") > 0, "replies were translated");
    let www = st.services.iter().find(|x| x.name == "www").unwrap();
    assert_eq!(www.counters.new_flows, n as u64 + 1);
    // `flows` lists the tracked connections (all closed or closing: within tcp_closing).
    let flows = flows_of(&s.daemon, &[]);
    assert_eq!(flows.total, n + 10 + 1, "{flows:?}");
    for r in &flows.rows {
        assert_eq!((r.conn.vip.1, r.conn.backend.1), (80, 8080), "{r:?}");
        assert!(r.service == "www" || r.service == "www6", "{r:?}");
        assert!(
            matches!(
                r.conn.state,
                foobar_lb::dataplane::NatState::Closing | foobar_lb::dataplane::NatState::Closed
            ),
            "{r:?}"
        );
    }
    let six = flows_of(&s.daemon, &["--service", "www6", "--limit", "3"]);
    assert_eq!((six.total, six.rows.len()), (10, 3));
    let web1 = flows_of(&s.daemon, &["--backend", "10.111.0.11"]);
    assert!(web1
        .rows
        .iter()
        .all(|r| r.conn.backend.0.to_string() == "10.111.0.11"));
    // The sweeper's count, in the stats and the metrics (it walks every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.daemon.stats().nat.connections != flows.total as u64 {
        assert!(Instant::now() < deadline, "{:?}", s.daemon.stats().nat);
        thread::sleep(Duration::from_millis(200));
    }
    assert_no_drops(&s.daemon);
}

/// `foobar-lb flows --json ARGS` (with `--limit 1000` unless ARGS give one).
fn flows_of(d: &Daemon, args: &[&str]) -> foobar_lb::api::FlowsAnswer {
    let mut v = vec!["flows", "--json"];
    if !args.contains(&"--limit") {
        v.extend(["--limit", "1000"]);
    }
    v.extend_from_slice(args);
    let out = d.cli(&v);
    assert!(
        out.status.success(),
        "flows failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("flows JSON")
}

#[test]
fn nat_round_robin_and_keepalive_generic_mode() {
    round_robin("generic", "ng");
}

#[test]
fn nat_round_robin_and_keepalive_native_mode() {
    round_robin("native", "nn");
}

#[test]
fn nat_large_downloads_arrive_intact_over_both_families() {
    let Some(s) = setup("nb", "generic", "") else {
        return;
    };
    let want = s.topo.big_file("big48", 48).unwrap();
    for url in [
        format!("http://{VIP4}/big48"),
        format!("http://[{VIP6}]/big48"),
    ] {
        let out = s.topo.dir.join("download");
        assert_eq!(
            download_sha256(&s.topo.client, &url, &out),
            want,
            "{url}: content differs"
        );
    }
    assert_no_drops(&s.daemon);
}

#[test]
fn nat_udp_exchange_with_socat() {
    let extra = "\n[[service]]\nname = \"echo\"\nvip = \"10.111.0.100\"\nport = 53\n\
                 protocol = \"udp\"\nforwarding = \"nat\"\n[service.health]\ncheck = \"none\"\n\
                 \n[[service.backend]]\n\
                 address = \"10.111.0.11\"\nport = 5353\n";
    let Some(s) = setup("nu", "generic", extra) else {
        return;
    };
    // A real UDP server on web1:5353 answering each datagram with itself.
    let mut server = s
        .topo
        .web(1)
        .cmd("socat")
        .args(["UDP4-RECVFROM:5353,fork,reuseaddr", "EXEC:/bin/cat"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let mut answers = Vec::new();
    for i in 0..5 {
        let out = s
            .topo
            .client
            .cmd("socat")
            .args(["-t", "2", "-T", "2", "-", &format!("UDP4:{VIP4}:53")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("ping{i}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        answers.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let _ = server.kill();
    let _ = server.wait();
    let want: Vec<String> = (0..5).map(|i| format!("ping{i}")).collect();
    assert_eq!(
        answers,
        want,
        "answers came back from VIP:53; verdicts {:?}, NAT entries {}",
        s.daemon.stats().verdicts,
        nat_entries(&s.topo)
    );
    assert_no_drops(&s.daemon);
}

#[test]
fn nat_connections_survive_a_daemon_restart() {
    let extra = "\n[nat.timeouts]\ntcp_closing = 2\ntcp_closed = 2\n";
    let Some(mut s) = setup("nr", "generic", extra) else {
        return;
    };
    let want = s.topo.big_file("big48", 48).unwrap();
    // A download at 8 MB/s (about 6 s), and the daemon SIGKILLed and started again in its
    // middle: the pinned NAT tables carry the connection.
    let out = s.topo.dir.join("download");
    let curl = s
        .topo
        .client
        .cmd("curl")
        .args([
            "-sS",
            "--max-time",
            "40",
            "--limit-rate",
            "8M",
            "-o",
            out.to_str().unwrap(),
            &format!("http://{VIP4}/big48"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    s.daemon.kill();
    thread::sleep(Duration::from_millis(500));
    let config = s.topo.dir.join("foobar-lb.toml");
    let socket = s.daemon.socket.clone();
    s.daemon = Daemon::start(&s.topo.lb, &config, &socket).unwrap();
    let done = curl.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "download across the restart failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(sha256(&out).unwrap(), want);
    assert!(
        s.daemon
            .log_text()
            .contains("adopting the pinned data plane"),
        "{}",
        s.daemon.log_text()
    );
    // The new daemon's sweeper forgets the closed connection (tcp_closing = 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let conns = nat_entries(&s.topo);
        if conns == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{conns} NAT entries left 20 s after the download closed"
        );
        thread::sleep(Duration::from_millis(500));
    }
    assert_no_drops(&s.daemon);
}

/// Entries in the pinned NAT_FWD map of the topology's daemon.
fn nat_entries(topo: &Topology) -> usize {
    let path = topo.pin_dir().join(foobar_lb_common::MAP_NAT_FWD);
    let data = aya::maps::MapData::from_pin(&path).unwrap();
    let map: aya::maps::HashMap<_, foobar_lb_common::FlowKey, foobar_lb_common::NatFwd> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    map.keys().filter(Result::is_ok).count()
}

#[test]
fn a_nat_service_added_at_run_time_translates_to_the_given_port() {
    let Some(s) = setup("na", "generic", "") else {
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
    ok(&[
        "service",
        "add",
        "alt",
        "--vip",
        VIP4,
        "--port",
        "81",
        "--forwarding",
        "nat",
    ]);
    ok(&["backend", "add", "alt", "10.111.0.12", "--port", "8080"]);
    // Served once its first health check (TCP to 8080) passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = format!("http://{VIP4}:81/");
    loop {
        match foobar_lb_tests::traffic::try_get(&s.topo.client, &url) {
            Ok(body) if body == "web2" => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        thread::sleep(Duration::from_millis(200));
    }
    let dump = String::from_utf8(s.daemon.cli(&["config-dump"]).stdout).unwrap();
    assert!(
        dump.contains("forwarding = \"nat\"") && dump.contains("port = 8080"),
        "{dump}"
    );
}

/// What the paced client of [`refusals_under_load`] saw.
#[derive(Debug)]
struct LoadFigures {
    requests: usize,
    /// Requests that failed (how, first few).
    failed: Vec<(Duration, String)>,
    /// Requests that took longer than 900 ms (a SYN retransmission).
    slow: usize,
    /// Answers by web1 from 4 s after its nginx was started again.
    web1_after: usize,
    refused: u64,
}

/// Issue 11's scenario: one new connection per request at ~50/s from the client for 16 s;
/// web1's nginx stopped gracefully (SIGQUIT: in-flight requests finish, then it stops
/// listening, so its kernel answers SYNs with RST) at 2 s and started again at 8 s. Checks
/// every 500 ms, rise 2, fall 3.
fn refusals_under_load(tag: &str, health: &str) -> Option<(LoadFigures, Daemon, Topology)> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, 2).expect("topology");
    topo.nat_backends().unwrap();
    for i in 1..=2 {
        topo.start_nginx(topo.web(i), &format!("web{i}"), 8080)
            .unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let health = format!("interval_ms = 500\ntimeout_ms = 300\nrise = 2\nfall = 3\n{health}");
    let config = topo
        .write_nat_config_with_health("generic", &socket, 8080, &health)
        .unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    // Both backends serving before the load starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: std::net::SocketAddr = format!("{VIP4}:80").parse().unwrap();
    loop {
        let seen = tally(&topo.client, &format!("http://{VIP4}/"), 4);
        if seen.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "backends not both up: {seen:?}");
        thread::sleep(Duration::from_millis(200));
    }
    const EVERY: Duration = Duration::from_millis(20);
    const RUN: Duration = Duration::from_secs(16);
    let client = spawn_in_netns(&topo.client.name, move || {
        let start = Instant::now();
        let mut reqs = Vec::new();
        let mut next = start;
        while next.duration_since(start) < RUN {
            let at = next.duration_since(start);
            // Threads inherit this thread's network namespace.
            reqs.push(thread::spawn(move || {
                let t = Instant::now();
                let r = foobar_lb_tests::traffic::http::get(addr, "/");
                (at, t.elapsed(), r)
            }));
            next += EVERY;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        reqs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    thread::sleep(Duration::from_secs(2));
    let pid = std::fs::read_to_string(topo.dir.join("web1.pid")).unwrap();
    foobar_lb_tests::netns::run(std::process::Command::new("kill").args(["-QUIT", pid.trim()]))
        .unwrap();
    thread::sleep(Duration::from_secs(6));
    topo.start_nginx(topo.web(1), "web1", 8080).unwrap();
    let results = client.join().unwrap();
    let failed: Vec<(Duration, String)> = results
        .iter()
        .filter_map(|(at, _, r)| r.as_ref().err().map(|e| (*at, e.clone())))
        .collect();
    let figures = LoadFigures {
        requests: results.len(),
        slow: results
            .iter()
            .filter(|(_, took, _)| *took > Duration::from_millis(900))
            .count(),
        web1_after: results
            .iter()
            .filter(|(at, _, r)| *at > Duration::from_secs(12) && r.as_deref() == Ok("web1"))
            .count(),
        failed: failed.into_iter().take(5).collect(),
        refused: daemon.stats().verdict("drop_syn_refused"),
    };
    eprintln!("{tag}: {figures:?}");
    Some((figures, daemon, topo))
}

/// Issue 11's goal: with `observe = "layer4"` a backend that stops listening costs no failed
/// request: its refusals are dropped, the retransmitted SYNs scheduled on web2 once the
/// controller marked web1 down (within 200 ms of the first refusal), and web1 is back after
/// `rise` once its nginx runs again.
#[test]
fn nat_observe_layer4_loses_no_request_when_a_backend_stops_listening() {
    let Some((f, daemon, _topo)) = refusals_under_load("no", "observe = \"layer4\"") else {
        return;
    };
    assert!(f.requests >= 700, "{f:?}");
    assert!(f.failed.is_empty(), "failed requests: {f:?}");
    assert!(f.refused > 0, "web1 refused some SYNs: {f:?}");
    // Only the refused connections wait for a SYN retransmission (1 s).
    assert!(f.slow < f.requests / 10, "{f:?}");
    assert!(f.web1_after > 0, "web1 back in service after rise: {f:?}");
    let log = daemon.log_text();
    assert!(log.contains("observe layer4"), "{log}");
    // Nothing else was dropped.
    let other: Vec<_> = daemon
        .stats()
        .verdicts
        .into_iter()
        .filter(|(n, v)| {
            *v > 0 && n != "drop_syn_refused" && (n.starts_with("drop_") || n == "aborted")
        })
        .collect();
    assert!(other.is_empty(), "{other:?}");
}

/// The same run without `observe`, for the figures only (not a contrast the suite can assert:
/// the refusals are still dropped and rescheduled, so whether a request fails depends on how
/// often its retransmissions land on web1 before the checks' `fall`). Run by hand:
/// `cargo test -p foobar-lb-tests --test nat_e2e -- --ignored --nocapture`.
#[test]
#[ignore]
fn nat_without_observe_figures() {
    let _ = refusals_under_load("nw", "");
}

/// Path-MTU discovery through a NAT service: the client sits behind a router whose link to it
/// has an MTU of 1280 (the client's own interface says 1500, so its MSS does not help). The
/// backends' full-size segments reach the router translated (from the VIP); its "fragmentation
/// needed" / "packet too big" goes to the VIP, and only the balancer's translation of that
/// error (to the backend, quoting what the backend sent) lets the backend lower its path MTU:
/// without it the downloads stall. The backends' route caches show the learnt MTU.
#[test]
fn nat_path_mtu_discovery_through_a_router_with_a_small_mtu() {
    let Some(s) = setup("np", "generic", "") else {
        return;
    };
    let topo = &s.topo;
    let far = topo.client_behind_small_mtu_router().unwrap();
    // The backends answer the far client through the balancer, as NAT backends do.
    for web in &topo.webs {
        web.ip(&["route", "add", "10.112.0.0/24", "via", LB4])
            .unwrap();
        web.ip(&["-6", "route", "add", "fd00:f00c::/64", "via", LB6])
            .unwrap();
    }
    // Some backend learns the router's MTU for the client from the translated errors.
    topo.assert_path_mtu_learnt(&far, [FAR_CLIENT4, FAR_CLIENT6]);
    assert_no_drops(&s.daemon);
    drop(far);
}
