//! `foobar-lb flows`: tracked NAT connections, as `conntrack -L` lists them.

use std::{net::IpAddr, path::Path};

use foobar_lb::api::{FlowsAnswer, Request};

use super::call;

#[derive(clap::Args)]
pub struct Args {
    /// Only connections of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only connections to this backend address.
    #[arg(long)]
    backend: Option<IpAddr>,
    /// At most this many connections (sorted by client).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(socket: &Path, args: Args) -> anyhow::Result<()> {
    let resp = call(
        socket,
        Request::Flows {
            service: args.service,
            backend: args.backend,
            limit: Some(args.limit),
        },
    )
    .await?;
    let flows = resp
        .flows
        .ok_or_else(|| anyhow::anyhow!("the daemon answered without flows"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
    } else {
        print!("{}", render(&flows));
    }
    Ok(())
}

fn endpoint((addr, port): (IpAddr, u16)) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn render(f: &FlowsAnswer) -> String {
    let mut out = String::new();
    for r in &f.rows {
        let c = &r.conn;
        let proto = match c.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            p => p.to_string(),
        };
        // Full NAT: the source the backend sees, between the VIP and the backend.
        let snat = c
            .snat
            .map(|s| format!("snat {:<24} ", endpoint(s)))
            .unwrap_or_default();
        out += &format!(
            "{proto:<4} {:<12} client {:<24} vip {:<24} {snat}backend {:<24} idle {:>5}s service {}\n",
            c.state.name(),
            endpoint(c.client),
            endpoint(c.vip),
            endpoint(c.backend),
            c.idle_secs,
            r.service
        );
    }
    out += &format!("{} of {} connection(s) shown\n", f.rows.len(), f.total);
    out
}
