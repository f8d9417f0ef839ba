use std::path::PathBuf;

use foobar_lb::{config::XdpMode, daemon};

#[derive(clap::Args)]
pub struct Args {
    /// The TOML configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// XDP attach mode; overrides `xdp_mode` in the config.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpMode>,
    /// On SIGINT/SIGTERM, detach the program and remove the pinned maps. Without it the data
    /// plane keeps forwarding after the daemon exits (or dies), and the next daemon adopts it.
    #[arg(long)]
    detach_on_exit: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    daemon::run(
        &args.config,
        daemon::RunOptions {
            xdp_mode: args.xdp_mode,
            detach_on_exit: args.detach_on_exit,
        },
    )
    .await
}
