//! `foobar-lb node drain|undrain`: take this node out of service or back: a drained node is
//! not ready (keepalived's track script gives its VIPs to the other node) and withdraws its
//! `[announce]` VIPs (BGP routers send its flows to the other nodes).

use std::path::Path;

use clap::Subcommand;
use foobar_lb::api::Request;

#[derive(Subcommand)]
pub enum Command {
    /// Take this node out of service: `foobar-lb ready` fails (a keepalived pair moves the VIPs
    /// to the other node) and the `[announce]` VIPs are withdrawn (routers send the flows to the
    /// other nodes); with flow sync or Maglev they keep their backends. It goes on forwarding
    /// whatever still arrives.
    Drain,
    /// Back in service: ready, and announcing the VIPs again.
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
