use std::path::Path;

use foobar_lb::api::{Request, StatsSnapshot};

use super::call;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Per-second rates over `--interval` instead of totals (`stats`).
    #[arg(long)]
    rate: bool,
    /// Print again every `--interval` (`status`; Ctrl-C stops, or `--count`).
    #[arg(long)]
    watch: bool,
    /// Seconds between the two samples of `--rate`, or between `--watch` updates.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// With `--watch`: stop after this many updates.
    #[arg(long)]
    count: Option<u64>,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// Per-second rates between two snapshots.
#[derive(Debug, serde::Serialize, PartialEq)]
pub struct Rates {
    pub seconds: f64,
    /// (service, packets/s, bytes/s, new flows/s), then its backends the same way.
    pub services: Vec<ServiceRate>,
    /// (verdict, packets/s), only those that moved.
    pub verdicts: Vec<(String, f64)>,
}

#[derive(Debug, serde::Serialize, PartialEq)]
pub struct ServiceRate {
    pub name: String,
    pub packets: f64,
    pub bytes: f64,
    pub new_flows: f64,
    pub backends: Vec<(String, f64, f64, f64)>,
}

/// Rates from `a` to `b`, `dt` seconds apart. Services and backends are matched by name and
/// address; a counter that went backwards (the service was removed and added again) counts
/// from zero.
pub fn rates(a: &StatsSnapshot, b: &StatsSnapshot, dt: f64) -> Rates {
    let per = |x: u64, y: u64| {
        if y >= x {
            (y - x) as f64 / dt
        } else {
            y as f64 / dt
        }
    };
    let services = b
        .services
        .iter()
        .map(|sb| {
            let sa = a.services.iter().find(|s| s.name == sb.name);
            let c = |f: fn(&foobar_lb::api::CounterView) -> u64| {
                per(sa.map_or(0, |s| f(&s.counters)), f(&sb.counters))
            };
            ServiceRate {
                name: sb.name.clone(),
                packets: c(|v| v.packets),
                bytes: c(|v| v.bytes),
                new_flows: c(|v| v.new_flows),
                backends: sb
                    .backends
                    .iter()
                    .map(|bb| {
                        let ba =
                            sa.and_then(|s| s.backends.iter().find(|x| x.address == bb.address));
                        let c = |f: fn(&foobar_lb::api::CounterView) -> u64| {
                            per(ba.map_or(0, |x| f(&x.counters)), f(&bb.counters))
                        };
                        (
                            bb.address.clone(),
                            c(|v| v.packets),
                            c(|v| v.bytes),
                            c(|v| v.new_flows),
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    let verdicts = b
        .verdicts
        .iter()
        .map(|(name, n)| (name.clone(), per(a.verdict(name), *n)))
        .filter(|(_, r)| *r > 0.0)
        .collect();
    Rates {
        seconds: dt,
        services,
        verdicts,
    }
}

fn render_rates(r: &Rates) -> String {
    let mut out = format!(
        "{:<28} {:>12} {:>14} {:>12}   (per second, over {:.1} s)\n",
        "SERVICE / BACKEND", "PACKETS/S", "BYTES/S", "NEW FLOWS/S", r.seconds
    );
    for s in &r.services {
        out += &format!(
            "{:<28} {:>12.1} {:>14.1} {:>12.1}\n",
            s.name, s.packets, s.bytes, s.new_flows
        );
        for (addr, p, b, f) in &s.backends {
            out += &format!("  {addr:<26} {p:>12.1} {b:>14.1} {f:>12.1}\n");
        }
    }
    out += "verdicts/s:";
    for (name, v) in &r.verdicts {
        out += &format!("  {name} {v:.1}");
    }
    out + "\n"
}

pub async fn snapshot(socket: &Path) -> anyhow::Result<StatsSnapshot> {
    call(socket, Request::Stats)
        .await?
        .stats
        .ok_or_else(|| anyhow::anyhow!("the daemon answered without stats"))
}

pub async fn run(socket: &Path, args: Args, status: bool) -> anyhow::Result<()> {
    let every = std::time::Duration::from_secs_f64(args.interval);
    if args.rate {
        let start = std::time::Instant::now();
        let a = snapshot(socket).await?;
        tokio::time::sleep(every).await;
        let b = snapshot(socket).await?;
        let r = rates(&a, &b, start.elapsed().as_secs_f64());
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", render_rates(&r));
        }
        return Ok(());
    }
    if args.watch {
        let mut n = 0;
        loop {
            let s = snapshot(socket).await?;
            if args.json {
                // One object per line: easy to follow with jq.
                println!("{}", serde_json::to_string(&s)?);
            } else {
                // Clear the screen and print from the top, as `watch` does.
                print!("\x1b[2J\x1b[H{}", render_status(&s));
            }
            n += 1;
            if args.count.is_some_and(|c| n >= c) {
                return Ok(());
            }
            tokio::time::sleep(every).await;
        }
    }
    let s = snapshot(socket).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if status {
        print!("{}\nfirewall:\n{}", render_status(&s), render_firewall(&s));
    } else {
        print!("{}", render_stats(&s));
    }
    Ok(())
}

pub async fn list_backends(socket: &Path, service: Option<String>) -> anyhow::Result<()> {
    let mut s = snapshot(socket).await?;
    if let Some(name) = service {
        s.services.retain(|x| x.name == name);
        if s.services.is_empty() {
            anyhow::bail!("unknown service {name:?}: `foobar-lb service list` shows them");
        }
    }
    print!("{}", render_status(&s));
    Ok(())
}

pub async fn list_services(socket: &Path) -> anyhow::Result<()> {
    let s = snapshot(socket).await?;
    println!(
        "{:<16} {:<32} {:>8}",
        "SERVICE", "VIP:PORT/PROTO", "BACKENDS"
    );
    for svc in &s.services {
        println!(
            "{:<16} {:<32} {:>8}",
            svc.name,
            format!("{}:{}/{}", svc.vip, svc.port, svc.protocol),
            svc.backends.len()
        );
    }
    Ok(())
}

pub async fn list_firewall(socket: &Path) -> anyhow::Result<()> {
    print!("{}", render_firewall(&snapshot(socket).await?));
    Ok(())
}

fn render_firewall(s: &StatsSnapshot) -> String {
    let fw = &s.firewall;
    let mut out = format!(
        "{:>3}  {:<60} {:>12} {:>14}\n",
        "#", "RULE", "PACKETS", "BYTES"
    );
    for r in &fw.rules {
        out += &format!(
            "{:>3}  {:<60} {:>12} {:>14}\n",
            r.index, r.rule, r.packets, r.bytes
        );
    }
    if fw.rules.is_empty() {
        out += "     (no rules)\n";
    }
    out += &format!("block list: {} prefixes\n", fw.blocklist_prefixes);
    if !fw.vip_policy_drop.is_empty() {
        out += &format!(
            "VIP traffic matching no service is dropped on: {}\n",
            fw.vip_policy_drop.join(", ")
        );
    }
    out += "drops:";
    for (name, n) in s.verdicts.iter().filter(|(n, _)| {
        matches!(
            n.as_str(),
            "drop_fw_rule" | "drop_blocklist" | "drop_vip_policy" | "drop_rate_limit"
        )
    }) {
        out += &format!("  {name} {n}");
    }
    out + "\n"
}

fn render_status(s: &StatsSnapshot) -> String {
    let mut out = String::new();
    for svc in &s.services {
        out += &format!(
            "{} {}:{}/{}  packets {}  new flows {}\n",
            svc.name, svc.vip, svc.port, svc.protocol, svc.counters.packets, svc.counters.new_flows
        );
        out += &format!(
            "  {:<24} {:<8} {:>6} {:<10} {:<9} {:>8} {:>10} {:>9}  {}\n",
            "BACKEND",
            "ROLE",
            "WEIGHT",
            "HEALTH",
            "STATE",
            "FLOWS",
            "PACKETS",
            "PKT/S",
            "LAST CHECK"
        );
        for b in &svc.backends {
            let check = match (&b.last_error, b.check_latency_ms) {
                (Some(e), _) => e.clone(),
                (None, Some(ms)) => format!("ok in {ms:.1} ms"),
                (None, None) => "-".into(),
            };
            out += &format!(
                "  {:<24} {:<8} {:>6} {:<10} {:<9} {:>8} {:>10} {:>9.1}  {}\n",
                b.address,
                format!("{:?}", b.role).to_lowercase(),
                b.weight,
                b.health,
                if b.drained {
                    "drained".to_string()
                } else {
                    b.state.clone()
                },
                b.flows,
                b.counters.packets,
                b.packets_per_sec,
                check
            );
        }
    }
    if s.nat.connections > 0 {
        out += &format!(
            "NAT connections tracked: {} of {} (`foobar-lb flows` lists them)\n",
            s.nat.connections, s.nat.table_size
        );
    }
    if s.drained {
        out += "node: drained (`foobar-lb ready` fails; `foobar-lb node undrain` ends it)\n";
    }
    out += &if s.vips_held.is_empty() {
        "node: holds no VIP (a pair's backup, or the VIPs are routed to it)\n".to_owned()
    } else {
        format!("node: holds {}\n", s.vips_held.join(", "))
    };
    if let Some(y) = &s.sync {
        out += &format!(
            "sync: {}; {} peer(s) connected; flows sent {}, received {}, applied {}, \
             unknown backend {}, NAT sent {} applied {} skipped {}, ring full {}, lagged {}, \
             auth failures {}; lag {} ms\n",
            y.gate,
            y.peers_connected,
            y.sent,
            y.received,
            y.applied,
            y.unknown_backend,
            y.nat_sent,
            y.nat_applied,
            y.nat_skipped,
            y.ring_full,
            y.lagged,
            y.auth_failures,
            y.lag_ms
        );
    }
    if let Some(a) = &s.announce {
        out += &match (a.drained, a.announced.is_empty()) {
            (true, _) => format!("node: no VIP announced on {} (drained)\n", a.interface),
            (false, true) => format!(
                "node: announcing nothing on {} (not ready: see `foobar-lb ready`)\n",
                a.interface
            ),
            (false, false) => format!(
                "node: announcing {} on {}\n",
                a.announced.join(", "),
                a.interface
            ),
        };
    }
    out
}

fn render_stats(s: &StatsSnapshot) -> String {
    let mut out = String::new();
    out += &format!(
        "{:<28} {:>12} {:>14} {:>10}\n",
        "SERVICE / BACKEND", "PACKETS", "BYTES", "NEW FLOWS"
    );
    for svc in &s.services {
        out += &format!(
            "{:<28} {:>12} {:>14} {:>10}\n",
            format!("{} {}:{}/{}", svc.name, svc.vip, svc.port, svc.protocol),
            svc.counters.packets,
            svc.counters.bytes,
            svc.counters.new_flows
        );
        for b in &svc.backends {
            out += &format!(
                "  {:<26} {:>12} {:>14} {:>10}  {}\n",
                b.address, b.counters.packets, b.counters.bytes, b.counters.new_flows, b.state
            );
        }
    }
    out += &format!("\nfirewall:\n{}", render_firewall(s));
    out += &format!("\nflows in table: {}\nverdicts:\n", s.flows);
    for (name, n) in &s.verdicts {
        out += &format!("  {name:<18} {n:>12}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(packets: u64, verdict_tx: u64) -> StatsSnapshot {
        serde_json::from_value(serde_json::json!({
            "verdicts": [["tx", verdict_tx], ["drop_blocklist", 5]],
            "flows": 0,
            "services": [{
                "name": "www", "vip": "10.0.0.100", "port": 80, "protocol": "tcp",
                "counters": {"packets": packets, "bytes": packets * 100, "new_flows": packets / 10},
                "backends": [{
                    "address": "10.0.0.11", "role": "primary", "weight": 1, "mac": null,
                    "health": "up", "last_error": null, "check_latency_ms": null,
                    "drained": false, "state": "active", "flows": 0,
                    "counters": {"packets": packets, "bytes": packets * 100, "new_flows": packets / 10}
                }]
            }]
        }))
        .unwrap()
    }

    #[test]
    fn rates_are_deltas_per_second_and_idle_verdicts_are_left_out() {
        let r = rates(&snap(1000, 1000), &snap(3000, 3000), 2.0);
        assert_eq!(r.services[0].packets, 1000.0);
        assert_eq!(r.services[0].bytes, 100_000.0);
        assert_eq!(r.services[0].new_flows, 100.0);
        assert_eq!(
            r.services[0].backends[0],
            ("10.0.0.11".into(), 1000.0, 100_000.0, 100.0)
        );
        assert_eq!(r.verdicts, vec![("tx".to_string(), 1000.0)]);
        // A counter that restarted (service re-added) counts from zero, never negative.
        let r = rates(&snap(3000, 3000), &snap(500, 3500), 1.0);
        assert_eq!(r.services[0].packets, 500.0);
    }
}
