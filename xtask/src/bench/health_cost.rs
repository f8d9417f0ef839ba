//! The CPU cost of health-checking many backends: `n` HTTP backends (extra addresses on the two
//! web servers, served by the same nginx), checked every second, daemon CPU over a window.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use foobar_lb_tests::{
    daemon::Daemon,
    netns::{Topology, VIP4},
};
use serde::Serialize;

/// USER_HZ on Linux: the unit of utime and stime in /proc/<pid>/stat.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Serialize)]
pub struct HealthCost {
    pub backends: usize,
    pub check: String,
    pub interval_ms: u64,
    pub seconds: f64,
    /// Daemon CPU time over the window, as a percentage of one core.
    pub cpu_percent_of_one_core: f64,
    pub backends_up: usize,
}

pub fn run_health_cost(topo: &Topology, n: usize, seconds: u32) -> Result<HealthCost> {
    let path = write_config(topo, n)?;
    let socket = topo.dir.join("control.sock");
    println!("bench health: {n} HTTP backends checked every 1 s, {seconds} s window...");
    let d = Daemon::start(&topo.lb, &path, &socket)?;
    thread::sleep(Duration::from_secs(2));
    let (t0, c0) = (Instant::now(), cpu_ticks(d.pid())?);
    thread::sleep(Duration::from_secs(seconds as u64));
    let (dt, c1) = (t0.elapsed().as_secs_f64(), cpu_ticks(d.pid())?);
    let up = d
        .stats()
        .services
        .iter()
        .map(|s| s.backends.iter().filter(|b| b.health == "up").count())
        .sum();
    drop(d);
    Ok(HealthCost {
        backends: n,
        check: "http GET /".into(),
        interval_ms: 1000,
        seconds: dt,
        cpu_percent_of_one_core: (c1 - c0) as f64 / USER_HZ / dt * 100.0,
        backends_up: up,
    })
}

/// Adds the backend addresses and writes the daemon's config; returns its path.
fn write_config(topo: &Topology, n: usize) -> Result<std::path::PathBuf> {
    let addr = |i: usize| format!("10.112.{}.{}", 1 + i / 200, 1 + i % 200);
    topo.lb
        .ip(&["addr", "add", "10.112.0.2/16", "dev", "eth0"])?;
    for i in 0..n {
        let web = topo.web(1 + i % 2);
        web.ip(&[
            "addr",
            "add",
            &format!("{}/16", addr(i)),
            "dev",
            "eth0",
            "nodad",
        ])?;
    }
    let socket = topo.dir.join("control.sock");
    let mut cfg = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"generic\"\ncontrol_socket = \"{}\"\npin_dir = \"{}\"\nmetrics_address = \"\"\n",
        socket.display(),
        topo.pin_dir().display()
    );
    // A service holds at most 256 backends: spread them over services of 100.
    for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(100).enumerate() {
        cfg += &format!(
            "\n[[service]]\nname = \"many{k}\"\nvip = \"{VIP4}\"\nport = {}\n[service.health]\ncheck = \"http\"\nport = 80\ninterval_ms = 1000\ntimeout_ms = 500\n",
            1000 + k
        );
        for &i in chunk {
            cfg += &format!("[[service.backend]]\naddress = \"{}\"\n", addr(i));
        }
    }
    let path = topo.dir.join("many.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// The process's user + system CPU time so far, in USER_HZ ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name: state is 3rd; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}
