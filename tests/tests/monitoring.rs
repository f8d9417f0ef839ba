//! The monitoring files shipped in `deploy/`: Prometheus alert rules (checked and unit-tested
//! by Prometheus' own `promtool`) and the Grafana dashboard, whose queries may only name
//! metrics foobar-lb exports.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Every `foobar_lb_*` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("foobar_lb_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The metric names of an exposition with a service, a backend, a rule and every verdict.
fn exported() -> BTreeSet<String> {
    let snapshot: foobar_lb::api::StatsSnapshot = serde_json::from_value(serde_json::json!({
        "verdicts": foobar_lb_common::verdict::NAMES.iter().map(|n| (n, 1)).collect::<Vec<_>>(),
        "flows": 1,
        "flow_table_entries": 1,
        "flow_table_size": 1024,
        "services": [{
            "name": "www", "vip": "10.0.0.100", "port": 80, "protocol": "tcp",
            "counters": {"packets": 1, "bytes": 1, "new_flows": 1},
            "backends": [{
                "address": "10.0.0.11", "role": "primary", "weight": 1, "mac": null,
                "health": "up", "last_error": null, "check_latency_ms": 1.0, "drained": false,
                "state": "active", "flows": 1,
                "counters": {"packets": 1, "bytes": 1, "new_flows": 1}
            }]
        }],
        "firewall": {"rules": [{"index": 1, "rule": "drop any", "packets": 1, "bytes": 1}],
                     "blocklist_prefixes": 1, "vip_policy_drop": []},
        "map_writes": 1
    }))
    .expect("a snapshot");
    let text = foobar_lb::metrics::render(&snapshot);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_and_the_alert_rules_name_only_metrics_foobar_lb_exports() {
    let exported = exported();
    assert!(exported.contains("foobar_lb_backend_up"), "{exported:?}");
    for file in [
        "grafana/foobar-lb-dashboard.json",
        "prometheus/foobar-lb-rules.yml",
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let named = names_in(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics foobar-lb does not export: {unknown:?}"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/foobar-lb-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for p in panels {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            p["title"]
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        assert!(
            std::env::var_os("FOOBAR_LB_BIN").is_none(),
            "promtool is missing (Debian package prometheus; `cargo xtask test` installs it)"
        );
        eprintln!("skipped: no promtool on PATH (Debian package prometheus)");
        return;
    };
    assert!(out.status.success());
    let dir = deploy("prometheus");
    for args in [
        ["check", "rules", "foobar-lb-rules.yml"],
        ["test", "rules", "foobar-lb-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A child process killed and reaped when this is dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Prometheus server (Debian package `prometheus`) in the load balancer's namespace,
/// scraping the daemon every second: its directory and process.
fn start_prometheus(topo: &foobar_lb_tests::netns::Topology) -> (PathBuf, Reaped) {
    let dir = topo.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: foobar-lb\n    static_configs:\n      - targets: ['127.0.0.1:9641']\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = topo
        .lb
        .cmd("prometheus")
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    (dir, Reaped(child))
}

/// `query` through Prometheus' HTTP API, from the load balancer's namespace: the result vector.
fn prom_query(topo: &foobar_lb_tests::netns::Topology, query: &str) -> Vec<serde_json::Value> {
    let out = topo
        .lb
        .cmd("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
        ])
        .arg("--data-urlencode")
        .arg(format!("query={query}"))
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_sees_the_traffic() {
    use foobar_lb_tests::{
        daemon::Daemon,
        netns::{Topology, VIP4},
        traffic::try_get,
    };
    use std::time::{Duration, Instant};
    if !foobar_lb_tests::root_object_and_binary() {
        return;
    }
    let topo = Topology::new("pm", 2).expect("topology");
    for i in 1..=2 {
        topo.start_web(i).unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let config = topo.write_config("generic", &socket).unwrap();
    let _daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    let (dir, _prometheus) = start_prometheus(&topo);
    for _ in 0..20 {
        try_get(&topo.client, &format!("http://{VIP4}/")).expect("a request");
    }
    // Prometheus has the series once it scraped after the traffic (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    let flows = loop {
        let r = prom_query(&topo, "foobar_lb_service_new_flows_total{service=\"www\"}");
        let v = r
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok());
        if v == Some(20.0) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw 20 new flows (last {r:?}); its log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(flows[0]["metric"]["job"], "foobar-lb");
    // Per backend: round robin split the 20 flows 10/10.
    let per_backend = prom_query(&topo, "foobar_lb_backend_new_flows_total{service=\"www\"}");
    let counts: Vec<String> = per_backend
        .iter()
        .filter_map(|s| s["value"][1].as_str().map(str::to_string))
        .collect();
    assert_eq!(counts, ["10", "10"], "{per_backend:?}");
    // The scrape target is healthy in Prometheus' own view.
    let up = prom_query(&topo, "up{job=\"foobar-lb\"}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
}
