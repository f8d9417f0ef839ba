//! `cargo xtask run`: foobar-lb in front of two nginx web servers, in network namespaces that
//! play www.foobar.com. Ctrl-C stops it and removes everything it created.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use foobar_lb_tests::netns::{Topology, VIP4, VIP6};

use crate::{build, setup};

#[derive(clap::Args)]
pub struct Args {
    /// XDP attach mode: generic was measured faster on veth; native is what real NICs want.
    #[arg(long, default_value = "generic", value_parser = ["auto", "native", "generic"])]
    xdp_mode: String,
}

pub fn run(args: Args) -> Result<()> {
    setup::run()?;
    let bin = build::release()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    println!("demo: creating network namespaces (client, load balancer, web1, web2, bridge)...");
    let topo = Topology::new("demo", 2)?;
    topo.start_web(1)?;
    topo.start_web(2)?;
    let _pass = topo.attach_lb_peer_pass()?;
    let socket = topo.dir.join("control.sock");
    let config = topo.write_config(&args.xdp_mode, &socket)?;
    println!("demo: config {}", config.display());
    let mut daemon = topo
        .lb
        .cmd(bin.to_str().unwrap())
        .args(["run", "--detach-on-exit", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start foobar-lb")?;
    let c = &topo.client.name;
    println!(
        "\ndemo: www.foobar.com is {VIP4} and [{VIP6}], port 80. Try, in another terminal:\n\
         \n  for i in $(seq 6); do ip netns exec {c} curl -s http://{VIP4}/; done\
         \n  ip netns exec {c} curl -s -g 'http://[{VIP6}]/'\
         \n  {} status --socket {}\
         \n\nCtrl-C stops the demo and removes the namespaces.\n",
        bin.display(),
        socket.display()
    );
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            break if status.success() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("foobar-lb exited: {status}"))
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if daemon.try_wait()?.is_none() {
        let _ = Command::new("kill").arg(daemon.id().to_string()).status();
        let _ = daemon.wait();
    }
    drop(topo);
    println!("demo: stopped; namespaces removed");
    if let Err(e) = result {
        bail!("{e}");
    }
    Ok(())
}
