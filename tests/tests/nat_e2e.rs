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
    netns::{sha256, Topology, VIP4, VIP6},
    root_object_and_binary,
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
