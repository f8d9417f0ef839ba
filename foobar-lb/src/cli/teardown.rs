use std::path::PathBuf;

use foobar_lb::{
    config::{default_pin_dir, Config},
    dataplane,
};

#[derive(clap::Args)]
pub struct Args {
    /// Take the pin directory from this config file.
    #[arg(long, conflicts_with = "pin_dir")]
    config: Option<PathBuf>,
    /// The pin directory (default: the config default).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = match (args.config, args.pin_dir) {
        (Some(c), _) => Config::load(&c)?.pin_dir,
        (None, Some(d)) => d,
        (None, None) => default_pin_dir(),
    };
    let done = dataplane::teardown(&dir)?;
    if done.removed.is_empty() {
        println!("nothing pinned in {}", dir.display());
    } else {
        println!(
            "removed {} pinned object(s) from {}; the XDP program is detached",
            done.removed.len(),
            dir.display()
        );
    }
    for path in &done.kept {
        println!("kept {}: not pinned by foobar-lb", path.display());
    }
    Ok(())
}
