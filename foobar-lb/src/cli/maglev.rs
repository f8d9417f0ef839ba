//! `foobar-lb maglev-stats`: builds Maglev tables for synthetic backends and reports what an
//! operator sizing a table (and the benchmark) wants to know: build time, balance, and how
//! many other flows move when one backend leaves.

use std::{net::IpAddr, time::Instant};

use clap::Args as ClapArgs;
use foobar_lb::schedule::{Member, Scheduler};
use serde::Serialize;

#[derive(ClapArgs)]
pub struct Args {
    /// Number of backends (equal weights).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=65536))]
    backends: u32,
    /// Table size (a prime up to 65537).
    #[arg(long, default_value_t = foobar_lb_common::MAGLEV_DEFAULT_SIZE)]
    table_size: u32,
    /// Builds to time (the median is reported).
    #[arg(long, default_value_t = 21, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
}

#[derive(Serialize)]
struct Stats {
    backends: u32,
    table_size: u32,
    /// Median build time of the whole table.
    build_ms: f64,
    /// Most slots of one backend over the mean (1.0 = perfect balance).
    max_over_mean: f64,
    /// Fewest slots of one backend over the mean.
    min_over_mean: f64,
    /// Share of the slots not held by the removed backend that change backend when one of
    /// `backends` is removed (0 is the minimum).
    moved_when_one_removed: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.table_size as usize > foobar_lb_common::MAX_SLOTS || args.table_size < args.backends {
        anyhow::bail!(
            "--table-size must be at least --backends and at most {}",
            foobar_lb_common::MAX_SLOTS
        );
    }
    let members: Vec<Member> = (0..args.backends)
        .map(|i| Member {
            id: i + 1,
            weight: 1,
            addr: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        })
        .collect();
    let sched = Scheduler::Maglev {
        table_size: args.table_size,
    };
    let mut times = Vec::new();
    let mut table = sched.slots(&members);
    for _ in 0..args.rounds {
        let start = Instant::now();
        table = sched.slots(&members);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let m = args.table_size as usize;
    let mut counts = vec![0u32; args.backends as usize + 1];
    for &id in &table.slots[..m] {
        counts[id as usize] += 1;
    }
    let mean = m as f64 / args.backends as f64;
    let held = &counts[1..];
    let after = sched.slots(&members[1..]);
    let (mut kept, mut moved) = (0u64, 0u64);
    for (a, b) in table.slots[..m].iter().zip(&after.slots[..m]) {
        if *a != members[0].id {
            kept += 1;
            moved += u64::from(a != b);
        }
    }
    let stats = Stats {
        backends: args.backends,
        table_size: args.table_size,
        build_ms: times[times.len() / 2],
        max_over_mean: *held.iter().max().unwrap_or(&0) as f64 / mean,
        min_over_mean: *held.iter().min().unwrap_or(&0) as f64 / mean,
        moved_when_one_removed: moved as f64 / kept.max(1) as f64,
    };
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
