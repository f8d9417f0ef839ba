//! The user's journey through the running site (`cargo xtask run --check`, tests/tests/site.rs):
//! each step prints its outcome and timing; the first failure ends the journey with an error.
//!
//! Clients are curl processes in the client namespace, a new connection (and TLS handshake)
//! per request, as a browser's first visit; HTTPS is verified against the demo CA.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::{pki::SITE_NAME, Site, DB_WRITE_VIP, OPS4, WEB_VIP};
use crate::netns::{web4, Netns};

/// One HTTP(S) request from namespace `ns` to www.foobar.com (resolved to the VIP).
struct Answer {
    code: u16,
    body: String,
    redirect: String,
}

fn request(
    ns: &str,
    ca: Option<&PathBuf>,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<Answer> {
    let ns = Netns::attach(ns);
    let mut cmd = ns.cmd("curl");
    cmd.args(["-sS", "-m", "15", "-X", method])
        .args(["--resolve", &format!("{SITE_NAME}:443:{WEB_VIP}")])
        .args(["--resolve", &format!("{SITE_NAME}:80:{WEB_VIP}")])
        .args(["-w", "\n%{http_code} %{redirect_url}"]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.arg(url).output().context("cannot run curl")?;
    if !out.status.success() {
        bail!(
            "curl {url}: exit {}: {}",
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, redirect) = last.split_once(' ').unwrap_or((last, ""));
    Ok(Answer {
        code: code.parse().unwrap_or(0),
        body: body.to_owned(),
        redirect: redirect.to_owned(),
    })
}

/// GET `path` over HTTPS: the JSON answer, failing on anything but 200.
fn get_json(site: &Site, path: &str) -> Result<serde_json::Value> {
    json_of(request(
        &site.client().name,
        Some(&site.pki.ca),
        "GET",
        &format!("https://{SITE_NAME}{path}"),
        None,
    )?)
}

fn post_json(site: &Site, path: &str, body: &str) -> Result<serde_json::Value> {
    json_of(request(
        &site.client().name,
        Some(&site.pki.ca),
        "POST",
        &format!("https://{SITE_NAME}{path}"),
        Some(body),
    )?)
}

fn json_of(a: Answer) -> Result<serde_json::Value> {
    ensure!(a.code == 200, "HTTP {}: {}", a.code, a.body.trim());
    serde_json::from_str(&a.body).with_context(|| format!("not JSON: {}", a.body))
}

/// Requests running in the background: GET `path` every `every`, each outcome recorded (the
/// serving web server, or the error) with its time.
struct Load {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Load {
    fn start(site: &Site, path: &str, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, ca, url) = (
            site.client().name.clone(),
            site.pki.ca.clone(),
            format!("https://{SITE_NAME}{path}"),
        );
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Bounded: at most 10 minutes of requests.
            let until = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::SeqCst) && Instant::now() < until {
                let at = Instant::now();
                let outcome = request(&ns, Some(&ca), "GET", &url, None)
                    .and_then(json_of)
                    .map(|v| v["web"].as_str().unwrap_or("?").to_owned())
                    .map_err(|e| format!("{e:#}"));
                seen.push((at, outcome));
                std::thread::sleep(every.saturating_sub(at.elapsed()));
            }
            seen
        });
        Load { stop, handle }
    }

    fn finish(self) -> Vec<(Instant, Result<String, String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("load thread")
    }
}

/// Failed requests of a load run, as one line each.
fn failures(seen: &[(Instant, Result<String, String>)]) -> Vec<String> {
    seen.iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect()
}

fn count(seen: &[(Instant, Result<String, String>)], web: &str) -> usize {
    seen.iter().filter(|(_, r)| r.as_deref() == Ok(web)).count()
}

/// Polls `f` every 200 ms until it answers true (bounded by `within`).
fn wait(what: &str, within: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn verdict(site: &Site, node: usize, name: &str) -> Result<u64> {
    Ok(site
        .stats(node)?
        .verdicts
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(0))
}

fn health(site: &Site, node: usize, service: &str, addr: &str) -> Result<(String, String)> {
    let s = site.stats(node)?;
    let b = s
        .services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.backends.iter().find(|b| b.address == addr))
        .with_context(|| format!("no backend {addr} in service {service}"))?;
    Ok((b.health.clone(), b.state.clone()))
}

type Step = fn(&mut Site) -> Result<String>;

/// Walks the journey: each step prints `check N/M <what> ... ok (T s): details`, or FAILED
/// with the reason, which ends the journey.
pub fn run(site: &mut Site, say: &dyn Fn(&str)) -> Result<()> {
    let steps: &[(&str, Step)] = &[
        ("HTTP redirects to HTTPS", redirect),
        (
            "HTTPS through the VIP, verified against the demo CA, spread over both servers",
            https_spread,
        ),
        (
            "a write through the app is read back through the read VIP from the replica",
            replicated_write,
        ),
        (
            "the firewall refuses the database from the client network and off-service ports",
            firewall,
        ),
        (
            "Prometheus scrapes both nodes; the stats page answers the monitoring host only",
            monitoring,
        ),
        (
            "stopping web1's nginx (drained first) moves new requests to web2, none fails",
            nginx_stop,
        ),
        (
            "promoting the replica and stopping the primary moves the write VIP",
            db_switchover,
        ),
        ("killing the active load balancer loses no request", lb_kill),
    ];
    let total = Instant::now();
    for (i, (what, step)) in steps.iter().enumerate() {
        let start = Instant::now();
        say(&format!("check {}/{} {what} ...", i + 1, steps.len()));
        match step(site) {
            Ok(detail) => say(&format!(
                "check {}/{} ok ({:.1} s): {detail}",
                i + 1,
                steps.len(),
                start.elapsed().as_secs_f64()
            )),
            Err(e) => {
                say(&format!(
                    "check {}/{} FAILED ({:.1} s): {e:#}",
                    i + 1,
                    steps.len(),
                    start.elapsed().as_secs_f64()
                ));
                bail!("the journey failed at step {}: {what}", i + 1);
            }
        }
    }
    say(&format!(
        "check: all {} steps passed in {:.1} s",
        steps.len(),
        total.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn redirect(site: &mut Site) -> Result<String> {
    let a = request(
        &site.client().name,
        None,
        "GET",
        &format!("http://{SITE_NAME}/guestbook?x=1"),
        None,
    )?;
    let want = format!("https://{SITE_NAME}/guestbook?x=1");
    ensure!(
        a.code == 301 && a.redirect == want,
        "HTTP {} to {:?}; want 301 to {want}",
        a.code,
        a.redirect
    );
    Ok(format!("301 -> https://{SITE_NAME}/guestbook?x=1"))
}

fn https_spread(site: &mut Site) -> Result<String> {
    let n = 24;
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..n {
        let v = get_json(site, "/api/whoami")?;
        *served
            .entry(v["web"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    ensure!(
        served.contains_key("web1") && served.contains_key("web2"),
        "{n} requests all served by one server: {served:?}"
    );
    // Without the demo CA the certificate is not trusted: the chain is real.
    let untrusted = request(
        &site.client().name,
        None,
        "GET",
        &format!("https://{SITE_NAME}/healthz"),
        None,
    );
    ensure!(
        untrusted.is_err(),
        "a client without the demo CA trusted the certificate"
    );
    Ok(format!(
        "{n} new connections: {served:?}, 0 failed; without the CA: refused"
    ))
}

fn replicated_write(site: &mut Site) -> Result<String> {
    let token = format!("journey-{}", std::process::id());
    let w = post_json(site, "/api/entries", &token)?;
    ensure!(
        w["written_to"] == "db1",
        "the write went to {}, not db1 (the primary)",
        w["written_to"]
    );
    let mut reads = 0;
    let lag = wait(
        "the entry read back from db2",
        Duration::from_secs(15),
        || {
            reads += 1;
            let r = get_json(site, "/api/entries")?;
            let has = r["entries"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["text"] == token.as_str()));
            Ok(has && r["read_from"] == "db2")
        },
    )?;
    let direct = site.dbs[1].sql(&format!(
        "SELECT COUNT(*) FROM foobar.entries WHERE text = '{token}'"
    ))?;
    ensure!(
        direct == "1",
        "the replica holds {direct} copies of the entry"
    );
    Ok(format!(
        "written by {} to db1, read back from db2 after {reads} reads ({:.2} s)",
        w["web"],
        lag.as_secs_f64()
    ))
}

fn firewall(site: &mut Site) -> Result<String> {
    let fw_before = verdict(site, 0, "drop_fw_rule")?;
    let policy_before = verdict(site, 0, "drop_vip_policy")?;
    let mysql = |ns: &Netns| {
        ns.cmd("mariadb")
            .args([
                "--no-defaults",
                "--skip-ssl",
                "-h",
                DB_WRITE_VIP,
                "-u",
                "app",
                "-papp-secret",
            ])
            .args([
                "--connect-timeout=2",
                "-N",
                "-B",
                "-e",
                "SELECT @@server_id",
            ])
            .output()
    };
    let from_client = mysql(site.client())?;
    ensure!(
        !from_client.status.success(),
        "the client reached the database write VIP"
    );
    let from_web2 = mysql(&site.topo.webs[1])?;
    ensure!(
        from_web2.status.success(),
        "web2 cannot reach the write VIP: {}",
        String::from_utf8_lossy(&from_web2.stderr)
    );
    // A port the web VIP does not serve.
    let ssh = site
        .client()
        .cmd("curl")
        .args(["-sS", "-m", "2", &format!("telnet://{WEB_VIP}:22")])
        .output()?;
    ensure!(
        !ssh.status.success(),
        "the client reached the web VIP on port 22"
    );
    let fw = verdict(site, 0, "drop_fw_rule")? - fw_before;
    let policy = verdict(site, 0, "drop_vip_policy")? - policy_before;
    ensure!(
        fw > 0,
        "no drop_fw_rule counted for the client's database connection"
    );
    ensure!(
        policy > 0,
        "no drop_vip_policy counted for the client's port-22 connection"
    );
    Ok(format!(
        "client -> write VIP :3306 dropped ({fw} packets, drop_fw_rule), web2 -> write VIP \
         served by db{}, client -> web VIP :22 dropped ({policy}, drop_vip_policy)",
        String::from_utf8_lossy(&from_web2.stdout).trim()
    ))
}

fn monitoring(site: &mut Site) -> Result<String> {
    let ops = site.ops().name.clone();
    let query = || -> Result<Vec<serde_json::Value>> {
        let out = Netns::attach(&ops)
            .cmd("curl")
            .args([
                "-sS",
                "-m",
                "2",
                "-G",
                &format!("http://{OPS4}:9090/api/v1/query"),
            ])
            .args(["--data-urlencode", "query=up{job=\"foobar-lb\"} == 1"])
            .output()?;
        Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default())
    };
    let took = wait(
        "Prometheus sees both nodes up",
        Duration::from_secs(30),
        || Ok(query()?.len() == 2),
    )?;
    let page = |ns: &Netns| {
        ns.cmd("curl")
            .args([
                "-sSf",
                "-m",
                "2",
                &format!("http://{}:9641/", site.nodes[0].addr),
            ])
            .output()
    };
    let ok = page(site.ops())?;
    ensure!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("foobar-lb"),
        "the stats page does not answer the monitoring host"
    );
    let refused = page(site.client())?;
    ensure!(
        !refused.status.success(),
        "the client reached the stats page"
    );
    Ok(format!(
        "up == 1 for both nodes after {:.1} s; stats page from {OPS4} only",
        took.as_secs_f64()
    ))
}

/// `foobar-lb backend VERB <web service> ADDR` for both web services on every node.
fn on_web_services(site: &Site, verb: &str, addr: &str) -> Result<()> {
    for node in &site.nodes {
        for svc in ["www", "www-tls"] {
            let out = node.cli(&site.bin, &["backend", verb, svc, addr]);
            ensure!(
                out.status.success(),
                "node {}: backend {verb} {svc} {addr}: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

fn nginx_stop(site: &mut Site) -> Result<String> {
    let web1 = web4(1);
    let load = Load::start(site, "/api/whoami", Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(1));
    // Planned: drain on both nodes (runtime changes are per node), then stop.
    on_web_services(site, "drain", &web1)?;
    let drained = Instant::now();
    site.webs[0].stop_nginx()?;
    let down = wait(
        "web1 marked down on node A",
        Duration::from_secs(15),
        || Ok(health(site, 0, "www-tls", &web1)?.0 == "down"),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.finish();
    let failed = failures(&seen);
    let late_web1 = seen
        .iter()
        .filter(|(t, r)| *t > drained && r.as_deref() == Ok("web1"))
        .count();
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {}",
        failed.len(),
        seen.len(),
        failed[0]
    );
    ensure!(
        late_web1 == 0,
        "{late_web1} new requests reached web1 after the drain"
    );
    let after = seen.iter().filter(|(t, _)| *t > drained).count();
    // Back to both servers for the next steps.
    site.webs[0].start_nginx(&site.topo.webs[0], &site.pki)?;
    on_web_services(site, "undrain", &web1)?;
    site.wait_until_serving(Duration::from_secs(20))?;
    Ok(format!(
        "{} requests, 0 failed; {after} after the drain, all on web2; web1 marked down {:.1} s \
         after the stop; restored",
        seen.len(),
        down.as_secs_f64()
    ))
}

fn db_switchover(site: &mut Site) -> Result<String> {
    let before = format!("before-switchover-{}", std::process::id());
    post_json(site, "/api/entries", &before)?;
    // A planned switchover: the primary stops taking writes, the replica catches up and is
    // promoted; then the old primary goes away.
    let start = Instant::now();
    site.dbs[0].sql("SET GLOBAL read_only = 1")?;
    let pos = site.dbs[0].sql("SELECT @@gtid_binlog_pos")?;
    site.dbs[1].wait_for("SELECT @@gtid_slave_pos", &pos, Duration::from_secs(15))?;
    site.dbs[1].promote()?;
    site.dbs[0].stop();
    let token = format!("after-switchover-{}", std::process::id());
    let mut tries = 0;
    wait("a write lands on db2", Duration::from_secs(20), || {
        tries += 1;
        Ok(post_json(site, "/api/entries", &token).is_ok_and(|w| w["written_to"] == "db2"))
    })?;
    let switched = start.elapsed();
    let both = site.dbs[1].sql(&format!(
        "SELECT COUNT(*) FROM foobar.entries WHERE text IN ('{before}', '{token}')"
    ))?;
    ensure!(
        both != "0" && both != "1",
        "db2 holds {both} of the two entries"
    );
    let (h, _) = health(site, 0, "db-write", &web4(2))?;
    ensure!(h == "up", "db-write's web2 is {h} on node A");
    Ok(format!(
        "write VIP on db2 {:.1} s after the switchover began ({tries} write attempts); \
         the entry written before it is there too",
        switched.as_secs_f64()
    ))
}

fn lb_kill(site: &mut Site) -> Result<String> {
    let load = Load::start(site, "/api/entries", Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    // Node A dies: its keepalived and daemon killed, its link down.
    if let Some(k) = site.nodes[0].keepalived.as_mut() {
        k.kill();
    }
    site.nodes[0].kill_daemon();
    site.node_ns(0).ip(&["link", "set", "eth0", "down"])?;
    let took = wait("node B holds the VIP", Duration::from_secs(10), || {
        Ok(crate::pair::holds(&site.node_ns(1), WEB_VIP))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let seen = load.finish();
    let failed = failures(&seen);
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {}",
        failed.len(),
        seen.len(),
        failed[0]
    );
    let after = seen.iter().filter(|(t, _)| *t > killed).count();
    ensure!(after > 10, "only {after} requests after the kill");
    Ok(format!(
        "node B took the VIPs {:.2} s after node A died; {} requests (web1 {}, web2 {}), \
         {after} after the kill, 0 failed",
        took.as_secs_f64(),
        seen.len(),
        count(&seen, "web1"),
        count(&seen, "web2")
    ))
}
