//! `cargo xtask bench [--quick]`: per-packet cost (BPF_PROG_TEST_RUN) and end-to-end
//! comparisons in network namespaces. Figures are ratios within one run; nothing is asserted.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::build::workspace_root;
use peers::PeerKind;

mod attack;
mod e2e;
mod failover;
mod health_cost;
mod micro;
mod peers;
mod report;
mod targets;
mod topology;
mod wrk;

#[derive(clap::Args)]
pub struct Args {
    /// A short run that exercises every part (CI keeps it from rotting); figures not meaningful.
    #[arg(long)]
    quick: bool,
    /// Only the per-packet (BPF_PROG_TEST_RUN) part.
    #[arg(long)]
    micro_only: bool,
    /// Only the failover table (a keepalived pair's active node crashes under load).
    #[arg(long, conflicts_with = "micro_only")]
    failover_only: bool,
    /// Only the NAT comparison: foobar-lb NAT and full NAT (generic and native) side by side
    /// with nftables DNAT (and masquerade), new connections and keep-alive (about 2 minutes).
    #[arg(long, conflicts_with_all = ["micro_only", "failover_only"])]
    nat_only: bool,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
}

const PACKAGES: &[&str] = &["wrk", "haproxy", "nftables", "hping3"];

fn text(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn run(args: Args) -> Result<()> {
    // --micro-only runs no peer: it neither installs them nor stops a haproxy it did not
    // start (on a shared machine that may be someone else's).
    if !args.micro_only {
        crate::setup::install(PACKAGES)?;
    }
    // The end-to-end part starts the real controller binary (the Maglev figures run it too).
    let bin = crate::build::release()?;
    std::env::set_var("FOOBAR_LB_BIN", &bin);
    if !args.micro_only {
        // haproxy's Debian package starts a service where it can; the bench runs its own.
        let _ = Command::new("pkill").args(["-x", "haproxy"]).status();
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("bench: load average before: {}", load.trim());
    if args.failover_only {
        let rows = failover::run(args.quick)?;
        let mut r = report::Report::empty(args.quick);
        r.failover = rows;
        println!("\n{}", report::markdown(&r));
        return Ok(());
    }
    if args.nat_only {
        let topo = topology::topology()?;
        let rows = e2e::run_peers(&topo, &wrk_settings(&args), PeerKind::is_nat)?;
        drop(topo);
        let mut r = report::Report::empty(args.quick);
        r.load_average_before = load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        r.targets = targets::targets(&[], &rows, &[]);
        r.e2e = rows;
        println!("\n{}", report::markdown(&r));
        return Ok(());
    }
    let (micro, nat_memory) = micro::run(args.quick)?;
    for m in &micro {
        println!(
            "  {:<45} {:>8.1} ns  x{:.2}",
            m.case, m.ns_per_packet, m.ratio_to_floor
        );
    }
    let (mut rows, mut attack, mut health) = (Vec::new(), Vec::new(), None);
    let mut failover = Vec::new();
    if !args.micro_only {
        let settings = wrk_settings(&args);
        let topo = topology::topology()?;
        rows = e2e::run_peers(&topo, &settings, |_| true)?;
        attack = attack::run_attack(&topo, &settings)?;
        let (n, secs) = if args.quick { (40, 2) } else { (300, 10) };
        health = Some(health_cost::run_health_cost(&topo, n, secs)?);
        for (k, (a, b)) in e2e::spread(&rows) {
            println!("  spread {k}: web1 {a}, web2 {b}");
        }
        drop(topo);
        failover = failover::run(args.quick)?;
    }
    let maglev = maglev_stats(&bin)?;
    let mut targets = targets::targets(&micro, &rows, &attack);
    if let Some(ms) = maglev.get("build_ms").and_then(|v| v.as_f64()) {
        targets.push(report::Target {
            what: "Maglev table build, 1000 backends, 65537 slots (ms)".into(),
            measured: ms,
            target: "< 10".into(),
            met: ms < 10.0,
        });
    }
    let r = report::Report {
        date: text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: text("hostname", &[]),
        kernel: text("uname", &["-r"]),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_average_before: load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        quick: args.quick,
        micro,
        nat_memory: Some(nat_memory),
        e2e: rows,
        attack,
        health,
        failover,
        maglev: Some(maglev),
        targets,
    };
    let md = report::markdown(&r);
    println!("\n{md}");
    let dir: PathBuf = workspace_root().join("results");
    std::fs::create_dir_all(&dir)?;
    let stem = format!(
        "bench-{}-{}{}",
        text("date", &["-u", "+%Y%m%d-%H%M"]),
        r.machine,
        if args.quick { "-quick" } else { "" }
    );
    std::fs::write(dir.join(format!("{stem}.md")), &md)?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&r)?,
    )
    .context("write JSON")?;
    if !r.e2e.is_empty() {
        std::fs::write(dir.join(format!("{stem}.svg")), report::svg(&r))?;
    }
    println!("bench: results in {}/{stem}.{{md,json,svg}}", dir.display());
    Ok(())
}

fn wrk_settings(args: &Args) -> wrk::Settings {
    wrk::Settings {
        seconds: if args.quick { 1 } else { args.seconds },
        connections: 32,
    }
}

/// Maglev table figures from the release binary (`foobar-lb maglev-stats`).
fn maglev_stats(bin: &std::path::Path) -> Result<serde_json::Value> {
    println!("bench: Maglev table for 1000 backends...");
    let out = Command::new(bin)
        .args(["maglev-stats", "--backends", "1000"])
        .output()
        .context("run foobar-lb maglev-stats")?;
    anyhow::ensure!(
        out.status.success(),
        "foobar-lb maglev-stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
