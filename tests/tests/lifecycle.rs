//! The daemon's life around the data plane: listeners bound before XDP is attached, interfaces
//! followed as the configuration and the devices change, SIGHUP reloads, config-dump keeping
//! every runtime change (a block list loaded at run time too), rules that would drop health
//! check replies, JSON logs, `stats --rate` and `status --watch`. Loops are bounded;
//! namespaces, processes and pins are removed by guards.

use std::{
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use foobar_lb_tests::{
    daemon::{bin, Daemon},
    netns::{run, web4, Netns, Topology, CLIENT4, VIP4},
    root_object_and_binary,
    traffic::{keepalive_client, keepalive_result, try_get},
};

const HEALTH: &str =
    "[service.health]\ncheck = \"http\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n";

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

/// [`topology`] with a daemon config over its first `backends` web servers (HTTP checks every
/// 200 ms): (topology, control socket, config file).
fn with_config(tag: &str, webs: usize, backends: usize) -> Option<(Topology, PathBuf, PathBuf)> {
    let topo = topology(tag, webs)?;
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_config_with("generic", &socket, HEALTH, &|_| String::new(), backends)
        .unwrap();
    Some((topo, socket, config))
}

/// Whether an XDP program is attached to `dev` in `ns`.
fn has_xdp(ns: &Netns, dev: &str) -> bool {
    let out = ns.ip(&["-d", "link", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Polls `cond` every 100 ms until it holds (true) or `limit` passes (false).
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    cond()
}

fn get(topo: &Topology) -> Result<String, String> {
    try_get(&topo.client, &format!("http://{VIP4}/"))
}

#[test]
fn a_control_socket_that_cannot_be_bound_stops_the_start_before_xdp_is_attached() {
    let Some(topo) = topology("sb", 1) else {
        return;
    };
    // The socket's directory would be under a regular file: binding must fail.
    let blocker = topo.dir.join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let socket = blocker.join("control.sock");
    let config = topo
        .write_config_with("generic", &socket, HEALTH, &|_| String::new(), 1)
        .unwrap();
    let out = topo
        .lb
        .cmd(bin().to_str().unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon started");
    assert!(err.contains("not-a-dir"), "the error names the path: {err}");
    assert!(
        !has_xdp(&topo.lb, "eth0"),
        "XDP was attached by a daemon that could not serve its control socket"
    );
    assert!(
        !topo.pin_dir().join("link-eth0").exists(),
        "an attachment was pinned"
    );
}

/// Another interface on the load balancer: one end of a veth pair whose ends both stay in
/// its namespace (this kernel has no dummy devices; generic XDP runs on any device).
fn add_iface(topo: &Topology, name: &str) {
    let peer = format!("{name}p");
    topo.lb
        .ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])
        .unwrap();
    for dev in [name, peer.as_str()] {
        topo.lb.ip(&["link", "set", dev, "up"]).unwrap();
    }
}

#[test]
fn an_interface_dropped_from_the_config_is_detached_on_restart_and_on_reload() {
    let Some(topo) = topology("if", 2) else {
        return;
    };
    add_iface(&topo, "extra0");
    add_iface(&topo, "extra1");
    let socket = topo.dir.join("control.sock");
    let config = topo
        .write_config_with("generic", &socket, HEALTH, &|_| String::new(), 2)
        .unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let with = |ifaces: &str| {
        std::fs::write(
            &config,
            text.replace(
                "interfaces = [\"eth0\"]",
                &format!("interfaces = [{ifaces}]"),
            ),
        )
        .unwrap()
    };
    with("\"eth0\", \"extra0\", \"extra1\"");
    let mut daemon = Daemon::start_with(&topo.lb, &config, &socket, &[]).unwrap();
    assert!(has_xdp(&topo.lb, "extra0") && has_xdp(&topo.lb, "extra1"));

    // Restart (SIGKILL, adopt) with extra0 gone from the configuration.
    daemon.kill();
    with("\"eth0\", \"extra1\"");
    let mut daemon = Daemon::start_with(&topo.lb, &config, &socket, &[]).unwrap();
    assert!(
        !has_xdp(&topo.lb, "extra0"),
        "extra0 still runs the program"
    );
    assert!(!topo.pin_dir().join("link-extra0").exists());
    assert!(has_xdp(&topo.lb, "extra1") && has_xdp(&topo.lb, "eth0"));
    assert!(get(&topo).is_ok_and(|b| b.starts_with("web")));

    // A reload that drops extra1 and adds extra0 again.
    with("\"eth0\", \"extra0\"");
    let out = daemon.cli(&["reload"]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        msg.contains("interface extra0 added") && msg.contains("interface extra1 removed"),
        "{msg}"
    );
    assert!(
        !has_xdp(&topo.lb, "extra1"),
        "extra1 still runs the program"
    );
    assert!(has_xdp(&topo.lb, "extra0"));
    assert!(get(&topo).is_ok_and(|b| b.starts_with("web")));
    assert!(daemon.stop());
}

#[test]
fn a_device_deleted_and_created_again_gets_the_program_again_and_is_balanced() {
    let Some((topo, socket, config)) = with_config("rc", 2, 2) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    assert!(get(&topo).is_ok_and(|b| b.starts_with("web")));
    topo.recreate_lb_eth0().unwrap();
    // No web server runs on the load balancer: only XDP, forwarding to the backends, answers.
    assert!(
        eventually(Duration::from_secs(15), || has_xdp(&topo.lb, "eth0")),
        "the program was not attached to the new eth0:\n{}",
        daemon.log_text()
    );
    let before = daemon.stats().services[0].counters.new_flows;
    let mut answers = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            if let Ok(b) = get(&topo) {
                answers.push(b);
            }
            answers.len() >= 4
        }),
        "the VIP did not answer through the new device:\n{}",
        daemon.log_text()
    );
    assert!(
        answers.contains(&"web1".into()) && answers.contains(&"web2".into()),
        "{answers:?}"
    );
    assert!(daemon.stats().services[0].counters.new_flows >= before + 4);
    assert!(daemon.log_text().contains("eth0 is a new device"));
}

#[test]
fn sighup_applies_the_config_file_as_a_difference_and_refuses_a_bad_one_whole() {
    let Some((topo, socket, config)) = with_config("hu", 3, 2) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let ka = keepalive_client(&topo.client, 40);
    thread::sleep(Duration::from_millis(500));

    // The file gains web3 and a firewall rule, and web1 a weight.
    let text = std::fs::read_to_string(&config).unwrap();
    let web3 = format!("\n[[service.backend]]\naddress = \"{}\"\n", web4(3));
    let edited =
        text.replacen(
            &format!("address = \"{}\"", web4(1)),
            &format!("address = \"{}\"\nweight = 2", web4(1)),
            1,
        )
        .replacen(
            "\n[[service]]\nname = \"www6\"",
            &format!("{web3}\n[[service]]\nname = \"www6\""),
            1,
        ) + "\n[[firewall.rule]]\naction = \"drop\"\nprotocol = \"udp\"\nport = \"9\"\n";
    std::fs::write(&config, &edited).unwrap();
    run(Command::new("kill").args(["-HUP", &daemon.pid().to_string()])).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || daemon
            .log_text()
            .contains("SIGHUP: reloaded")),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    for want in [
        format!("backend {} of www added", web4(3)),
        format!("backend {} of www: weight 1 -> 2", web4(1)),
        "firewall rules changed (0 -> 1)".into(),
    ] {
        assert!(log.contains(&want), "the log does not say {want:?}:\n{log}");
    }
    // web3 serves once its checks pass; the keep-alive connection never moved.
    assert!(
        eventually(Duration::from_secs(10), || get(&topo).as_deref()
            == Ok("web3")),
        "web3 never served"
    );
    let (bodies, connects) = keepalive_result(ka);
    assert_eq!(
        connects, 1,
        "the reload moved or reset a connection: {bodies:?}"
    );

    // A file that does not parse, then one that changes a start-only field: refused whole.
    let dumped = daemon.cli(&["config-dump"]).stdout;
    std::fs::write(&config, edited.replace("weight = 2", "weight = \"two\"")).unwrap();
    run(Command::new("kill").args(["-HUP", &daemon.pid().to_string()])).unwrap();
    assert!(eventually(Duration::from_secs(10), || daemon
        .log_text()
        .contains("SIGHUP: reload of")));
    std::fs::write(
        &config,
        edited.replacen("\n[[service]]", "flow_table_size = 4096\n\n[[service]]", 1),
    )
    .unwrap();
    let out = daemon.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("flow_table_size") && err.contains("restart"),
        "{err}"
    );
    assert_eq!(
        daemon.cli(&["config-dump"]).stdout,
        dumped,
        "a refused reload changed the config"
    );
    assert!(get(&topo).is_ok_and(|b| b.starts_with("web")));
}

#[test]
fn a_block_list_loaded_at_run_time_survives_config_dump_and_restart() {
    let Some((topo, socket, config)) = with_config("bl", 1, 1) else {
        return;
    };
    let mut daemon = Daemon::start_with(&topo.lb, &config, &socket, &[]).unwrap();
    assert_eq!(get(&topo).as_deref(), Ok("web1"));
    let list = topo.dir.join("blocked.txt");
    std::fs::write(
        &list,
        format!("# the test client\n{CLIENT4}\n2001:db8::/32\n"),
    )
    .unwrap();
    let out = daemon.cli(&["fw", "load", list.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(get(&topo).is_err(), "a blocked client got an answer");

    // The persistence procedure: dump, restart from the dump.
    let dump = daemon.cli(&["config-dump"]).stdout;
    let saved = topo.dir.join("saved.toml");
    std::fs::write(&saved, &dump).unwrap();
    let text = String::from_utf8_lossy(&dump);
    assert!(text.contains(&format!("{CLIENT4}/32")), "{text}");
    std::fs::remove_file(&list).unwrap();
    daemon.kill();
    let daemon = Daemon::start(&topo.lb, &saved, &socket).unwrap();
    assert_eq!(daemon.stats().firewall.blocklist_prefixes, 2);
    assert!(
        get(&topo).is_err(),
        "the restarted daemon forgot the block list"
    );
}

#[test]
fn a_rule_that_drops_health_check_replies_is_reported_with_the_fix() {
    let Some((topo, socket, config)) = with_config("hr", 2, 2) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    // A rule meant for clients that also covers web1's replies to the balancer's checks.
    let web1 = web4(1);
    let out = daemon.cli(&[
        "fw",
        "add",
        "--action",
        "drop",
        "--source",
        &format!("{web1}/32"),
    ]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        msg.contains("warning: firewall rule 1")
            && msg.contains("health-check replies from 1 backend(s) of service www")
            && msg.contains(&format!("--source {web1}")),
        "{msg}"
    );
    // What the warning says happens: checks take web1 down, so only web2 serves.
    assert!(
        eventually(Duration::from_secs(10), || {
            let st = daemon.stats();
            st.services[0]
                .backends
                .iter()
                .any(|b| b.address == web1 && b.health == "down")
        }),
        "web1 stayed up behind a rule dropping its replies"
    );
    // The fix it names: an allow rule first. No new warning; web1 comes back.
    let out = daemon.cli(&[
        "fw",
        "add",
        "--action",
        "allow",
        "--source",
        &web1,
        "--protocol",
        "tcp",
        "--position",
        "1",
    ]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !msg.contains("warning"), "{msg}");
    assert!(eventually(Duration::from_secs(10), || {
        let st = daemon.stats();
        st.services[0]
            .backends
            .iter()
            .any(|b| b.address == web1 && b.health == "up")
    }));

    // check-config reports it for a file too (and still accepts the file).
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[[firewall.rule]]\naction = \"drop\"\nsource = \"10.111.0.0/24\"\n"),
    )
    .unwrap();
    let out = topo
        .lb
        .cmd(bin().to_str().unwrap())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: firewall rule 1") && err.contains("2 backend(s) of service www"),
        "{err}"
    );
}

/// Runs a CLI command against `daemon`, failing the test with its stderr if refused.
fn ok(daemon: &Daemon, args: &[&str]) {
    let out = daemon.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_dump_keeps_every_runtime_change_and_a_restart_from_it_writes_nothing() {
    let Some((topo, socket, config)) = with_config("cd", 3, 2) else {
        return;
    };
    let mut daemon = Daemon::start_with(&topo.lb, &config, &socket, &[]).unwrap();
    let (w1, w2, w3) = (web4(1), web4(2), web4(3));
    // One change of every kind the API offers.
    ok(&daemon, &["backend", "add", "www", &w3, "--weight", "5"]);
    ok(&daemon, &["backend", "set", "www", &w2, "--role", "backup"]);
    ok(&daemon, &["backend", "set", "www", &w1, "--weight", "7"]);
    ok(&daemon, &["backend", "drain", "www", &w1]);
    ok(
        &daemon,
        &[
            "service",
            "add",
            "alt",
            "--vip",
            VIP4,
            "--port",
            "8080",
            "--check",
            "none",
            "--scheduler",
            "maglev",
            "--maglev-table-size",
            "4093",
        ],
    );
    ok(&daemon, &["backend", "add", "alt", &w2]);
    ok(
        &daemon,
        &[
            "fw",
            "add",
            "--action",
            "drop",
            "--protocol",
            "udp",
            "--port",
            "9",
        ],
    );
    let list = topo.dir.join("blocked.txt");
    std::fs::write(&list, "198.51.100.0/24\n2001:db8::/32\n").unwrap();
    ok(&daemon, &["fw", "load", list.to_str().unwrap()]);

    let dump = daemon.cli(&["config-dump"]).stdout;
    let saved = topo.dir.join("saved.toml");
    std::fs::write(&saved, &dump).unwrap();
    let parsed = foobar_lb::config::Config::parse(&String::from_utf8_lossy(&dump)).unwrap();
    let www = &parsed.services[0];
    let b = |a: &str| {
        www.backends
            .iter()
            .find(|b| b.address.to_string() == a)
            .unwrap()
    };
    assert!(b(&w1).drained && b(&w1).weight == 7);
    assert_eq!(b(&w2).role, foobar_lb::config::Role::Backup);
    assert_eq!(b(&w3).weight, 5);
    assert!(parsed.services.iter().any(|s| s.name == "alt"
        && s.port == 8080
        && s.scheduler() == foobar_lb::schedule::Scheduler::Maglev { table_size: 4093 }));
    assert_eq!(parsed.firewall.rules.len(), 1);
    assert_eq!(parsed.firewall.block.len(), 2);

    // Restarting from the dump over the running data plane: the same configuration, and not
    // one map write, since nothing differs from what the data plane holds.
    daemon.kill();
    std::fs::remove_file(&list).unwrap();
    let daemon = Daemon::start_with(&topo.lb, &saved, &socket, &[]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&daemon.cli(&["config-dump"]).stdout),
        String::from_utf8_lossy(&dump),
        "the restarted daemon's configuration differs from the dump it started from"
    );
    let st = daemon.stats();
    assert_eq!(
        st.map_writes, 0,
        "the restart rewrote what the dump already held"
    );
    assert_eq!(st.firewall.blocklist_prefixes, 2);
}

#[test]
fn a_reload_that_changes_health_settings_restarts_the_checks_with_them() {
    let Some((topo, socket, config)) = with_config("rh", 2, 2) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let health = |d: &Daemon| -> Vec<String> {
        d.stats().services[0]
            .backends
            .iter()
            .map(|b| b.health.clone())
            .collect()
    };
    assert_eq!(health(&daemon), ["up", "up"]);
    // The checks now ask for a page nginx does not have: 404, both backends go down.
    std::fs::write(
        &config,
        text.replace("check = \"http\"", "check = \"http\"\npath = \"/missing\""),
    )
    .unwrap();
    let out = daemon.cli(&["reload"]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("service www settings changed"), "{msg}");
    assert!(
        eventually(Duration::from_secs(10), || health(&daemon)
            == ["down", "down"]),
        "the checks kept their old settings: {:?}",
        health(&daemon)
    );
    // And back.
    std::fs::write(&config, &text).unwrap();
    ok(&daemon, &["reload"]);
    assert!(eventually(Duration::from_secs(10), || health(&daemon) == ["up", "up"]));
}

#[test]
fn json_logs_carry_the_fields_an_operator_filters_on() {
    let Some((topo, socket, config)) = with_config("jl", 2, 2) else {
        return;
    };
    let daemon = Daemon::start_with(
        &topo.lb,
        &config,
        &socket,
        &["--detach-on-exit", "--log-format", "json"],
    )
    .unwrap();
    ok(&daemon, &["backend", "drain", "www", &web4(2)]);
    topo.stop_web(1).unwrap();
    let events = || -> Vec<serde_json::Value> {
        daemon
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let down = |evs: &[serde_json::Value]| {
        // web1's nginx serves www and www6: the www event.
        evs.iter()
            .find(|e| e["event"] == "health" && e["state"] == "down" && e["service"] == "www")
            .cloned()
    };
    assert!(
        eventually(Duration::from_secs(10), || down(&events()).is_some()),
        "no health event:\n{}",
        daemon.log_text()
    );
    let evs = events();
    let d = down(&evs).unwrap();
    assert_eq!(d["service"], "www");
    assert_eq!(d["backend"], web4(1));
    assert_eq!(d["level"], "WARN");
    assert!(
        d["reason"].as_str().unwrap_or("").contains("refused"),
        "{d}"
    );
    let api = evs
        .iter()
        .find(|e| e["event"] == "api")
        .expect("an api event");
    assert!(
        api["change"]
            .as_str()
            .unwrap_or("")
            .contains("drained backend"),
        "{api}"
    );
    // Every log line is JSON; only the daemon's own stdout notices are not.
    let text = daemon.log_text();
    for l in text.lines().filter(|l| !l.starts_with("foobar-lb:")) {
        assert!(l.starts_with('{'), "a log line that is not JSON: {l}");
    }
}

#[test]
fn stats_rate_and_status_watch_follow_the_traffic() {
    let Some((topo, socket, config)) = with_config("sr", 2, 2) else {
        return;
    };
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let ka = keepalive_client(&topo.client, 40);
    thread::sleep(Duration::from_millis(300));
    let out = daemon.cli(&["stats", "--rate", "--interval", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let www = &r["services"][0];
    assert_eq!(www["name"], "www");
    // 10 requests/s on one connection: a few packets per request, all on one backend.
    let pps = www["packets"].as_f64().unwrap();
    assert!(pps >= 5.0, "{r}");
    let busy: Vec<f64> = www["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[1].as_f64().unwrap())
        .collect();
    assert_eq!(busy.iter().filter(|p| **p > 0.0).count(), 1, "{r}");
    assert!(
        r["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v[0] == "tx"),
        "{r}"
    );
    let out = daemon.cli(&[
        "status",
        "--watch",
        "--count",
        "3",
        "--interval",
        "0.2",
        "--json",
    ]);
    assert!(out.status.success());
    let lines: Vec<&[u8]> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in lines {
        let s: foobar_lb::api::StatsSnapshot = serde_json::from_slice(l).unwrap();
        assert_eq!(s.services.len(), 2);
    }
    keepalive_result(ka);
}
