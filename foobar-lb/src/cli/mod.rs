//! Command-line interface: one file per subcommand.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use foobar_lb::{
    api::{self, Request, Response},
    config::default_control_socket,
};

mod backend;
mod bird;
mod check;
mod flows;
mod fw;
mod keepalived;
mod maglev;
mod node;
mod run;
mod service;
mod stats;
mod teardown;
mod top;

#[derive(Parser)]
#[command(name = "foobar-lb", version, about = "XDP Layer-4 load balancer")]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "FOOBAR_LB_SOCKET", default_value_os_t = default_control_socket())]
    socket: PathBuf,
    /// Seconds to wait for the daemon's answer.
    #[arg(long, global = true, env = "FOOBAR_LB_TIMEOUT", value_name = "SECONDS",
          default_value_t = api::DEFAULT_CLIENT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Log lines as text, or one JSON object per line (for log pipelines).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "FOOBAR_LB_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: foobar_lb::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    pub fn log_format(&self) -> foobar_lb::logging::LogFormat {
        self.log_format
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer daemon on the configured interfaces.
    Run(run::Args),
    /// Health, role, state, flows and counters of every service and backend.
    Status(stats::Args),
    /// Per-service, per-backend and per-verdict counters.
    Stats(stats::Args),
    /// A live terminal view of every backend, busiest first (q quits, s switches the sort).
    Top(top::Args),
    /// Tracked NAT connections (client, VIP, backend, state, idle time), like `conntrack -L`.
    Flows(flows::Args),
    /// Add, remove, drain or list backends of a running daemon.
    #[command(subcommand)]
    Backend(backend::Command),
    /// Add, remove or list services of a running daemon.
    #[command(subcommand)]
    Service(service::Command),
    /// Firewall rules and the source block list of a running daemon.
    #[command(subcommand)]
    Fw(fw::Command),
    /// Print the running configuration, runtime changes included, as a config file
    /// (`foobar-lb config-dump > foobar-lb.toml` makes them permanent).
    ConfigDump,
    /// Make the daemon read its config file again and apply what changed (as SIGHUP does);
    /// runtime changes not saved to the file are dropped.
    Reload,
    /// Detach the program and remove the pinned data plane a daemon left behind.
    Teardown(teardown::Args),
    /// Exit 0 when the daemon answers and XDP is attached on every configured interface;
    /// exit 1 with the reason otherwise (keepalived's `track_script`, see `keepalived-config`).
    Ready,
    /// Print the keepalived.conf of one node of an active-passive pair: VRRP by unicast to
    /// the peer, sub-second adverts, the VIPs tracking `foobar-lb ready`.
    KeepalivedConfig(keepalived::Args),
    /// Withdraw (drain) or announce again (undrain) this node's VIPs (`[announce]`,
    /// active-active behind ECMP routers).
    #[command(subcommand)]
    Node(node::Command),
    /// Print the bird.conf of one node of an active-active group: BGP to the routers,
    /// announcing the VIPs the daemon keeps on the `[announce]` interface, BFD.
    BirdConfig(bird::Args),
    /// Show how this binary was built; fails if it lacks its XDP program.
    Info,
    /// Build Maglev tables for synthetic backends: build time, balance, flows moved when one
    /// backend leaves (for sizing `maglev_table_size`; JSON).
    MaglevStats(maglev::Args),
    /// Print a shell completion script (for packaging: bash, zsh, fish, ...).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    Manpage,
    /// Validate a configuration file without touching the kernel.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
}

/// `--timeout`, set once by [`dispatch`].
static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sends one request to the daemon, waiting at most `--timeout` for the answer.
pub async fn call(socket: &std::path::Path, req: Request) -> anyhow::Result<Response> {
    let timeout = *TIMEOUT.get().unwrap_or(&api::DEFAULT_CLIENT_TIMEOUT);
    Ok(api::call(socket, &req, timeout).await?)
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let _ = TIMEOUT.set(Duration::from_secs(cli.timeout));
    let socket = cli.socket;
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Status(args) => stats::run(&socket, args, true).await,
        Command::Stats(args) => stats::run(&socket, args, false).await,
        Command::Top(args) => top::run(&socket, args).await,
        Command::Flows(args) => flows::run(&socket, args).await,
        Command::Backend(cmd) => backend::run(&socket, cmd).await,
        Command::Service(cmd) => service::run(&socket, cmd).await,
        Command::Fw(cmd) => fw::run(&socket, cmd).await,
        Command::Teardown(args) => teardown::run(args),
        Command::ConfigDump => {
            let resp = call(&socket, Request::ConfigDump).await?;
            print!("{}", resp.message.unwrap_or_default());
            Ok(())
        }
        Command::Ready => {
            let resp = call(&socket, Request::Ready).await?;
            println!("{}", resp.message.unwrap_or_default());
            Ok(())
        }
        Command::KeepalivedConfig(args) => keepalived::run(&socket, args),
        Command::Node(cmd) => node::run(&socket, cmd).await,
        Command::BirdConfig(args) => bird::run(args),
        Command::Reload => {
            let resp = call(&socket, Request::Reload).await?;
            println!("{}", resp.message.unwrap_or_default());
            Ok(())
        }
        Command::CheckConfig { config } => check::run(&config),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "foobar-lb", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::MaglevStats(args) => maglev::run(&args),
        Command::Info => match foobar_lb::dataplane::object_status() {
            Ok(route) => {
                println!(
                    "foobar-lb {}: XDP program built ({route})",
                    env!("CARGO_PKG_VERSION")
                );
                Ok(())
            }
            Err(why) => anyhow::bail!(
                "this binary has no XDP program ({why}): run `cargo xtask setup`, then rebuild"
            ),
        },
    }
}
