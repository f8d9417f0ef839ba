//! Known program bugs: where the XDP program differs from README's policy, each with the
//! model switch ([`Quirks`]) that makes the model predict what the program does instead. A
//! comparison that disagrees with the model re-judges the frame with each bug's quirk: when
//! the program's outcome is exactly that prediction, the frame is reported under the bug
//! (never counted as passing); otherwise it is a new disagreement.

/// Deviations the model can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    /// A destination that is not a VIP but shares a VIP's prefilter bit is handled as VIP
    /// traffic in everything but the exact-set lookups: VIP sanity checks (IPv4 checksum,
    /// source route, TCP flags), martian sources, FIN/RST without a flow (`drop_no_flow`), and
    /// `pass_other_host` / `pass_other_vlan` for frames to other MACs or VLANs. README: such
    /// an address "also gets the block list", nothing more; the host's own traffic is the
    /// host's.
    pub prefilter_collision_is_vip: bool,
}

impl Quirks {
    pub const NONE: Quirks = Quirks {
        prefilter_collision_is_vip: false,
    };
}

pub struct KnownBug {
    pub id: &'static str,
    pub summary: &'static str,
    pub quirks: Quirks,
}

pub const KNOWN_PROGRAM_BUGS: &[KnownBug] = &[KnownBug {
    id: "prefilter-collision",
    summary: "a non-VIP destination sharing a VIP's prefilter bit is judged as VIP \
                  traffic (checksum/flags/martian/no-flow drops, pass_other_host/vlan) \
                  instead of only also meeting the block list",
    quirks: Quirks {
        prefilter_collision_is_vip: true,
    },
}];
