//! End to end in network namespaces: the demo topology with real nginx and curl, the real
//! controller binary, in both attach modes. Every loop is bounded; every namespace is removed by
//! its guard on every exit path.

use std::{collections::HashMap, process::Command};

use foobar_lb_tests::{
    daemon::{cli, Daemon},
    netns::{run, Netns, Topology, LB4, VIP4, VIP6},
    root_object_and_binary,
};

struct Setup {
    daemon: Daemon,
    // Drop order: the daemon first, then the pass program, then the namespaces.
    _pass: foobar_lb::dataplane::AuxProgram,
    topo: Topology,
}

/// None: skipped (no root or no XDP object outside `cargo xtask test`).
fn setup(tag: &str, mode: &str) -> Option<Setup> {
    if !root_object_and_binary() {
        return None;
    }
    let topo = Topology::new(tag, 2).expect("topology");
    topo.start_web(1).unwrap();
    topo.start_web(2).unwrap();
    let pass = topo.attach_lb_peer_pass().unwrap();
    let socket = topo.dir.join("control.sock");
    let config = topo.write_config(mode, &socket).unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    Some(Setup {
        daemon,
        _pass: pass,
        topo,
    })
}

/// One HTTP GET from the client namespace on a new connection; the body, trimmed.
fn get(client: &Netns, url: &str) -> String {
    let out = run(client
        .cmd("curl")
        .args(["-sS", "-g", "--max-time", "3", url]))
    .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn tally(client: &Netns, url: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(get(client, url)).or_default() += 1;
    }
    seen
}

fn assert_even(seen: &HashMap<String, usize>, n: usize) {
    for web in ["web1", "web2"] {
        let got = seen.get(web).copied().unwrap_or(0);
        assert!(
            got.abs_diff(n / 2) <= 1,
            "{web} answered {got} of {n}: {seen:?}"
        );
    }
    assert_eq!(
        seen.values().sum::<usize>(),
        n,
        "unexpected answers: {seen:?}"
    );
}

fn round_robin(mode: &str, tag: &str) {
    let Some(s) = setup(tag, mode) else {
        return;
    };
    let n = 20;
    let seen = tally(&s.topo.client, &format!("http://{VIP4}/"), n);
    assert_even(&seen, n);
    let seen6 = tally(&s.topo.client, &format!("http://[{VIP6}]/"), 10);
    assert_even(&seen6, 10);
    let st = s.daemon.stats();
    let www = st.services.iter().find(|x| x.name == "www").unwrap();
    assert_eq!(www.counters.new_flows, n as u64);
    for b in &www.backends {
        assert_eq!(b.counters.new_flows, n as u64 / 2, "{b:?}");
    }
    let tx = st.verdict("tx");
    assert!(tx >= www.counters.packets, "tx {tx} < www packets");
    assert!(
        s.daemon.log_text().contains(&format!("in {mode}")),
        "daemon should say which mode is in use:\n{}",
        s.daemon.log_text()
    );
}

#[test]
fn round_robin_over_real_nginx_generic_mode() {
    round_robin("generic", "rg");
}

#[test]
fn round_robin_over_real_nginx_native_mode() {
    round_robin("native", "rn");
}

#[test]
fn keepalive_transfer_stays_on_one_backend() {
    let Some(s) = setup("ka", "generic") else {
        return;
    };
    let before = s.daemon.stats();
    // Ten 1 MiB downloads, then the name page, all on one connection.
    let mut cmd = s.topo.client.cmd("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "%{num_connects} %{http_code}\n",
    ]);
    for _ in 0..10 {
        cmd.args(["-o", "/dev/null", &format!("http://{VIP4}/big")]);
    }
    cmd.arg(format!("http://{VIP4}/"));
    let out = String::from_utf8(run(&mut cmd).unwrap().stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    // 10 status lines for /big, then the body ("webN") and its status line.
    assert_eq!(lines.len(), 12, "{out}");
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(c, code)| {
            assert_eq!(code, "200", "{out}");
            c.parse::<u32>().unwrap()
        })
        .sum();
    assert_eq!(connects, 1, "all transfers on one connection: {out}");
    let served_by = lines[10];
    let other = if served_by == "web1" { 1 } else { 0 };
    let after = s.daemon.stats();
    let www = |st: &foobar_lb::api::StatsSnapshot| {
        st.services
            .iter()
            .find(|x| x.name == "www")
            .unwrap()
            .clone()
    };
    let (b, a) = (www(&before), www(&after));
    assert_eq!(a.counters.new_flows - b.counters.new_flows, 1);
    // Thousands of ACKs went through, all to the same backend.
    assert!(a.counters.packets - b.counters.packets > 100, "{a:?}");
    assert_eq!(
        a.backends[other].counters.packets, b.backends[other].counters.packets,
        "the other backend saw packets of this connection"
    );
}

#[test]
fn traffic_not_for_a_service_reaches_the_lb_host() {
    let Some(s) = setup("px", "generic") else {
        return;
    };
    s.topo.start_nginx(&s.topo.lb, "lb", 8080).unwrap();
    assert_eq!(get(&s.topo.client, &format!("http://{LB4}:8080/")), "lb");
    // The VIP on a port that is not a service: the LB's own stack answers.
    assert_eq!(get(&s.topo.client, &format!("http://{VIP4}:8080/")), "lb");
    run(s.topo.client.cmd("ping").args(["-c", "1", "-W", "2", VIP4])).unwrap();
    let st = s.daemon.stats();
    assert!(st.verdict("pass") > 0);
    let www = st.services.iter().find(|x| x.name == "www").unwrap();
    assert_eq!(www.counters.packets, 0, "nothing was balanced");
}

#[test]
fn daemon_detaches_on_sigterm_and_namespaces_are_removed() {
    let Some(mut s) = setup("cl", "generic") else {
        return;
    };
    let names: Vec<String> = [&s.topo.client, &s.topo.lb, &s.topo.bridge]
        .iter()
        .map(|n| n.name.clone())
        .chain(s.topo.webs.iter().map(|n| n.name.clone()))
        .collect();
    assert!(
        s.daemon.stop(),
        "clean exit on SIGTERM:\n{}",
        s.daemon.log_text()
    );
    let link = run(s.topo.lb.cmd("ip").args(["link", "show", "eth0"])).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "still attached: {link}");
    // With the program gone, the VIP is the LB's own address: its stack answers (RST), no web.
    let out = s
        .topo
        .client
        .cmd("curl")
        .args(["-s", "--max-time", "2", &format!("http://{VIP4}/")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(s);
    assert_namespaces_gone(&names);
}

/// None of `names` is still listed by `ip netns`.
fn assert_namespaces_gone(names: &[String]) {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    for n in names {
        assert!(!list.contains(n.as_str()), "{n} left behind");
    }
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !root_object_and_binary() {
        return;
    }
    let mut names = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::new("pn", 1).unwrap();
        names.push(topo.client.name.clone());
        names.push(topo.bridge.name.clone());
        panic!("deliberate");
    }));
    assert!(r.is_err());
    assert_eq!(names.len(), 2);
    assert_namespaces_gone(&names);
}

#[test]
fn bad_config_and_unknown_interface_are_refused_and_nothing_is_attached() {
    if !root_object_and_binary() {
        return;
    }
    let topo = Topology::new("bc", 1).unwrap();
    let socket = topo.dir.join("control.sock");
    let good = topo.write_config("generic", &socket).unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    for (name, bad, expect) in [
        (
            "unknown interface",
            text.replace("[\"eth0\"]", "[\"nope0\"]"),
            "unknown interface",
        ),
        (
            "bad address",
            text.replace("10.111.0.11", "10.111.0.311"),
            "invalid IP address",
        ),
        (
            "syntax",
            text.replace("port = 80", "port = "),
            "invalid config",
        ),
    ] {
        let path = topo.dir.join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        let out = topo
            .lb
            .cmd(foobar_lb_tests::daemon::bin().to_str().unwrap())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(err.contains(expect), "{name}: {err}");
        let link = run(topo.lb.cmd("ip").args(["link", "show", "eth0"])).unwrap();
        assert!(
            !String::from_utf8_lossy(&link.stdout).contains("xdp"),
            "{name}: attached"
        );
    }
}

#[test]
fn stats_without_a_daemon_says_so() {
    if !foobar_lb_tests::binary() {
        return;
    }
    let out = cli(&["stats", "--socket", "/nonexistent/foobar-lb.sock"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is it running"), "{err}");
}

#[test]
fn leftovers_of_a_killed_run_are_swept_and_nothing_else() {
    use foobar_lb_tests::netns::{sweep_leftovers, Netns, TEST_PIN_ROOT};

    if !root_object_and_binary() {
        return;
    }
    // A pid that no longer runs stands for the killed run.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = format!("flsw{}x0", gone.id());
    let live = foobar_lb_tests::netns::unique_prefix("sw");
    let ns_dead = Netns::new(&format!("{dead}lb")).unwrap();
    let ns_live = Netns::new(&format!("{live}lb")).unwrap();
    // Something still running in the dead run's namespace, as nginx would be.
    let mut sleeper = ns_dead.cmd("sleep").arg("60").spawn().unwrap();
    let pins_dead = std::path::PathBuf::from(format!("{TEST_PIN_ROOT}/{dead}"));
    let files_dead = std::env::temp_dir().join(format!("{dead}-files"));
    let files_live = std::env::temp_dir().join(format!("{live}-files"));
    let other = std::env::temp_dir().join(format!("{dead}-notours"));
    for d in [&files_dead, &files_live, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    let pinned = std::fs::create_dir_all(&pins_dead).is_ok();
    let ns_dead = std::mem::ManuallyDrop::new(ns_dead);

    let swept = sweep_leftovers().join("\n");
    let list = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let exited = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        matches!(sleeper.try_wait(), Ok(Some(_)))
    });
    // Clean up whatever the sweep missed before asserting.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    if list.contains(&format!("{dead}lb")) {
        drop(std::mem::ManuallyDrop::into_inner(ns_dead));
    }
    let _ = std::fs::remove_dir(&pins_dead);
    let _ = std::fs::remove_dir_all(&files_dead);
    let _ = std::fs::remove_dir_all(&files_live);
    let _ = std::fs::remove_dir_all(&other);
    drop(ns_live);

    assert!(
        swept.contains(&format!("network namespace {dead}lb")),
        "{swept}"
    );
    assert!(!list.contains(&format!("{dead}lb")), "{list}");
    assert!(exited, "the process in the swept namespace still runs");
    assert!(
        list.contains(&format!("{live}lb")),
        "a live run's namespace was swept"
    );
    assert!(swept.contains(&files_dead.display().to_string()), "{swept}");
    if pinned {
        assert!(swept.contains(&pins_dead.display().to_string()), "{swept}");
    }
    assert!(
        !swept.contains(&live),
        "a live run's leftovers were swept: {swept}"
    );
    assert!(!swept.contains("-notours"), "{swept}");
}
