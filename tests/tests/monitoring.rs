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
