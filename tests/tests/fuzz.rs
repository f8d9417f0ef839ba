//! Differential fuzzing, bounded for CI: frames through the real XDP program and the
//! reference model (`tests/src/model`), which must agree on every one. Known program bugs
//! (`model::known_bugs`) are printed apart; they are not agreements. `cargo xtask fuzz` runs
//! the long version.

use foobar_lb_tests::fuzz;

#[test]
fn program_and_model_agree_on_20000_frames() {
    if !foobar_lb_tests::root_and_object() {
        return;
    }
    let frames = std::env::var("FOOBAR_LB_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let st = fuzz::run(
        &fuzz::Options {
            frames,
            seed: 1,
            max_disagreements: 5,
        },
        |_| {},
    );
    println!("{}", st.summary());
    for (id, (n, first)) in &st.known_bugs {
        println!("known program bug {id} ({n} frames), first:\n{first}");
    }
    for d in &st.disagreements {
        println!("{d}");
    }
    assert!(
        st.disagreements.is_empty(),
        "{} disagreements between the program and the model (printed above)",
        st.disagreements.len()
    );
    assert_eq!(st.frames, frames);
}
