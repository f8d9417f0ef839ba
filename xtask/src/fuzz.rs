//! `cargo xtask fuzz [--frames N] [--seed S]`: differential fuzzing of the XDP program against
//! the reference model (`tests/src/model`, `tests/src/fuzz`), through BPF_PROG_TEST_RUN.

use std::time::Instant;

use anyhow::{bail, Result};
use foobar_lb_tests::{fuzz, model::known_bugs::KNOWN_PROGRAM_BUGS};

#[derive(clap::Args)]
pub struct Args {
    /// Frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// PRNG seed: frame i of seed S is always the same frame.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many disagreements (known program bugs are not counted).
    #[arg(long, default_value_t = 10)]
    max_disagreements: usize,
}

pub fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("fuzz loads the XDP program (BPF_PROG_TEST_RUN): run it as root");
    }
    println!(
        "fuzz: {} frames, seed {}, against the reference model",
        args.frames, args.seed
    );
    let start = Instant::now();
    let st = fuzz::run(
        &fuzz::Options {
            max_disagreements: args.max_disagreements,
            ..fuzz::Options::new(args.frames, args.seed)
        },
        |st| {
            println!(
                "fuzz: {:>9} frames, {} disagreements, {} known program bug, {:.0} s",
                st.frames,
                st.disagreements.len(),
                st.known_bugs.values().map(|(n, _)| n).sum::<u64>(),
                start.elapsed().as_secs_f64()
            );
        },
    );
    for d in &st.disagreements {
        println!("\n{d}");
    }
    println!("\nstate changes during the run:");
    for e in &st.events {
        println!("  {e}");
    }
    for (id, (n, first)) in &st.known_bugs {
        let bug = KNOWN_PROGRAM_BUGS.iter().find(|b| b.id == *id).unwrap();
        println!(
            "\nknown program bug {id} ({n} frames): {}\nfirst frame:\n{first}",
            bug.summary
        );
    }
    println!(
        "\nfuzz: seed {} in {:.0} s\n{}",
        args.seed,
        start.elapsed().as_secs_f64(),
        st.summary()
    );
    if !st.disagreements.is_empty() {
        bail!(
            "{} disagreements between the program and the model (seed {}); frame i of a seed \
             is reproduced by `cargo xtask fuzz --seed S --frames i+1` (flows depend on earlier frames)",
            st.disagreements.len(),
            args.seed
        );
    }
    Ok(())
}
