//! `foobar-lb node drain|undrain`: withdraw or announce this node's VIPs (`[announce]`).

use std::path::Path;

use clap::Subcommand;
use foobar_lb::api::Request;

#[derive(Subcommand)]
pub enum Command {
    /// Withdraw this node's VIPs: the routers send its flows to the other nodes (with Maglev
    /// they keep their backends); it goes on forwarding whatever still arrives.
    Drain,
    /// Announce the VIPs again.
    Undrain,
}

pub async fn run(socket: &Path, cmd: Command) -> anyhow::Result<()> {
    let req = match cmd {
        Command::Drain => Request::NodeDrain,
        Command::Undrain => Request::NodeUndrain,
    };
    let resp = super::call(socket, req).await?;
    println!("{}", resp.message.unwrap_or_default());
    Ok(())
}
