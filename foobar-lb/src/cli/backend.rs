use std::{net::IpAddr, path::Path};

use clap::Subcommand;
use foobar_lb::{api::Request, config::Role};

use super::call;

#[derive(Subcommand)]
pub enum Command {
    /// Add a backend; it takes new flows once its health check passes.
    Add {
        service: String,
        address: IpAddr,
        /// Serve only when no primary is healthy.
        #[arg(long)]
        backup: bool,
        /// Share of new flows among healthy peers of the same role (1..=256).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        weight: Option<u32>,
        /// The backend's port: a NAT service translates the service port to it (default: the
        /// service port; direct server return accepts only that).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Remove a backend: its flows move to the others on their next packet.
    Remove { service: String, address: IpAddr },
    /// Change a backend's weight and/or role in place; its connections stay where they are.
    Set {
        service: String,
        address: IpAddr,
        /// Share of new flows among healthy peers of the same role (1..=256).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        weight: Option<u32>,
        /// primary, or backup (serves only when no primary is healthy).
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Stop sending new flows to a backend; its existing flows continue.
    Drain { service: String, address: IpAddr },
    /// Let a drained backend take new flows again.
    Undrain { service: String, address: IpAddr },
    /// List backends (of one service, or all).
    List { service: Option<String> },
}

pub async fn run(socket: &Path, cmd: Command) -> anyhow::Result<()> {
    let req = match cmd {
        Command::List { service } => return super::stats::list_backends(socket, service).await,
        Command::Add {
            service,
            address,
            backup,
            weight,
            port,
        } => Request::BackendAdd {
            service,
            address,
            role: Some(if backup { Role::Backup } else { Role::Primary }),
            weight,
            port,
        },
        Command::Remove { service, address } => Request::BackendRemove { service, address },
        Command::Set {
            service,
            address,
            weight,
            role,
        } => {
            if weight.is_none() && role.is_none() {
                anyhow::bail!("nothing to change: give --weight and/or --role");
            }
            Request::BackendSet {
                service,
                address,
                weight,
                role,
            }
        }
        Command::Drain { service, address } => Request::BackendDrain { service, address },
        Command::Undrain { service, address } => Request::BackendUndrain { service, address },
    };
    let resp = call(socket, req).await?;
    println!("{}", resp.message.unwrap_or_default());
    Ok(())
}
