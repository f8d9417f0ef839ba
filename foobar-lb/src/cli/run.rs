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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    daemon::run(
        &args.config,
        daemon::RunOptions {
            xdp_mode: args.xdp_mode,
        },
    )
    .await
}
