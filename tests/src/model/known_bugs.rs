//! Known program bugs: where the XDP program differs from README's policy, each with the
//! model switch ([`Quirks`]) that makes the model predict what the program does instead. A
//! comparison that disagrees with the model re-judges the frame with each bug's quirk: when
//! the program's outcome is exactly that prediction, the frame is reported under the bug
//! (never counted as passing); otherwise it is a new disagreement.
//!
//! None today. Fixed ones, each with its fixture in `tests/tests/fuzz.rs`:
//! - `prefilter-collision`: a non-VIP destination sharing a VIP's prefilter bit was judged as
//!   VIP traffic (checksum, flags, martian and no-flow drops, `pass_other_host`/`vlan`);
//! - `suspect-other-host-counted-pass`: a malformed or fragmented VIP packet in a frame for
//!   another MAC was counted `pass`, not `pass_other_host`.

/// Deviations the model can reproduce: a field per known bug, read by `verdict.rs` where the
/// program departs from README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {}

impl Quirks {
    pub const NONE: Quirks = Quirks {};
}

pub struct KnownBug {
    pub id: &'static str,
    pub summary: &'static str,
    pub quirks: Quirks,
}

pub const KNOWN_PROGRAM_BUGS: &[KnownBug] = &[];
