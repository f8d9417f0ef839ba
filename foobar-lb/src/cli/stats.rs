use std::path::Path;

use foobar_lb::api::{Request, StatsSnapshot};

use super::call;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn snapshot(socket: &Path) -> anyhow::Result<StatsSnapshot> {
    call(socket, Request::Stats)
        .await?
        .stats
        .ok_or_else(|| anyhow::anyhow!("the daemon answered without stats"))
}

pub async fn run(socket: &Path, args: Args, status: bool) -> anyhow::Result<()> {
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
