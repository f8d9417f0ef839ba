//! Operating foobar-lb with real nginx backends: health-check failover, live backend changes,
//! draining, hitless restart, metrics and refused bad input. Loops are bounded in count and
//! time; namespaces and pins are removed by guards.

use std::{
    thread,
    time::{Duration, Instant},
};

use foobar_lb_tests::{
    daemon::{cli, Daemon},
    netns::{run, web4, Netns, Topology, VIP4},
    root_object_and_binary,
    traffic::{keepalive_client, keepalive_result, try_get},
};

/// Fast checks so the tests take seconds: interval 200 ms, fall 2, rise 2.
const HEALTH: &str =
    "[service.health]\ncheck = \"http\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n";

struct Setup {
    daemon: Daemon,
    topo: Topology,
}

fn setup(
    tag: &str,
    webs: usize,
    backends: usize,
    backend_extra: &dyn Fn(usize) -> String,
    detach: bool,
) -> Option<Setup> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, webs).expect("topology");
    for i in 1..=webs {
        topo.start_web(i).unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_config_with("generic", &socket, HEALTH, backend_extra, backends)
        .unwrap();
    let extra: &[&str] = if detach { &["--detach-on-exit"] } else { &[] };
    let daemon = Daemon::start_with(&topo.lb, &config, &socket, extra).unwrap();
    Some(Setup { daemon, topo })
}

fn get(client: &Netns) -> String {
    try_get(client, &format!("http://{VIP4}/")).unwrap_or_else(|e| panic!("GET failed: {e}"))
}

/// Requests until `want` answers (bounded by `limit`); the time it took.
fn wait_for_answer(client: &Netns, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if try_get(client, &format!("http://{VIP4}/")).as_deref() == Ok(want) {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{want} never answered within {limit:?}");
}

fn backend<'a>(
    st: &'a foobar_lb::api::StatsSnapshot,
    addr: &str,
) -> &'a foobar_lb::api::BackendStats {
    st.services[0]
        .backends
        .iter()
        .find(|b| b.address == addr)
        .unwrap_or_else(|| panic!("no backend {addr}"))
}

#[test]
fn failover_to_backup_and_back_when_the_primary_stops_and_recovers() {
    let Some(s) = setup(
        "fo",
        2,
        2,
        &|i| {
            if i == 2 {
                "role = \"backup\"".into()
            } else {
                String::new()
            }
        },
        true,
    ) else {
        return;
    };
    for _ in 0..4 {
        assert_eq!(
            get(&s.topo.client),
            "web1",
            "only the primary serves while healthy"
        );
    }
    s.topo.stop_web(1).unwrap();
    let switch = wait_for_answer(&s.topo.client, "web2", Duration::from_secs(5));
    for _ in 0..6 {
        assert_eq!(
            get(&s.topo.client),
            "web2",
            "every new request goes to the backup"
        );
    }
    let st = s.daemon.stats();
    let w1 = backend(&st, "10.111.0.11");
    // Marked down: no new flows, its established connections kept (on_marked_down = keep).
    assert_eq!(
        (w1.health.as_str(), w1.state.as_str()),
        ("down", "draining")
    );
    assert!(
        w1.last_error.as_deref().unwrap_or("").contains("refused"),
        "{w1:?}"
    );
    assert!(s
        .daemon
        .log_text()
        .contains("www/10.111.0.11 is DOWN (connection refused)"));

    s.topo.start_web(1).unwrap();
    let back = wait_for_answer(&s.topo.client, "web1", Duration::from_secs(5));
    for _ in 0..4 {
        assert_eq!(
            get(&s.topo.client),
            "web1",
            "new requests return to the primary"
        );
    }
    // Reported, not asserted: how fast failover is on a loaded machine is the benchmark's
    // business (`cargo xtask bench`); this test asserts where requests go.
    println!("failover: switch to backup {switch:?}, back to primary {back:?} (interval 200 ms, fall 2, rise 2)");
}

#[test]
fn backends_added_and_removed_while_traffic_flows() {
    let Some(s) = setup("lc", 3, 2, &|_| String::new(), true) else {
        return;
    };
    let c = &s.topo.client;
    for _ in 0..4 {
        assert_ne!(get(c), "web3");
    }
    let out = s.daemon.cli(&["backend", "add", "www", "10.111.0.13"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_answer(c, "web3", Duration::from_secs(5));
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..9 {
        *seen.entry(get(c)).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "all three serve: {seen:?}");
    assert!(
        seen.values().all(|&n| n == 3),
        "round robin over three: {seen:?}"
    );

    let out = s.daemon.cli(&["backend", "remove", "www", "10.111.0.11"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..10 {
        let answer = try_get(c, &format!("http://{VIP4}/")).expect("no errors after a removal");
        assert_ne!(answer, "web1");
    }
    let st = s.daemon.stats();
    assert_eq!(st.services[0].backends.len(), 2);
}

#[test]
fn drained_backend_keeps_its_connection_and_gets_no_new_ones() {
    let Some(s) = setup("dr", 2, 2, &|_| String::new(), true) else {
        return;
    };
    let c = &s.topo.client;
    let ka = keepalive_client(c, 40);
    // The backend of the keep-alive connection: the one with an open flow.
    let holder = keepalive_holder(&s.daemon);
    let (drained, drained_name, other_name) = if holder == 1 {
        ("10.111.0.11", "web1", "web2")
    } else {
        ("10.111.0.12", "web2", "web1")
    };
    let out = s.daemon.cli(&["backend", "drain", "www", drained]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..6 {
        assert_eq!(get(c), other_name, "new flows avoid the drained backend");
    }
    let st = s.daemon.stats();
    let d = backend(&st, drained);
    assert!(d.drained && d.state == "draining", "{d:?}");
    assert!(d.flows >= 1, "flows remaining are shown: {d:?}");
    let list = String::from_utf8(s.daemon.cli(&["backend", "list", "www"]).stdout).unwrap();
    assert!(list.contains("drained"), "{list}");
    // The drain is part of the running configuration: config-dump keeps it.
    let dump = String::from_utf8(s.daemon.cli(&["config-dump"]).stdout).unwrap();
    let config = foobar_lb::config::Config::parse(&dump).unwrap();
    let b = config.services[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == drained)
        .unwrap();
    assert!(b.drained, "{dump}");
    // The live connection shows as a packet rate on the drained backend (2 s sampling).
    let start = Instant::now();
    while backend(&s.daemon.stats(), drained).packets_per_sec == 0.0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no rate shown");
        thread::sleep(Duration::from_millis(200));
    }

    let (bodies, connects) = keepalive_result(ka);
    assert_eq!(bodies.len(), 40);
    assert!(
        bodies.iter().all(|b| b == drained_name),
        "connection stayed: {bodies:?}"
    );
    assert_eq!(connects, 1, "one connection throughout");
    let out = s.daemon.cli(&["backend", "undrain", "www", drained]);
    assert!(out.status.success());
    wait_for_answer(c, drained_name, Duration::from_secs(3));
}

#[test]
fn killing_the_daemon_does_not_interrupt_traffic() {
    let Some(mut s) = setup("hr", 2, 2, &|_| String::new(), false) else {
        return;
    };
    let client = s.topo.client.name.clone();
    let ka = keepalive_client(&s.topo.client, 30);
    let loop_thread = thread::spawn(move || {
        let ns = Netns::attach(&client);
        let mut answers = Vec::new();
        for _ in 0..60 {
            answers.push(try_get(&ns, &format!("http://{VIP4}/")));
            thread::sleep(Duration::from_millis(25));
        }
        answers
    });
    thread::sleep(Duration::from_millis(600));
    s.daemon.kill();
    thread::sleep(Duration::from_millis(300));
    let socket = s.daemon.socket.clone();
    let config = s.topo.dir.join("foobar-lb.toml");
    s.daemon = Daemon::start_with(&s.topo.lb, &config, &socket, &[]).unwrap();
    let answers = loop_thread.join().unwrap();
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "requests failed across the restart: {failed:?}"
    );
    let web1 = answers
        .iter()
        .filter(|a| a.as_deref() == Ok("web1"))
        .count();
    assert!(
        web1.abs_diff(30) <= 2,
        "round robin went on: web1 answered {web1} of 60"
    );
    let (bodies, connects) = keepalive_result(ka);
    assert_eq!(connects, 1);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "kept its backend: {bodies:?}"
    );
    assert!(s
        .daemon
        .log_text()
        .contains("adopting the pinned data plane"));
    // Counters survived: the new daemon reports the flows of the old one too.
    let st = s.daemon.stats();
    assert!(
        st.services[0].counters.new_flows >= 61,
        "{:?}",
        st.services[0].counters
    );
}

fn scrape(lb: &Netns) -> String {
    let out = run(lb
        .cmd("curl")
        .args(["-sS", "--max-time", "2", "http://127.0.0.1:9641/metrics"]))
    .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[test]
fn metrics_follow_the_traffic() {
    let Some(s) = setup("me", 2, 2, &|_| String::new(), true) else {
        return;
    };
    for _ in 0..10 {
        get(&s.topo.client);
    }
    let m = scrape(&s.topo.lb);
    assert_eq!(
        metric(&m, "foobar_lb_service_new_flows_total{service=\"www\"}"),
        10.0
    );
    assert_eq!(
        metric(&m, "foobar_lb_backend_new_flows_total{service=\"www\",backend=\"10.111.0.11\",role=\"primary\"}"),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            "foobar_lb_backend_up{service=\"www\",backend=\"10.111.0.12\",role=\"primary\"}"
        ),
        1.0
    );
    assert!(metric(&m, "foobar_lb_verdict_packets_total{verdict=\"tx\"}") >= 10.0 * 5.0);
    let before = metric(&m, "foobar_lb_service_packets_total{service=\"www\"}");
    for _ in 0..4 {
        get(&s.topo.client);
    }
    let m = scrape(&s.topo.lb);
    assert_eq!(
        metric(&m, "foobar_lb_service_new_flows_total{service=\"www\"}"),
        14.0
    );
    assert!(metric(&m, "foobar_lb_service_packets_total{service=\"www\"}") > before);
    assert!(m.contains("foobar_lb_backend_check_latency_seconds"), "{m}");
    assert_eq!(http_get(&s.topo.lb, "/ready"), (200, "ready\n".into()));
    assert_eq!(http_get(&s.topo.lb, "/live"), (200, "live\n".into()));
    assert_eq!(http_get(&s.topo.lb, "/nothing-here").0, 404);
    promtool_check(&m);
}

/// The exposition passes Prometheus' own parser (`promtool check metrics`, Debian package
/// `prometheus`, installed by `cargo xtask test`); skipped with a note when promtool is absent.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("SKIPPED promtool check: no promtool on PATH (Debian package prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl` from the load balancer's namespace: (HTTP status, body); status 0 if no answer.
fn http_get(lb: &Netns, path: &str) -> (u16, String) {
    let out = run(lb.cmd("curl").args([
        "-sS",
        "--max-time",
        "2",
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:9641{path}"),
    ]));
    let Ok(out) = out else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Sets this process' soft limit on open files (the hard limit stays); returns the old one.
fn set_nofile_soft(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let old = lim.rlim_cur;
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: a valid rlimit; lowering or raising the soft limit up to the hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    old
}

#[test]
fn metrics_endpoint_survives_5000_idle_connections() {
    const IDLE: usize = 5000;
    // The daemon starts with the soft limit a service manager usually gives (1024; systemd's
    // hard limit is far higher), as it would in production; this process then needs room for
    // its own 5,000 sockets.
    let before = set_nofile_soft(1024);
    let s = setup("mi", 2, 2, &|_| String::new(), true);
    set_nofile_soft(before.max(IDLE as u64 + 1024));
    let Some(s) = s else { return };

    // A local user opens idle connections to the metrics port and keeps them (bounded: 300 ms
    // per connect, 30 s in all).
    let start = Instant::now();
    let conns = foobar_lb_tests::netns::in_netns(&s.topo.lb.name, || {
        let addr: std::net::SocketAddr = "127.0.0.1:9641".parse()?;
        let mut v = Vec::with_capacity(IDLE);
        // A connect that times out (accept queue full for a moment) is tried again.
        while v.len() < IDLE && start.elapsed() < Duration::from_secs(30) {
            if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                v.push(c);
            }
        }
        Ok(v)
    })
    .unwrap();
    let opened = conns.len();
    println!("idle connections: {opened} opened in {:?}", start.elapsed());
    // Several health-check intervals (200 ms, fall 2) with every connection held.
    thread::sleep(Duration::from_secs(2));

    // A scrape answers within a few seconds (connections beyond the server's cap were closed
    // at once; the ones it holds time out).
    let asked = Instant::now();
    let mut answered = None;
    while asked.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        let (code, body) = http_get(&s.topo.lb, "/metrics");
        if code == 200 && body.contains("foobar_lb_backend_up") {
            answered = Some((asked.elapsed(), t.elapsed()));
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (first, scrape) = answered.unwrap_or_else(|| {
        panic!(
            "no scrape answered within 8 s with {opened} idle connections:\n{}",
            s.daemon.log_text()
        )
    });
    println!("with {opened} idle connections: a scrape answered after {first:?} (that scrape took {scrape:?})");

    // Health checks kept running: every backend is still up...
    let st = s.daemon.stats();
    for b in &st.services[0].backends {
        assert_eq!(
            (b.health.as_str(), b.state.as_str()),
            ("up", "active"),
            "{b:?} with {opened} idle metrics connections:\n{}",
            s.daemon.log_text()
        );
    }
    // ...and a backend that fails is still noticed.
    s.topo.stop_web(1).unwrap();
    let stopped = Instant::now();
    loop {
        let st = s.daemon.stats();
        if backend(&st, "10.111.0.11").health == "down" {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "web1 stopped but still not down after 5 s: {:?}",
            backend(&st, "10.111.0.11")
        );
        thread::sleep(Duration::from_millis(50));
    }
    println!("web1 down after {:?}", stopped.elapsed());
    assert_eq!(opened, IDLE, "the listener stopped accepting connections");
    // The daemon raised its own soft limit to the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.daemon.pid())).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(files[3], files[4], "soft limit not raised: {limits}");
    drop(conns);
}

#[test]
fn bad_cli_input_is_refused_and_changes_nothing() {
    let Some(s) = setup("bi", 1, 1, &|_| String::new(), true) else {
        return;
    };
    let before = serde_json_string(&s.daemon);
    for (args, expect) in [
        (
            vec!["backend", "add", "nosuch", "10.111.0.50"],
            "unknown service",
        ),
        (
            vec!["backend", "drain", "www", "10.111.0.99"],
            "has no backend",
        ),
        (
            vec!["backend", "remove", "www", "10.111.0.99"],
            "has no backend",
        ),
        (
            vec!["backend", "add", "www", "not-an-ip"],
            "invalid IP address",
        ),
        (
            vec!["backend", "add", "www", "10.111.0.50", "--weight", "0"],
            "0 is not in 1..=256",
        ),
        (vec!["backend", "add", "www", "fd00::50"], "address family"),
        (vec!["backend", "add", "www", "10.111.0.11"], "listed twice"),
        (
            vec![
                "service",
                "add",
                "www",
                "--vip",
                "10.111.0.100",
                "--port",
                "80",
            ],
            "defined twice",
        ),
        (
            vec![
                "service",
                "add",
                "www2",
                "--vip",
                "10.111.0.100",
                "--port",
                "80",
            ],
            "already used",
        ),
        (vec!["service", "remove", "nosuch"], "unknown service"),
    ] {
        let out = s.daemon.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    assert_eq!(serde_json_string(&s.daemon), before, "state changed");
    // And a good change still works after all that.
    let out = s.daemon.cli(&[
        "service",
        "add",
        "alt",
        "--vip",
        "10.111.0.100",
        "--port",
        "8080",
        "--check",
        "none",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "service",
        "list",
        "--socket",
        s.daemon.socket.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.111.0.100:8080/tcp"));
}

/// The configuration part of the status (no counters), for before/after comparisons.
fn serde_json_string(d: &Daemon) -> String {
    let st = d.stats();
    st.services
        .iter()
        .map(|s| {
            let bs: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{}:{:?}:{}", b.address, b.role, b.weight))
                .collect();
            format!(
                "{}={}:{}/{}[{}]",
                s.name,
                s.vip,
                s.port,
                s.protocol,
                bs.join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn an_incompatible_pinned_data_plane_is_refused_with_the_fix() {
    let Some(mut s) = setup("ic", 1, 1, &|_| String::new(), false) else {
        return;
    };
    s.daemon.kill();
    let config = s.topo.dir.join("foobar-lb.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("\n[[service]]", "flow_table_size = 4096\n\n[[service]]", 1),
    )
    .unwrap();
    let err = run_refused(&s, &config);
    assert!(
        err.contains("flow_table_size is 4096") && err.contains("foobar-lb teardown"),
        "{err}"
    );
    // The old data plane is untouched and still forwarding.
    assert_eq!(get(&s.topo.client), "web1");
}

/// Runs a second daemon on the setup's pin directory, which must refuse to start; its stderr.
fn run_refused(s: &Setup, config: &std::path::Path) -> String {
    let out = s
        .topo
        .lb
        .cmd(foobar_lb_tests::daemon::bin().to_str().unwrap())
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the daemon started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_pinned_data_plane_of_another_layout_version_is_refused() {
    use aya::maps::{Array, Map, MapData};
    use foobar_lb_common::{registry::Meta, MAP_META};

    let Some(mut s) = setup("lv", 1, 1, &|_| String::new(), false) else {
        return;
    };
    s.daemon.kill();
    // What a daemon of another version would have left: same map sizes, other meaning.
    let pinned = MapData::from_pin(s.topo.pin_dir().join(MAP_META)).unwrap();
    let mut meta: Array<MapData, Meta> = Array::try_from(Map::Array(pinned)).unwrap();
    let other = Meta {
        layout_version: 999,
        _pad: 0,
    };
    meta.set(0, other, 0).unwrap();
    let config = s.topo.dir.join("foobar-lb.toml");
    let err = run_refused(&s, &config);
    assert!(
        err.contains("layout version 999") && err.contains("foobar-lb teardown"),
        "{err}"
    );
    // Refused before anything was written: the old data plane still forwards.
    assert_eq!(get(&s.topo.client), "web1");
}

/// A pin directory of this test under the tests' bpffs root (swept by `cargo xtask test` if
/// left over); whatever is pinned in it is removed on drop.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        PinDir(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/foobar-lb-test/{}",
            foobar_lb_tests::netns::unique_prefix(tag)
        )))
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for n in self.names() {
            let _ = std::fs::remove_file(self.0.join(n));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Pins a map that is not foobar-lb's, as another tool would.
fn pin_foreign_map(path: &std::path::Path) {
    use aya::maps::{Array, MapData};
    let map = Array::<MapData, u32>::create(1, 0).expect("create a map");
    map.pin(path).expect("pin it");
}

#[test]
fn teardown_removes_only_what_foobar_lb_pinned_and_refuses_other_directories() {
    use foobar_lb::dataplane::{Dataplane, LoadOptions};

    if !root_object_and_binary() {
        return;
    }
    // A foobar-lb data plane (this also mounts bpffs if needed), with another tool's map
    // pinned next to it.
    let ours = PinDir::new("td");
    let dp = Dataplane::load(&LoadOptions {
        flow_table_size: 4096,
        nat_table_size: 4096,
        pin_dir: Some(ours.0.clone()),
        sync: false,
    })
    .expect("load the data plane");
    drop(dp);
    pin_foreign_map(&ours.0.join("other_tool_map"));

    // Another tool's directory: its own map, and one that merely has a foobar-lb map's name.
    let foreign = PinDir::new("tf");
    std::fs::create_dir_all(&foreign.0).unwrap();
    pin_foreign_map(&foreign.0.join("other_tool_map"));
    pin_foreign_map(&foreign.0.join(foobar_lb_common::MAP_FLOWS));
    let before = foreign.names();
    let out = cli(&["teardown", "--pin-dir", foreign.0.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "teardown accepted a foreign directory"
    );
    assert!(
        err.contains("not a foobar-lb pin directory") && err.contains("nothing removed"),
        "{err}"
    );
    assert_eq!(foreign.names(), before, "a foreign pin was removed");

    let out = cli(&["teardown", "--pin-dir", ours.0.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("kept") && text.contains("other_tool_map"),
        "{text}"
    );
    assert_eq!(ours.names(), ["other_tool_map"]);
}

/// Waits for `child` to exit (bounded); kills it and returns None if it is still running.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_second_daemon_on_the_same_pin_dir_is_refused_whatever_its_socket() {
    let Some(s) = setup("lk", 1, 1, &|_| String::new(), true) else {
        return;
    };
    // Same interfaces and pin_dir, its own control socket, no metrics listener: nothing but
    // the pin directory is shared.
    let config = s.topo.dir.join("foobar-lb.toml");
    let other_socket = s.topo.dir.join("second.sock");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        &format!("control_socket = \"{}\"", s.daemon.socket.display()),
        &format!(
            "control_socket = \"{}\"\nmetrics_address = \"\"",
            other_socket.display()
        ),
        1,
    );
    let second = s.topo.dir.join("second.toml");
    std::fs::write(&second, text).unwrap();
    let log = s.topo.dir.join("second.log");
    let mut child = s
        .topo
        .lb
        .cmd(foobar_lb_tests::daemon::bin().to_str().unwrap())
        .args(["run", "--config"])
        .arg(&second)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(s.topo.dir.join("second.err")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let err = std::fs::read_to_string(s.topo.dir.join("second.err")).unwrap_or_default();
    assert!(
        status.is_some_and(|st| !st.success()),
        "a second daemon ran on the same pin_dir: {err}"
    );
    assert!(
        err.contains("in use by another foobar-lb daemon")
            && err.contains(&format!("pid {}", s.daemon.pid())),
        "{err}"
    );
    assert!(
        !other_socket.exists(),
        "the second daemon got as far as its socket"
    );
    // The first daemon and its data plane are untouched.
    assert_eq!(get(&s.topo.client), "web1");
    assert_eq!(
        s.daemon.stats().services.len(),
        2,
        "the first daemon still answers"
    );
}

#[test]
fn the_control_socket_is_private_bounded_in_time_and_opens_no_client_path() {
    use std::{
        io::{Read, Write},
        os::unix::{fs::PermissionsExt, net::UnixStream},
    };

    let Some(s) = setup("cs", 1, 1, &|_| String::new(), true) else {
        return;
    };
    let socket = &s.daemon.socket;
    let mode = std::fs::metadata(socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    let strays: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".foobar-lb-bind")
        })
        .collect();
    assert!(strays.is_empty(), "staging directory left: {strays:?}");

    // A client that connects and sends nothing blocks no one, and is dropped in bounded time.
    let mut idle = UnixStream::connect(socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(s.daemon.stats().services.len(), 2);
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle
        .read(&mut buf)
        .expect("the daemon never closed an idle connection");
    assert_eq!(n, 0);
    assert!(start.elapsed() < Duration::from_secs(15));

    // A request naming a FIFO (the old fw_load wire format) must not make the daemon open it:
    // opening a FIFO with no writer would block its main loop.
    let fifo = s.topo.dir.join("blocklist.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    writeln!(conn, r#"{{"cmd":"fw_load","path":"{}"}}"#, fifo.display()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .expect("no answer to a fw_load naming a FIFO");
    assert!(answer.contains("\"ok\":false"), "{answer}");
    assert_eq!(
        s.daemon.stats().services.len(),
        2,
        "the daemon still answers"
    );

    // `fw load FILE` sends the file's contents; a relative path works from anywhere.
    let list = s.topo.dir.join("blocked.txt");
    std::fs::write(&list, "198.51.100.0/24\n2001:db8::/32 # doc\n").unwrap();
    let out = foobar_lb_tests::daemon::cli_in(
        &s.topo.dir,
        &[
            "fw",
            "load",
            "blocked.txt",
            "--socket",
            socket.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 prefixes live"));
    assert_eq!(s.daemon.stats().firewall.blocklist_prefixes, 2);
}

#[test]
fn the_cli_gives_up_on_a_daemon_that_never_answers() {
    if !foobar_lb_tests::binary() {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "{}-files",
        foobar_lb_tests::netns::unique_prefix("to")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("stuck.sock");
    // Accepts connections and never reads or answers.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(1) {
            conns.push(c);
        }
        thread::sleep(Duration::from_secs(15));
    });
    let mut child = std::process::Command::new(foobar_lb_tests::daemon::bin())
        .args([
            "status",
            "--timeout",
            "1",
            "--socket",
            socket.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.is_some_and(|st| !st.success()),
        "status waited for a stuck daemon: {err}"
    );
    assert!(err.contains("did not answer within 1 s"), "{err}");
    drop(held);
}

/// Health checks that watch a separate endpoint (port 8081): stopping it marks a backend down
/// while its web server (port 80) keeps serving the connections it has.
const HEALTH_8081: &str = "[service.health]\ncheck = \"http\"\nport = 8081\ninterval_ms = 200\n\
     timeout_ms = 150\nrise = 2\nfall = 2\n";

/// Which of the two web servers holds the keep-alive client's connection: the one with an
/// open flow (bounded wait).
fn keepalive_holder(daemon: &Daemon) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let st = daemon.stats();
        if let Some(i) = (1..=2).find(|&i| backend(&st, &web4(i)).flows == 1) {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no flow for the keep-alive client"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// New connections all go to the web server other than `holder`, while the keep-alive client
/// keeps its one connection on `holder` to the end.
fn new_flows_elsewhere_connection_kept(s: &Setup, ka: std::process::Child, holder: usize) {
    let other = format!("web{}", 3 - holder);
    for _ in 0..6 {
        assert_eq!(get(&s.topo.client), other);
    }
    let (bodies, connects) = keepalive_result(ka);
    assert_eq!(connects, 1, "the connection was not moved or reset");
    assert!(
        bodies.iter().all(|b| *b == format!("web{holder}")),
        "it stayed on its backend: {bodies:?}"
    );
}

/// Sets up two webs whose checks watch port 8081, a keep-alive connection on one of them, and
/// marks that one down. Returns (setup, keep-alive client, its backend's index).
fn mark_down_under_a_connection(
    tag: &str,
    extra: &str,
) -> Option<(Setup, std::process::Child, usize)> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, 2).expect("topology");
    for i in 1..=2 {
        topo.start_web(i).unwrap();
        topo.start_nginx(topo.web(i), &format!("chk{i}"), 8081)
            .unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_config_with(
            "generic",
            &socket,
            &format!("{HEALTH_8081}{extra}"),
            &|_| String::new(),
            2,
        )
        .unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let ka = keepalive_client(&topo.client, 40);
    // Which backend holds the connection: the one with an open flow (bounded wait).
    let holder = keepalive_holder(&daemon);
    let pid = std::fs::read_to_string(topo.dir.join(format!("chk{holder}.pid"))).unwrap();
    run(std::process::Command::new("kill").arg(pid.trim())).unwrap();
    let s = Setup { daemon, topo };
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend(&s.daemon.stats(), &web4(holder)).health != "down" {
        assert!(
            Instant::now() < deadline,
            "backend {holder} never marked down"
        );
        thread::sleep(Duration::from_millis(50));
    }
    Some((s, ka, holder))
}

#[test]
fn a_backend_marked_down_keeps_its_established_connections() {
    let Some((s, ka, holder)) = mark_down_under_a_connection("dk", "") else {
        return;
    };
    let st = s.daemon.stats();
    assert_eq!(backend(&st, &web4(holder)).state, "draining");
    // New connections go to the other backend only.
    new_flows_elsewhere_connection_kept(&s, ka, holder);
}

#[test]
fn shutdown_sessions_moves_the_connections_of_a_backend_marked_down() {
    let Some((s, ka, holder)) =
        mark_down_under_a_connection("ds", "on_marked_down = \"shutdown-sessions\"\n")
    else {
        return;
    };
    let st = s.daemon.stats();
    assert_eq!(backend(&st, &web4(holder)).state, "down");
    // Its flow moved: the other web server, which does not know the connection, resets it.
    let out = ka.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Each transfer prints its body and its new connections: more than one, or a failure.
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let connects: u32 = tokens
        .chunks(2)
        .filter_map(|p| p.get(1)?.parse::<u32>().ok())
        .sum();
    assert!(
        !out.status.success() || connects > 1,
        "the connection survived on its backend: {text}"
    );
}

#[test]
fn backend_set_changes_weight_and_role_without_moving_connections() {
    let Some(s) = setup("bs", 2, 2, &|_| String::new(), true) else {
        return;
    };
    let ka = keepalive_client(&s.topo.client, 30);
    let holder = keepalive_holder(&s.daemon);
    let addr = web4(holder);
    let out = s
        .daemon
        .cli(&["backend", "set", "www", &addr, "--weight", "3"]);
    assert!(out.status.success(), "{out:?}");
    let out = s
        .daemon
        .cli(&["backend", "set", "www", &addr, "--role", "backup"]);
    assert!(out.status.success(), "{out:?}");
    // Refused changes say why and change nothing.
    let out = s
        .daemon
        .cli(&["backend", "set", "www", "10.111.0.99", "--weight", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no backend"));
    let out = s.daemon.cli(&["backend", "set", "www", &addr]);
    assert!(!out.status.success());
    let b = backend(&s.daemon.stats(), &addr).clone();
    assert_eq!((b.weight, b.role), (3, foobar_lb::config::Role::Backup));
    // The other backend is the healthy primary now: every new connection goes there.
    new_flows_elsewhere_connection_kept(&s, ka, holder);
}

/// Starts nginx in web `i` on 8081 whose `/health` answers 503 while `<dir>/maint<i>` exists
/// (an application that announces a graceful shutdown), 200 otherwise.
fn start_health_endpoint(topo: &Topology, i: usize) -> std::path::PathBuf {
    let maint = topo.dir.join(format!("maint{i}"));
    let conf = topo.dir.join(format!("health{i}.conf"));
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\npid {dir}/health{i}.pid;\nerror_log {dir}/health{i}.err;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off;\n  server {{ listen 8081;\n    location = /health {{\n      \
             if (-f {maint}) {{ return 503; }}\n      return 200 \"ok\\n\";\n    }}\n  }}\n}}\n",
            dir = topo.dir.display(),
            maint = maint.display()
        ),
    )
    .unwrap();
    run(topo.web(i).cmd("nginx").args(["-c"]).arg(&conf)).unwrap();
    maint
}

#[test]
fn a_503_from_the_check_marks_the_backend_down_and_names_the_status() {
    if !root_object_and_binary() {
        return;
    }
    let topo = Topology::new("53", 2).expect("topology");
    let mut maint = Vec::new();
    for i in 1..=2 {
        topo.start_web(i).unwrap();
        maint.push(start_health_endpoint(&topo, i));
    }
    let socket = topo.dir.join("control.sock");
    let health = HEALTH_8081.replace("check = \"http\"", "check = \"http\"\npath = \"/health\"");
    let config = topo
        .write_config_with("generic", &socket, &health, &|_| String::new(), 2)
        .unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let s = Setup { daemon, topo };
    std::fs::write(&maint[0], "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend(&s.daemon.stats(), &web4(1)).health != "down" {
        assert!(Instant::now() < deadline, "a 503 never marked web1 down");
        thread::sleep(Duration::from_millis(50));
    }
    let st = s.daemon.stats();
    let w1 = backend(&st, &web4(1));
    assert!(
        w1.last_error.as_deref().unwrap_or("").contains("503"),
        "the status is shown: {w1:?}"
    );
    assert_eq!(backend(&st, &web4(2)).health, "up");
    for _ in 0..6 {
        assert_eq!(get(&s.topo.client), "web2");
    }
    // The application is back: 200 again brings web1 up and into rotation.
    std::fs::remove_file(&maint[0]).unwrap();
    wait_for_answer(&s.topo.client, "web1", Duration::from_secs(10));
}
