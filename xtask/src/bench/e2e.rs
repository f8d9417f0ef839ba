//! End to end in network namespaces: wrk from the client through each peer to two nginx
//! backends, keep-alive and one new connection per request, plus a run under a SYN flood from
//! a blocked source. One peer at a time, each with its own client source address (TIME_WAIT).

use std::{
    collections::BTreeMap,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use foobar_lb::{config::XdpMode, dataplane::AuxProgram};
use foobar_lb_tests::{
    daemon::Daemon,
    netns::{in_netns, run, web4, Netns, Topology, LB4, VIP4},
};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub peer: String,
    /// `keep-alive` or `new connection per request`.
    pub mode: String,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Requests answered by web1 and web2 during the run (from their access logs).
    pub web1: u64,
    pub web2: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttackRow {
    pub defence: String,
    pub legit_requests_per_sec: f64,
    pub flood_drops_per_sec: f64,
    pub errors: u64,
}

pub struct Settings {
    pub seconds: u32,
    pub connections: u32,
}

/// A peer under test: sets itself up, says where clients connect, tears down on drop.
enum Peer {
    None,
    FoobarLb(Daemon),
    XdpMin(AuxProgram),
    Haproxy(u32),
    Nftables,
}

fn mac_of(ns: &Netns) -> Result<[u8; 6]> {
    let json = String::from_utf8(run(ns.cmd("ip").args(["-j", "link", "show", "eth0"]))?.stdout)?;
    let addr = json
        .split("\"address\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no MAC in ip -j link")?;
    foobar_lb::neighbor::parse_mac(addr).context("bad MAC")
}

fn access_count(topo: &Topology, i: usize) -> u64 {
    std::fs::read_to_string(topo.dir.join(format!("web{i}.access")))
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

/// Parses wrk's `--latency` output: (requests/s, p50 ms, p99 ms, errors).
pub fn parse_wrk(out: &str) -> Result<(f64, f64, f64, u64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let pct = |p: &str| -> f64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .map(to_ms)
            .unwrap_or(f64::NAN)
    };
    let mut errors = 0;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok((rps, pct("50%"), pct("99%"), errors))
}

fn to_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(client: &Netns, url: &str, close: bool, s: &Settings) -> Result<(f64, f64, f64, u64)> {
    let mut cmd = client.cmd("wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", s.connections),
        &format!("-d{}s", s.seconds),
        "--latency",
        "--timeout",
        "2s",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let out = run(&mut cmd)?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Gives the client a fresh source address so TIME_WAIT of the last run does not interfere.
fn fresh_source(topo: &Topology, n: u8) -> Result<String> {
    let src = format!("10.111.0.{}", 60 + n);
    topo.client
        .ip(&["addr", "add", &format!("{src}/24"), "dev", "eth0", "nodad"])?;
    topo.client.ip(&[
        "route",
        "replace",
        "10.111.0.0/24",
        "dev",
        "eth0",
        "src",
        &src,
    ])?;
    Ok(src)
}

impl Peer {
    fn start(name: &str, topo: &Topology, mode: XdpMode, src: &str) -> Result<Peer> {
        Ok(match name {
            "no load balancer" => Peer::None,
            "foobar-lb" => {
                let socket = topo.dir.join("control.sock");
                let cfg = topo.write_config(mode_name(mode), &socket)?;
                Peer::FoobarLb(Daemon::start(&topo.lb, &cfg, &socket)?)
            }
            "minimal XDP (fixed MAC)" => {
                let mac = mac_of(topo.web(1))?;
                let prog = in_netns(&topo.lb.name, || {
                    let mut p = AuxProgram::fixed_mac(mac)?;
                    p.attach("eth0", mode)?;
                    Ok(p)
                })?;
                Peer::XdpMin(prog)
            }
            "HAProxy (TCP, roundrobin)" => {
                let cfg = topo.dir.join("haproxy.cfg");
                let pid = topo.dir.join("haproxy.pid");
                std::fs::write(
                    &cfg,
                    format!(
                        "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
                         frontend www\n  bind {VIP4}:80\n  default_backend webs\n\
                         backend webs\n  balance roundrobin\n  server web1 {}:80\n  server web2 {}:80\n",
                        web4(1),
                        web4(2)
                    ),
                )?;
                run(topo
                    .lb
                    .cmd("haproxy")
                    .args(["-D", "-f"])
                    .arg(&cfg)
                    .arg("-p")
                    .arg(&pid))?;
                thread::sleep(Duration::from_millis(300));
                let pid: u32 = std::fs::read_to_string(&pid)?.trim().parse()?;
                Peer::Haproxy(pid)
            }
            "nftables DNAT (numgen inc mod 2)" => {
                topo.lb.sysctl("net.ipv4.ip_forward", "1")?;
                let rules = format!(
                    "table ip foobarbench {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    ip daddr {VIP4} tcp dport 80 dnat to numgen inc mod 2 map {{ 0 : {}, 1 : {} }}\n  }}\n}}\n",
                    web4(1),
                    web4(2)
                );
                let file = topo.dir.join("dnat.nft");
                std::fs::write(&file, rules)?;
                run(topo.lb.cmd("nft").arg("-f").arg(&file))?;
                // Client IP is preserved: backends answer it through the load balancer.
                for w in &topo.webs {
                    w.ip(&["route", "replace", &format!("{src}/32"), "via", LB4])?;
                }
                Peer::Nftables
            }
            other => bail!("unknown peer {other}"),
        })
    }

    fn target(&self) -> String {
        match self {
            Peer::None => format!("http://{}/", web4(1)),
            _ => format!("http://{VIP4}/"),
        }
    }

    fn stop(self, topo: &Topology) {
        match self {
            Peer::Haproxy(pid) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                thread::sleep(Duration::from_millis(200));
            }
            Peer::Nftables => {
                let _ = run(topo
                    .lb
                    .cmd("nft")
                    .args(["delete", "table", "ip", "foobarbench"]));
                let _ = topo.lb.sysctl("net.ipv4.ip_forward", "0");
            }
            Peer::FoobarLb(mut d) => {
                d.stop();
            }
            Peer::XdpMin(p) => drop(p),
            Peer::None => {}
        }
    }
}

fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Generic => "generic",
        XdpMode::Native => "native",
        XdpMode::Auto => "auto",
    }
}

pub fn topology() -> Result<Topology> {
    let mut topo = Topology::new("bn", 2)?;
    topo.access_log = true;
    topo.start_web(1)?;
    topo.start_web(2)?;
    topo.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    topo.add_client(99)?; // the attacker
    Ok(topo)
}

pub fn run_peers(topo: &Topology, s: &Settings) -> Result<Vec<Row>> {
    // XDP_TX from the load balancer in native mode needs a program on its bridge port.
    let _pass = topo.attach_lb_peer_pass()?;
    let peers: Vec<(&str, XdpMode)> = vec![
        ("no load balancer", XdpMode::Generic),
        ("minimal XDP (fixed MAC)", XdpMode::Generic),
        ("foobar-lb", XdpMode::Generic),
        ("minimal XDP (fixed MAC)", XdpMode::Native),
        ("foobar-lb", XdpMode::Native),
        ("nftables DNAT (numgen inc mod 2)", XdpMode::Generic),
        ("HAProxy (TCP, roundrobin)", XdpMode::Generic),
    ];
    let mut rows = Vec::new();
    for (n, (name, mode)) in peers.iter().enumerate() {
        let label = if name.contains("XDP") || name.contains("foobar") {
            format!("{name} [{}]", mode_name(*mode))
        } else {
            name.to_string()
        };
        let src = fresh_source(topo, n as u8)?;
        let peer =
            Peer::start(name, topo, *mode, &src).with_context(|| format!("starting {label}"))?;
        let url = peer.target();
        for close in [true, false] {
            let mode_label = if close {
                "new connection per request"
            } else {
                "keep-alive"
            };
            println!("bench e2e: {label}, {mode_label}, {} s...", s.seconds);
            let (a1, a2) = (access_count(topo, 1), access_count(topo, 2));
            let (rps, p50, p99, errors) = wrk(&topo.client, &url, close, s)?;
            // nginx flushes its access log buffer every second.
            thread::sleep(Duration::from_millis(1200));
            rows.push(Row {
                peer: label.clone(),
                mode: mode_label.into(),
                requests_per_sec: rps,
                p50_ms: p50,
                p99_ms: p99,
                errors,
                web1: access_count(topo, 1) - a1,
                web2: access_count(topo, 2) - a2,
            });
            // TIME_WAIT of new-connection runs: the next run gets another source address.
            if close {
                thread::sleep(Duration::from_millis(200));
            }
        }
        peer.stop(topo);
        for w in &topo.webs {
            let _ = w.ip(&["route", "del", &format!("{src}/32")]);
        }
    }
    Ok(rows)
}

/// New-connection-per-request throughput while the attacker floods SYNs to the VIP from a
/// blocked address, with foobar-lb's block list vs an nftables netdev-ingress drop rule (in
/// front of nftables DNAT).
pub fn run_attack(topo: &Topology, s: &Settings) -> Result<Vec<AttackRow>> {
    let attacker = &topo.extra[0];
    let attacker_ip = "10.111.0.99";
    let mut rows = Vec::new();
    for (n, defence) in [
        "foobar-lb block list [generic]",
        "nftables ingress drop + DNAT",
    ]
    .iter()
    .enumerate()
    {
        let src = fresh_source(topo, 20 + n as u8)?;
        let (peer, drops_before): (Peer, u64);
        if n == 0 {
            let list = topo.dir.join("attackers.txt");
            std::fs::write(&list, format!("{attacker_ip}\n"))?;
            let socket = topo.dir.join("control.sock");
            let cfg = topo.write_config("generic", &socket)?;
            let text = std::fs::read_to_string(&cfg)?.replacen(
                "\n[[service]]",
                &format!(
                    "\n[firewall]\nblocklists = [\"{}\"]\n\n[[service]]",
                    list.display()
                ),
                1,
            );
            std::fs::write(&cfg, text)?;
            let d = Daemon::start(&topo.lb, &cfg, &socket)?;
            drops_before = d.stats().verdict("drop_blocklist");
            peer = Peer::FoobarLb(d);
        } else {
            peer = Peer::start(
                "nftables DNAT (numgen inc mod 2)",
                topo,
                XdpMode::Generic,
                &src,
            )?;
            let rules = format!(
                "table netdev foobarguard {{\n  chain ingress {{\n    type filter hook ingress device eth0 priority -500;\n    ip saddr {attacker_ip} counter drop\n  }}\n}}\n"
            );
            let file = topo.dir.join("guard.nft");
            std::fs::write(&file, rules)?;
            run(topo.lb.cmd("nft").arg("-f").arg(&file))?;
            drops_before = 0;
        }
        println!(
            "bench attack: {defence}: SYN flood from {attacker_ip} for {} s with wrk...",
            s.seconds + 2
        );
        let mut flood = attacker
            .cmd("timeout")
            .args([
                &(s.seconds + 2).to_string(),
                "hping3",
                "--flood",
                "-q",
                "-S",
                "-p",
                "80",
                VIP4,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start hping3")?;
        thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        let (drops0, result) = (
            drop_count(&peer, topo).unwrap_or(drops_before),
            wrk(&topo.client, &format!("http://{VIP4}/"), true, s),
        );
        let drops1 = drop_count(&peer, topo).unwrap_or(drops0);
        let dt = t0.elapsed().as_secs_f64();
        let _ = flood.wait();
        let (rps, _, _, errors) = result?;
        rows.push(AttackRow {
            defence: defence.to_string(),
            legit_requests_per_sec: rps,
            flood_drops_per_sec: (drops1 - drops0) as f64 / dt,
            errors,
        });
        if n == 1 {
            let _ = run(topo
                .lb
                .cmd("nft")
                .args(["delete", "table", "netdev", "foobarguard"]));
        }
        peer.stop(topo);
        for w in &topo.webs {
            let _ = w.ip(&["route", "del", &format!("{src}/32")]);
        }
    }
    Ok(rows)
}

/// Flood packets dropped so far by the defence in place.
fn drop_count(peer: &Peer, topo: &Topology) -> Option<u64> {
    match peer {
        Peer::FoobarLb(d) => Some(d.stats().verdict("drop_blocklist")),
        Peer::Nftables => {
            let out = run(topo
                .lb
                .cmd("nft")
                .args(["list", "table", "netdev", "foobarguard"]))
            .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split("packets ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }
        _ => None,
    }
}

/// Shares of the two backends in a run, for the "does it really balance" check.
pub fn spread(rows: &[Row]) -> BTreeMap<String, (u64, u64)> {
    rows.iter()
        .map(|r| (format!("{} / {}", r.peer, r.mode), (r.web1, r.web2)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk_output() {
        let out = "Running 5s test @ http://10.111.0.100/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  1.21ms\n     75%    2.00ms\n     99%  850.00us\n  12345 requests in 5.00s, 1.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 1\nRequests/sec:   2469.00\nTransfer/sec:    200.00KB\n";
        let (rps, p50, p99, err) = super::parse_wrk(out).unwrap();
        assert_eq!(rps, 2469.0);
        assert_eq!(p50, 1.21);
        assert_eq!(p99, 0.85);
        assert_eq!(err, 6);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthCost {
    pub backends: usize,
    pub check: String,
    pub interval_ms: u64,
    pub seconds: f64,
    /// Daemon CPU time over the window, as a percentage of one core.
    pub cpu_percent_of_one_core: f64,
    pub backends_up: usize,
}

/// CPU cost of health-checking many backends: `n` HTTP backends (extra addresses on the two
/// web servers, served by the same nginx), checked every second, daemon CPU over a window.
pub fn run_health_cost(topo: &Topology, n: usize, seconds: u32) -> Result<HealthCost> {
    let addr = |i: usize| format!("10.112.{}.{}", 1 + i / 200, 1 + i % 200);
    topo.lb
        .ip(&["addr", "add", "10.112.0.2/16", "dev", "eth0"])?;
    for i in 0..n {
        let web = topo.web(1 + i % 2);
        web.ip(&[
            "addr",
            "add",
            &format!("{}/16", addr(i)),
            "dev",
            "eth0",
            "nodad",
        ])?;
    }
    let socket = topo.dir.join("control.sock");
    let mut cfg = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"generic\"\ncontrol_socket = \"{}\"\npin_dir = \"{}\"\nmetrics_address = \"\"\n",
        socket.display(),
        topo.pin_dir().display()
    );
    // A service holds at most 256 backends: spread them over services of 100.
    for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(100).enumerate() {
        cfg += &format!(
            "\n[[service]]\nname = \"many{k}\"\nvip = \"{VIP4}\"\nport = {}\n[service.health]\ncheck = \"http\"\nport = 80\ninterval_ms = 1000\ntimeout_ms = 500\n",
            1000 + k
        );
        for &i in chunk {
            cfg += &format!("[[service.backend]]\naddress = \"{}\"\n", addr(i));
        }
    }
    let path = topo.dir.join("many.toml");
    std::fs::write(&path, cfg)?;
    println!("bench health: {n} HTTP backends checked every 1 s, {seconds} s window...");
    let d = Daemon::start(&topo.lb, &path, &socket)?;
    thread::sleep(Duration::from_secs(2));
    let ticks = |pid: u32| -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name: state is 3rd; utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    };
    let hz = 100.0; // USER_HZ on Linux
    let (t0, c0) = (Instant::now(), ticks(d.pid())?);
    thread::sleep(Duration::from_secs(seconds as u64));
    let (dt, c1) = (t0.elapsed().as_secs_f64(), ticks(d.pid())?);
    let up = d
        .stats()
        .services
        .iter()
        .map(|s| s.backends.iter().filter(|b| b.health == "up").count())
        .sum();
    drop(d);
    Ok(HealthCost {
        backends: n,
        check: "http GET /".into(),
        interval_ms: 1000,
        seconds: dt,
        cpu_percent_of_one_core: (c1 - c0) as f64 / hz / dt * 100.0,
        backends_up: up,
    })
}
