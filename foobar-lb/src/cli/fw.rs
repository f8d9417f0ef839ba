use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use foobar_lb::{
    api::Request,
    firewall::{Action, RuleConfig, RuleProtocol},
};

use super::call;

#[derive(Subcommand)]
pub enum Command {
    /// Add a rule (first match wins; default position: last).
    Add {
        #[arg(long, value_enum)]
        action: Action,
        /// Source prefix or address; default any.
        #[arg(long, default_value = "any")]
        source: String,
        #[arg(long, value_enum, default_value = "any")]
        protocol: RuleProtocol,
        /// Destination port or range (TCP/UDP); default any.
        #[arg(long, default_value = "any")]
        port: String,
        /// Destination prefix or address (e.g. a VIP); default any.
        #[arg(long, default_value = "any")]
        destination: String,
        /// 1-based position in the rule list.
        #[arg(long)]
        position: Option<usize>,
    },
    /// Remove the rule at INDEX (as `fw list` numbers them).
    Remove { index: usize },
    /// Rules with their counters, block-list size and drop counters.
    List,
    /// Replace the source block list with FILE: one prefix a line, `#` comments.
    Load { file: PathBuf },
}

pub async fn run(socket: &Path, cmd: Command) -> anyhow::Result<()> {
    let req = match cmd {
        Command::List => return super::stats::list_firewall(socket).await,
        Command::Add {
            action,
            source,
            protocol,
            port,
            destination,
            position,
        } => {
            let rule = RuleConfig {
                action,
                source,
                protocol,
                port,
                destination,
            };
            // Same checks as the daemon's, so mistakes are caught before the round trip.
            foobar_lb::firewall::compile(&rule)?;
            Request::FwAdd { rule, position }
        }
        Command::Remove { index } => Request::FwRemove { index },
        // Read here and sent whole: the daemon never opens a path a client names.
        Command::Load { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let name = std::fs::canonicalize(&file).unwrap_or(file);
            Request::FwLoad {
                name: name.display().to_string(),
                text,
            }
        }
    };
    let resp = call(socket, req).await?;
    println!("{}", resp.message.unwrap_or_default());
    Ok(())
}
