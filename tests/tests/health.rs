//! Health checks end to end: the real controller checking real nginx servers in network
//! namespaces, and what the checks' outcomes do to new flows (backup failover, weights).
//! Every wait is for a condition, bounded by a generous deadline; namespaces, nginx and the
//! daemon are removed by their guards on every exit path.

use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use foobar_lb::api::{BackendStats, StatsSnapshot};
use foobar_lb_tests::{
    daemon::Daemon,
    mariadb::MariaDb,
    netns::{run, web4, web6, Netns, Topology, CLIENT4, LB4, LB6, VIP4, VIP6},
    root_object_and_binary,
    traffic::try_get_within,
};

/// Server name the checked nginx answers for.
const NAME: &str = "www.example";

/// A topology with `webs` web servers (nginx answering `web<i>` on port 80) and no daemon yet.
fn topology(tag: &str, webs: usize) -> Option<Topology> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, webs).expect("topology");
    for i in 1..=webs {
        topo.start_web(i).unwrap();
    }
    Some(topo)
}

/// Starts the daemon in the load balancer with `services` (TOML `[[service]]` tables).
fn start_daemon(topo: &Topology, services: &str) -> Daemon {
    let socket = topo.dir.join("control.sock");
    let text = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"generic\"\ncontrol_socket = \"{}\"\n\
         pin_dir = \"{}\"\nmetrics_address = \"\"\n{services}",
        socket.display(),
        topo.pin_dir().display()
    );
    let config = topo.dir.join("foobar-lb.toml");
    fs::write(&config, text).unwrap();
    Daemon::start(&topo.lb, &config, &socket).unwrap()
}

/// A second nginx in `ns` for checks only (`checks-<i>`, files in the topology's directory):
/// - 443: TLS; a handshake without the server name `www.example` is rejected;
/// - 8081: 200 on /health for `Host: www.example`, 421 for any other Host;
/// - 8082: 200 on /health, and logs each request's source address and Host header to
///   `checks-<i>.log`.
fn start_check_server(topo: &Topology, ns: &Netns, i: usize) -> PathBuf {
    let dir = &topo.dir;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        run(std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={NAME}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert))
        .unwrap();
    }
    let log = dir.join(format!("checks-{i}.log"));
    let conf = dir.join(format!("checks-{i}.conf"));
    let d = dir.display();
    fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\npid {d}/checks-{i}.pid;\nerror_log {d}/checks-{i}.err;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  log_format seen '$remote_addr $http_host';\n\
               server {{ listen 443 ssl default_server; listen [::]:443 ssl default_server;\n\
                 ssl_reject_handshake on; }}\n\
               server {{ listen 443 ssl; listen [::]:443 ssl; server_name {NAME};\n\
                 ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 location = /health {{ return 200 \"ok\\n\"; }} }}\n\
               server {{ listen 8081 default_server; listen [::]:8081 default_server; return 421; }}\n\
               server {{ listen 8081; listen [::]:8081; server_name {NAME};\n\
                 location = /health {{ return 200 \"ok\\n\"; }} }}\n\
               server {{ listen 8082; listen [::]:8082; access_log {log} seen;\n\
                 location = /health {{ return 200 \"ok\\n\"; }} }}\n\
             }}\n",
            cert = cert.display(),
            key = key.display(),
            log = log.display(),
        ),
    )
    .unwrap();
    run(ns.cmd("nginx").arg("-c").arg(&conf)).unwrap();
    log
}

fn backend<'a>(st: &'a StatsSnapshot, service: &str, addr: &str) -> &'a BackendStats {
    st.services
        .iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no service {service}"))
        .backends
        .iter()
        .find(|b| b.address == addr)
        .unwrap_or_else(|| panic!("no backend {addr} in {service}"))
}

/// Waits until every `(service, address)` shows health `want` (20 s at most); the stats then.
fn wait_health(d: &Daemon, backends: &[(&str, &str)], want: &str) -> StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = d.stats();
        if backends
            .iter()
            .all(|(s, a)| backend(&st, s, a).health == want)
        {
            return st;
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = backends
                .iter()
                .map(|(s, a)| {
                    let b = backend(&st, s, a);
                    format!("{s}/{a}: {} ({:?})", b.health, b.last_error)
                })
                .collect();
            panic!("not all {want} within 20 s: {seen:?}\n{}", d.log_text());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A `[[service]]` table with one backend and a `[service.health]` table holding `health`,
/// and fast checks (300 ms, rise 1, fall 1) unless `health` sets its own timing.
fn service(name: &str, vip: &str, port: u16, backend: &str, health: &str) -> String {
    let timing = if health.contains("interval_ms") {
        ""
    } else {
        "interval_ms = 300\ntimeout_ms = 250\nrise = 1\nfall = 1\n"
    };
    format!(
        "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\n\
         [service.health]\n{timing}{health}\n[[service.backend]]\naddress = \"{backend}\"\n"
    )
}

#[test]
fn tls_and_https_checks_send_the_server_name_and_http_checks_the_host() {
    let Some(topo) = topology("hs", 1) else {
        return;
    };
    start_check_server(&topo, topo.web(1), 1);
    let w1 = web4(1);
    let services = [
        // The server name set, or taken from `host`: the named server answers.
        service(
            "tls-sni",
            VIP4,
            80,
            &w1,
            "check = \"tls\"\nport = 443\nsni = \"www.example\"",
        ),
        service(
            "https-host",
            VIP4,
            81,
            &w1,
            "check = \"https\"\nport = 443\npath = \"/health\"\nhost = \"www.example\"",
        ),
        // No server name: the handshake is rejected.
        service("tls-none", VIP4, 82, &w1, "check = \"tls\"\nport = 443"),
        // Plain HTTP: the configured Host reaches the named server, the default does not.
        service(
            "http-host",
            VIP4,
            83,
            &w1,
            "check = \"http\"\nport = 8081\npath = \"/health\"\nhost = \"www.example\"",
        ),
        service(
            "http-default",
            VIP4,
            84,
            &w1,
            "check = \"http\"\nport = 8081\npath = \"/health\"",
        ),
    ]
    .concat();
    let d = start_daemon(&topo, &services);
    wait_health(
        &d,
        &[("tls-sni", &w1), ("https-host", &w1), ("http-host", &w1)],
        "up",
    );
    let st = wait_health(&d, &[("tls-none", &w1), ("http-default", &w1)], "down");
    let err = |s| backend(&st, s, &w1).last_error.clone().unwrap_or_default();
    assert!(
        err("tls-none").starts_with("TLS handshake"),
        "{}",
        err("tls-none")
    );
    assert_eq!(err("http-default"), "status 421");
}

#[test]
fn ipv6_http_checks_send_the_backend_address_in_brackets_as_host() {
    let Some(topo) = topology("hv", 1) else {
        return;
    };
    let log = start_check_server(&topo, topo.web(1), 1);
    let w6 = web6(1);
    let services = [
        service(
            "v6",
            VIP6,
            80,
            &w6,
            "check = \"http\"\nport = 8082\npath = \"/health\"",
        ),
        service("v6-80", VIP6, 81, &w6, "check = \"http\"\nport = 80"),
    ]
    .concat();
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("v6", &w6), ("v6-80", &w6)], "up");
    let seen = fs::read_to_string(&log).unwrap();
    // Not the VIP, not an unbracketed address; the port given as 8082 is not http's default.
    assert!(
        seen.lines().any(|l| l == format!("{LB6} [{w6}]:8082")),
        "no check with Host [{w6}]:8082:\n{seen}"
    );
    assert!(
        seen.lines().all(|l| l.ends_with(&format!(" [{w6}]:8082"))),
        "a check with another Host:\n{seen}"
    );
}

#[test]
fn link_local_ipv6_backends_are_checked_through_their_interface() {
    let Some(topo) = topology("hl", 1) else {
        return;
    };
    let log = start_check_server(&topo, topo.web(1), 1);
    // Link-local addresses that are usable at once (no duplicate address detection).
    topo.web(1)
        .ip(&["addr", "add", "fe80::11/64", "dev", "eth0", "nodad"])
        .unwrap();
    topo.lb
        .ip(&["addr", "add", "fe80::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    let services = service(
        "v6-ll",
        VIP6,
        80,
        "fe80::11",
        "check = \"http\"\nport = 8082\npath = \"/health\"\ninterface = \"eth0\"",
    );
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("v6-ll", "fe80::11")], "up");
    let seen = fs::read_to_string(&log).unwrap();
    assert!(
        seen.lines()
            .any(|l| l.starts_with("fe80:") && l.ends_with(" [fe80::11]:8082")),
        "no link-local check:\n{seen}"
    );
}

/// A check target in `ns` on `port` run by this test: it records when each connection
/// arrives, then answers its request with `code()` after `delay`, one connection at a time.
struct Recorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u16)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    fn start(ns: &Netns, port: u16, delay: Duration) -> Recorder {
        use std::{
            io::{Read, Write},
            sync::{atomic::Ordering, Arc, Mutex},
        };
        // A socket made in the namespace stays there; this process does not move.
        let l = foobar_lb_tests::netns::in_netns(&ns.name, || {
            Ok(std::net::TcpListener::bind(("0.0.0.0", port))?)
        })
        .unwrap();
        l.set_nonblocking(true).unwrap();
        let r = Recorder {
            seen: Arc::new(Mutex::new(Vec::new())),
            stop: Default::default(),
            fail: Default::default(),
        };
        let (seen, stop, fail) = (r.seen.clone(), r.stop.clone(), r.fail.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let code = if fail.load(Ordering::Relaxed) {
                    503
                } else {
                    200
                };
                seen.lock().unwrap().push((Instant::now(), code));
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                thread::sleep(delay);
                let _ = s.write_all(format!("HTTP/1.0 {code} X\r\n\r\n").as_bytes());
            }
        });
        r
    }

    fn set_failing(&self) {
        self.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn seen(&self) -> Vec<(Instant, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn gaps_ms(seen: &[(Instant, u16)]) -> Vec<u64> {
    seen.windows(2)
        .map(|w| (w[1].0 - w[0].0).as_millis() as u64)
        .collect()
}

#[test]
fn checks_start_every_interval_however_long_they_take() {
    let Some(topo) = topology("hd", 1) else {
        return;
    };
    // Every check takes 250 ms (the answer's delay) of its 300 ms timeout.
    let rec = Recorder::start(topo.web(1), 8090, Duration::from_millis(250));
    let services = service(
        "slow",
        VIP4,
        80,
        &web4(1),
        "check = \"http\"\nport = 8090\ninterval_ms = 400\ntimeout_ms = 300\nrise = 1\nfall = 1",
    );
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("slow", &web4(1))], "up");
    thread::sleep(Duration::from_secs(4));
    let gaps = gaps_ms(&rec.seen());
    let mean = gaps.iter().sum::<u64>() / gaps.len().max(1) as u64;
    // Start to start: 400 ms (±10% jitter); after the end would be 650 ms. The upper bound
    // leaves room for a loaded machine's scheduling delays and still tells the two apart.
    assert!(gaps.len() >= 8, "{gaps:?}");
    assert!((340..=560).contains(&mean), "mean gap {mean} ms: {gaps:?}");
}

#[test]
fn fastinter_in_transition_and_downinter_while_down() {
    let Some(topo) = topology("hf", 1) else {
        return;
    };
    let rec = Recorder::start(topo.web(1), 8090, Duration::ZERO);
    let services = service(
        "fd",
        VIP4,
        80,
        &web4(1),
        "check = \"http\"\nport = 8090\ninterval_ms = 1000\nfastinter_ms = 200\n\
         downinter_ms = 2500\ntimeout_ms = 150\nrise = 2\nfall = 3",
    );
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("fd", &web4(1))], "up");
    thread::sleep(Duration::from_millis(2500));
    rec.set_failing();
    wait_health(&d, &[("fd", &web4(1))], "down");
    thread::sleep(Duration::from_millis(5500));
    let seen = rec.seen();
    let gaps = gaps_ms(&seen);
    let codes: Vec<u16> = seen.iter().map(|s| s.1).collect();
    let first_fail = codes
        .iter()
        .position(|&c| c == 503)
        .expect("a failing check");
    let show = format!("codes {codes:?}, gaps {gaps:?}");
    assert!(first_fail >= 3, "{show}");
    // Medians and relations rather than every gap, so one late check on a loaded machine
    // does not decide the outcome.
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    // Up: interval (1000 ms ±10%) after each success but the first (start-up round).
    let up = median(&gaps[1..first_fail]);
    assert!((850..=1400).contains(&up), "up: {show}");
    // The 1st and 2nd failures are a transition (fall 3): fastinter, 200 ms, far shorter.
    for g in &gaps[first_fail..first_fail + 2] {
        assert!(*g < up / 2, "in transition: {show}");
    }
    // The 3rd took it down: downinter, 2500 ms.
    assert!(gaps.len() >= first_fail + 4, "{show}");
    let down = median(&gaps[first_fail + 2..]);
    assert!((2150..=3200).contains(&down), "down: {show}");
}

#[test]
fn checks_use_the_source_address_and_a_foreign_one_never_takes_a_backend_down() {
    let Some(topo) = topology("hr", 1) else {
        return;
    };
    let log = start_check_server(&topo, topo.web(1), 1);
    topo.lb
        .ip(&["addr", "add", "10.111.0.3/24", "dev", "eth0", "nodad"])
        .unwrap();
    let w1 = web4(1);
    let health = "check = \"http\"\nport = 8082\npath = \"/health\"\nsource";
    let services = [
        service("src", VIP4, 80, &w1, &format!("{health} = \"10.111.0.3\"")),
        // Not an address of the load balancer: binding fails locally, every time.
        service(
            "src-foreign",
            VIP4,
            81,
            &w1,
            &format!("{health} = \"10.111.0.99\""),
        ),
    ]
    .concat();
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("src", &w1)], "up");
    // Many rounds (fall = 1) of local errors: never counted, so never down.
    thread::sleep(Duration::from_secs(2));
    let st = d.stats();
    let foreign = backend(&st, "src-foreign", &w1);
    assert_eq!(foreign.health, "unknown", "{foreign:?}");
    let err = foreign.last_error.clone().unwrap_or_default();
    assert!(
        err.starts_with("local error, not counted (bind source: "),
        "{err}"
    );
    let seen = fs::read_to_string(&log).unwrap();
    assert!(
        seen.lines().all(|l| l.starts_with("10.111.0.3 ")),
        "a check from another source:\n{seen}"
    );
    assert!(!seen.is_empty());
    assert_eq!(
        d.log_text()
            .matches("src-foreign/10.111.0.11: check not run")
            .count(),
        1,
        "logged once per run of local errors:\n{}",
        d.log_text()
    );
}

/// `n` GETs of the VIP from the client, each on a new connection; answers counted.
fn tally(client: &Netns, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let body = try_get_within(client, &format!("http://{VIP4}/"), 3)
            .unwrap_or_else(|e| format!("failed: {e}"));
        *seen.entry(body).or_default() += 1;
    }
    seen
}

/// Backends web1..=webN of one service `www` on the VIP, with `extra(i)` in backend i's table.
fn www(n: usize, service_extra: &str, extra: &dyn Fn(usize) -> &'static str) -> String {
    let mut s = format!(
        "\n[[service]]\nname = \"www\"\nvip = \"{VIP4}\"\nport = 80\n{service_extra}\n\
         [service.health]\ncheck = \"http\"\ninterval_ms = 300\ntimeout_ms = 250\nrise = 1\nfall = 1\n"
    );
    for i in 1..=n {
        s += &format!(
            "\n[[service.backend]]\naddress = \"{}\"\n{}\n",
            web4(i),
            extra(i)
        );
    }
    s
}

#[test]
fn failover_all_spreads_new_flows_over_every_healthy_backup() {
    let Some(topo) = topology("ha", 3) else {
        return;
    };
    // The primary is down from the start; both backups are healthy.
    topo.stop_web(1).unwrap();
    let services = www(3, "failover = \"all\"", &|i| {
        if i == 1 {
            ""
        } else {
            "role = \"backup\""
        }
    });
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("www", &web4(1))], "down");
    wait_health(&d, &[("www", &web4(2)), ("www", &web4(3))], "up");
    let n = 20;
    let seen = tally(&topo.client, n);
    for web in ["web2", "web3"] {
        let got = seen.get(web).copied().unwrap_or(0);
        assert!(got.abs_diff(n / 2) <= 1, "{web}: {got} of {n}: {seen:?}");
    }
    assert_eq!(seen.values().sum::<usize>(), n, "{seen:?}");
}

#[test]
fn a_weight_3_backend_gets_three_times_the_new_flows_of_a_weight_1_backend() {
    let Some(topo) = topology("hw", 2) else {
        return;
    };
    let services = www(2, "", &|i| if i == 1 { "weight = 3" } else { "" });
    let d = start_daemon(&topo, &services);
    wait_health(&d, &[("www", &web4(1)), ("www", &web4(2))], "up");
    let n = 40;
    let seen = tally(&topo.client, n);
    let (w1, w2) = (
        seen.get("web1").copied().unwrap_or(0),
        seen.get("web2").copied().unwrap_or(0),
    );
    assert_eq!(w1 + w2, n, "{seen:?}");
    // Weighted round-robin: 3 of every 4 new flows, give or take the cursor's start.
    assert!(w1.abs_diff(30) <= 2 && w2.abs_diff(10) <= 2, "{seen:?}");
    let st = d.stats();
    let flows = |a: &str| backend(&st, "www", a).counters.new_flows as usize;
    assert_eq!(
        (flows(&web4(1)), flows(&web4(2))),
        (w1, w2),
        "the data plane's counters agree"
    );
}

/// MariaDB in web server `i` on its address, port 3306, with `extra` server options; the
/// check user `haproxy_check` (no password, no privileges) created. Its `/etc/hosts` names
/// the load balancer, so MariaDB keeps per-host error counts for it (see tests/src/mariadb.rs).
fn start_mariadb(topo: &Topology, i: usize, extra: &[&str]) -> MariaDb {
    let db = MariaDb::start(
        topo.web(i),
        &topo.dir.join(format!("db{i}")),
        &web4(i),
        3306,
        extra,
        &[(LB4, "lb"), (CLIENT4, "client"), (&web4(i), "db")],
    )
    .expect("start MariaDB");
    db.sql("CREATE USER 'haproxy_check'@'%'").unwrap();
    db
}

/// `foobar-lb status --json` of `d`.
fn status(d: &Daemon) -> StatsSnapshot {
    let out = d.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Waits until `status --json` shows `(address, health, state)` for every backend of
/// `service` in `want` (20 s at most); the snapshot then.
fn wait_status(d: &Daemon, service: &str, want: &[(&str, &str, &str)]) -> StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(d);
        let seen: Vec<(String, String, String, Option<String>)> = want
            .iter()
            .map(|(a, _, _)| {
                let b = backend(&st, service, a);
                (
                    a.to_string(),
                    b.health.clone(),
                    b.state.clone(),
                    b.last_error.clone(),
                )
            })
            .collect();
        if seen.iter().zip(want).all(|(s, w)| s.1 == w.1 && s.2 == w.2) {
            return st;
        }
        if Instant::now() > deadline {
            panic!(
                "{service}: wanted {want:?} within 20 s, saw {seen:?}\n{}",
                d.log_text()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's config with one service `db` on VIP4:3306 over web server 1 and `health`.
fn write_db_config(topo: &Topology, health: &str) -> PathBuf {
    let socket = topo.dir.join("control.sock");
    let text = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"generic\"\ncontrol_socket = \"{}\"\n\
         pin_dir = \"{}\"\nmetrics_address = \"\"\n\n[[service]]\nname = \"db\"\n\
         vip = \"{VIP4}\"\nport = 3306\n[service.health]\n{health}\n\
         [[service.backend]]\naddress = \"{}\"\n",
        socket.display(),
        topo.pin_dir().display(),
        web4(1),
    );
    let config = topo.dir.join("foobar-lb.toml");
    fs::write(&config, text).unwrap();
    config
}

#[test]
fn mysql_check_with_a_user_does_not_get_the_balancer_blocked_by_mariadb() {
    if !root_object_and_binary() {
        return;
    }
    let topo = Topology::new("hm", 1).expect("topology");
    let mut db = start_mariadb(&topo, 1, &["--max-connect-errors=5"]);
    let w1 = web4(1);
    // 5 checks a second: more than max_connect_errors within two seconds.
    let fast = "interval_ms = 200\ntimeout_ms = 150\nrise = 1\nfall = 1\ncheck = \"mysql\"";
    let with_user = format!("{fast}\nmysql_user = \"haproxy_check\"");
    let config = write_db_config(&topo, &with_user);
    let d = Daemon::start(&topo.lb, &config, &topo.dir.join("control.sock")).unwrap();
    wait_health(&d, &[("db", &w1)], "up");
    let aborted = db.status("Aborted_connects").unwrap();
    thread::sleep(Duration::from_secs(3));
    // Well over 10 checks: each logged in and quit, so none counts as an aborted connection,
    // the balancer is not blocked, and another client from its address still gets in.
    let st = wait_health(&d, &[("db", &w1)], "up");
    assert_eq!(backend(&st, "db", &w1).last_error, None);
    assert_eq!(db.status("Aborted_connects").unwrap(), aborted);
    let out = db.client(&topo.lb, "haproxy_check", "SELECT 1");
    assert!(
        out.status.success(),
        "a client from the balancer: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without mysql_user (reloaded: checks restart with the new settings) each check reads the
    // greeting and closes: MariaDB counts it as a connection error and after
    // max_connect_errors blocks the balancer's address, for every client there (HAProxy's
    // warning about mysql-check without a user).
    write_db_config(&topo, fast);
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let st = wait_health(&d, &[("db", &w1)], "down");
    let err = backend(&st, "db", &w1)
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!(
            "MySQL error 1129: Host '{LB4}' is blocked because of many connection errors"
        )),
        "{err}"
    );
    assert!(db.status("Aborted_connects").unwrap() >= aborted + 5);
    let out = db.client(&topo.lb, "haproxy_check", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1129"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With the user again and the block lifted, the backend comes back up.
    write_db_config(&topo, &with_user);
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    db.sql("FLUSH HOSTS").unwrap();
    wait_health(&d, &[("db", &w1)], "up");

    // The server stops: down, the connection refused.
    db.stop();
    assert!(!db.running());
    let st = wait_health(&d, &[("db", &w1)], "down");
    assert_eq!(
        backend(&st, "db", &w1).last_error.as_deref(),
        Some("connection refused")
    );
}

#[test]
fn external_check_makes_the_write_vip_follow_the_writable_mariadb() {
    if !root_object_and_binary() {
        return;
    }
    let topo = Topology::new("hx", 2).expect("topology");
    let db1 = start_mariadb(&topo, 1, &[]);
    let db2 = start_mariadb(&topo, 2, &[]);
    // The replica starts read-only.
    db2.sql("SET GLOBAL read_only = 1").unwrap();
    // Up only while the server at FOOBAR_LB_BACKEND_ADDR:FOOBAR_LB_BACKEND_PORT is writable.
    let script = topo.dir.join("db-writable");
    fs::write(
        &script,
        "#!/bin/sh\n\
         ro=$(mariadb --no-defaults --skip-ssl --connect-timeout=2 -h \"$FOOBAR_LB_BACKEND_ADDR\" \
         -P \"$FOOBAR_LB_BACKEND_PORT\" -u haproxy_check -N -B -e 'SELECT @@read_only' 2>&1) \
         || { echo \"cannot ask $FOOBAR_LB_BACKEND: $ro\" >&2; exit 2; }\n\
         [ \"$ro\" = 0 ] || { echo \"$FOOBAR_LB_BACKEND is read-only (read_only = $ro)\" >&2; exit 1; }\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let text = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"generic\"\ncontrol_socket = \"{}\"\n\
         pin_dir = \"{}\"\nmetrics_address = \"\"\n\n[[service]]\nname = \"db-write\"\n\
         vip = \"{VIP4}\"\nport = 3306\n[service.health]\ncheck = \"external\"\n\
         command = [\"{}\"]\ninterval_ms = 500\ntimeout_ms = 450\nrise = 1\nfall = 1\n\
         [[service.backend]]\naddress = \"{}\"\n\
         [[service.backend]]\naddress = \"{}\"\nrole = \"backup\"\n",
        socket.display(),
        topo.pin_dir().display(),
        script.display(),
        web4(1),
        web4(2),
    );
    let config = topo.dir.join("foobar-lb.toml");
    fs::write(&config, text).unwrap();
    let d = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let (w1, w2) = (web4(1), web4(2));
    // A backend marked down keeps its established connections (on_marked_down = "keep"):
    // the data plane shows it draining.
    let st = wait_status(
        &d,
        "db-write",
        &[(&w1, "up", "active"), (&w2, "down", "draining")],
    );
    assert_eq!(
        backend(&st, "db-write", &w2).last_error.as_deref(),
        Some(format!("command exited with status 1: {w2} is read-only (read_only = 1)").as_str())
    );
    // An operator promotes the replica: the write VIP follows.
    db1.sql("SET GLOBAL read_only = 1").unwrap();
    db2.sql("SET GLOBAL read_only = 0").unwrap();
    let st = wait_status(
        &d,
        "db-write",
        &[(&w1, "down", "draining"), (&w2, "up", "active")],
    );
    assert_eq!(
        backend(&st, "db-write", &w1).last_error.as_deref(),
        Some(format!("command exited with status 1: {w1} is read-only (read_only = 1)").as_str())
    );
    assert!(
        d.log_text().contains(&format!(
            "db-write/{w1} is DOWN (command exited with status 1"
        )),
        "{}",
        d.log_text()
    );
    // From the CLI: a program that is not there is refused; a mysql check with its user is
    // taken and kept by config-dump.
    let out = d.cli(&[
        "service",
        "add",
        "db-other",
        "--vip",
        VIP4,
        "--port",
        "3307",
        "--check",
        "external",
        "--check-command",
        "/nonexistent/db-writable",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("health command \"/nonexistent/db-writable\" cannot be used"),
        "{err}"
    );
    let out = d.cli(&[
        "service",
        "add",
        "db-read",
        "--vip",
        VIP4,
        "--port",
        "3308",
        "--check",
        "mysql",
        "--mysql-user",
        "haproxy_check",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&d.cli(&["config-dump"]).stdout).into_owned();
    assert!(
        dump.contains("check = \"mysql\"\n") && dump.contains("mysql_user = \"haproxy_check\"\n"),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("command = [\"{}\"]", script.display())),
        "{dump}"
    );
}

#[test]
fn check_config_refuses_an_external_check_whose_program_is_missing() {
    if !foobar_lb_tests::binary() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("foobar-lb-ext-cc-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("foobar-lb.toml");
    let write = |program: &str| {
        fs::write(
            &config,
            format!(
                "interfaces = [\"lo\"]\n[[service]]\nname = \"db\"\nvip = \"10.0.0.100\"\n\
                 port = 3306\nhealth = {{ check = \"external\", command = [\"{program}\", \"x\"] }}\n\
                 [[service.backend]]\naddress = \"10.0.0.11\"\n"
            ),
        )
        .unwrap()
    };
    write("/bin/true");
    let out = foobar_lb_tests::daemon::cli(&["check-config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write("/nonexistent/db-writable");
    let out = foobar_lb_tests::daemon::cli(&["check-config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    assert!(
        err.contains(
            "service \"db\": health command \"/nonexistent/db-writable\" cannot be used: No such \
             file or directory"
        ),
        "{err}"
    );
}
