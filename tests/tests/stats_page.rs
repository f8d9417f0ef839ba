//! The stats page in a real browser: headless Chromium (Debian package `chromium`) loads it
//! from a running daemon in the test topology; the rendered values follow the traffic, a
//! screenshot is kept (`target/test-artifacts/stats-page.png`), and changes from the page need
//! the admin token.

use std::{path::PathBuf, process::Output};

use foobar_lb_tests::{
    daemon::Daemon,
    netns::{web4, Netns, Topology, VIP4},
    root_object_and_binary,
    traffic::try_get,
};

const TOKEN: &str = "test-admin-token-0123456789";

/// Chromium, headless, in `ns`, with what keeps it off the network it does not need.
fn chromium(ns: &Netns, profile: &std::path::Path, args: &[&str]) -> Output {
    ns.cmd("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (Debian package chromium; `cargo xtask test` installs it)")
}

/// The rendered page's "new flows N" for `service`.
fn rendered_new_flows(dom: &str, service: &str) -> Option<u64> {
    let tag = format!("data-service=\"{service}\" data-field=\"new_flows\">new flows ");
    let at = dom.find(&tag)? + tag.len();
    dom[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let out = ns
        .cmd("curl")
        .args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_stats_page_renders_live_values_in_chromium_and_changes_need_the_token() {
    if !root_object_and_binary() {
        return;
    }
    let topo = Topology::new("sp", 2).expect("topology");
    for i in 1..=2 {
        topo.start_web(i).unwrap();
    }
    let socket = topo.dir.join("control.sock");
    let config = topo.write_config("generic", &socket).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("admin_token = \"{TOKEN}\"\n{text}")).unwrap();
    let daemon = Daemon::start(&topo.lb, &config, &socket).unwrap();
    for _ in 0..10 {
        try_get(&topo.client, &format!("http://{VIP4}/")).expect("a request");
    }
    let profile = topo.dir.join("chromium");
    let url = "http://127.0.0.1:9641/";
    let dom = |n: u64| {
        let out = chromium(&topo.lb, &profile, &["--dump-dom", url]);
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            rendered_new_flows(&dom, "www"),
            Some(n),
            "the page does not show {n} new flows for www:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            &dom[..dom.len().min(3000)]
        );
        dom
    };
    let first = dom(10);
    assert!(first.contains(&format!("data-backend=\"{}\"", web4(1))));
    // The balancer holds the VIPs on its interface (as a pair's active node does).
    assert!(
        first.contains(&format!("node: holds {VIP4}")),
        "the page does not show the VIPs held"
    );
    for _ in 0..6 {
        try_get(&topo.client, &format!("http://{VIP4}/")).expect("a request");
    }
    dom(16);

    // The screenshot, kept for README and as the test's artifact.
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("stats-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &topo.lb,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            url,
        ],
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    // Changes: refused without the token, made with it (and validated like any change).
    let api = "http://127.0.0.1:9641/api/backend";
    let drain = format!(
        "{{\"service\":\"www\",\"address\":\"{}\",\"action\":\"drain\"}}",
        web4(1)
    );
    let post = |auth: &str, body: &str| {
        curl(
            &topo.lb,
            &[
                "-X",
                "POST",
                "-H",
                auth,
                "-H",
                "Content-Type: application/json",
                "--data",
                body,
                api,
            ],
        )
    };
    assert_eq!(
        post("Authorization: Bearer wrong-token-0123456", &drain).0,
        401
    );
    assert!(!daemon.stats().services[0].backends[0].drained);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (code, body) = post(&bearer, &drain);
    assert_eq!(code, 200, "{body}");
    assert!(daemon.stats().services[0].backends[0].drained);
    let weight = format!(
        "{{\"service\":\"www\",\"address\":\"{}\",\"action\":\"weight\",\"weight\":999}}",
        web4(2)
    );
    let (code, body) = post(&bearer, &weight);
    assert_eq!(code, 422, "an out-of-range weight is refused: {body}");
    assert!(body.contains("weight"), "{body}");
    assert_eq!(post(&bearer, "{\"service\":\"www\"}").0, 400);
}
