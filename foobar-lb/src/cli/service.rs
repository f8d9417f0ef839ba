use std::{net::IpAddr, path::Path};

use clap::Subcommand;
use foobar_lb::{
    api::Request,
    config::{CheckKind, Failover, ForwardingKind, PortRange, SchedulerKind},
};

use super::call;

#[derive(Subcommand)]
pub enum Command {
    /// Add a service (no backends yet: add them with `foobar-lb backend add`).
    Add {
        name: String,
        #[arg(long)]
        vip: IpAddr,
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
        protocol: String,
        /// Health check kind.
        #[arg(long, value_enum, default_value = "tcp")]
        check: CheckKind,
        /// `--check mysql`: log in as this user (empty password), then quit.
        #[arg(long)]
        mysql_user: Option<String>,
        /// `--check external`: the program (absolute path), then each argument, one
        /// `--check-command` each: `--check-command /usr/local/bin/db-writable --check-command 3306`.
        #[arg(long = "check-command", value_name = "ARG")]
        check_command: Vec<String>,
        /// Which backups serve when no primary is healthy.
        #[arg(long, value_enum, default_value = "first")]
        failover: Failover,
        /// How new flows pick a backend.
        #[arg(long, value_enum, default_value = "roundrobin")]
        scheduler: SchedulerKind,
        /// Maglev table size (a prime; default 65537).
        #[arg(long, requires = "scheduler")]
        maglev_table_size: Option<u32>,
        /// How packets reach the backends: dsr (direct server return), nat or fullnat.
        #[arg(long, value_enum, default_value = "dsr")]
        forwarding: ForwardingKind,
        /// With --forwarding fullnat: a source address of connections to backends (repeat for
        /// more; at least one of the VIP's family).
        #[arg(long)]
        snat: Vec<IpAddr>,
        /// With --forwarding fullnat: the source ports, LO-HI (default 1024-65535).
        #[arg(long)]
        snat_ports: Option<PortRange>,
    },
    /// Remove a service: its VIP:port traffic goes to the host stack again.
    Remove { name: String },
    /// List services.
    List,
}

pub async fn run(socket: &Path, cmd: Command) -> anyhow::Result<()> {
    let req = match cmd {
        Command::List => return super::stats::list_services(socket).await,
        Command::Add {
            name,
            vip,
            port,
            protocol,
            check,
            mysql_user,
            check_command,
            failover,
            scheduler,
            maglev_table_size,
            forwarding,
            snat,
            snat_ports,
        } => {
            let mut service = serde_json::json!({
                "name": name,
                "vip": vip,
                "port": port,
                "protocol": protocol,
                "failover": failover,
                "scheduler": scheduler,
                "forwarding": forwarding,
                "health": { "check": check },
            });
            if let Some(u) = mysql_user {
                service["health"]["mysql_user"] = u.into();
            }
            if !check_command.is_empty() {
                service["health"]["command"] = check_command.into();
            }
            if let Some(m) = maglev_table_size {
                service["maglev_table_size"] = m.into();
            }
            if !snat.is_empty() {
                service["snat"] = serde_json::json!(snat);
            }
            if let Some(r) = snat_ports {
                service["snat_ports"] = r.to_string().into();
            }
            Request::ServiceAdd { service }
        }
        Command::Remove { name } => Request::ServiceRemove { name },
    };
    let resp = call(socket, req).await?;
    println!("{}", resp.message.unwrap_or_default());
    Ok(())
}
