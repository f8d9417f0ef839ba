use std::path::PathBuf;

use foobar_lb::{
    api::{self, Request, StatsSnapshot},
    config::default_control_socket,
};

#[derive(clap::Args)]
pub struct Args {
    /// Control socket of the daemon.
    #[arg(long, default_value_os_t = default_control_socket())]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let resp = api::call(&args.socket, &Request::Stats).await?;
    let stats = resp
        .stats
        .ok_or_else(|| anyhow::anyhow!("the daemon answered without stats"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", render(&stats));
    }
    Ok(())
}

fn render(s: &StatsSnapshot) -> String {
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
    out += &format!("\nflows in table: {}\nverdicts:\n", s.flows);
    for (name, n) in &s.verdicts {
        out += &format!("  {name:<18} {n:>12}\n");
    }
    out
}
