//! Decisions that are about to change: another change (fragments, extension-header chains and
//! VLANs meeting the firewall, a per-interface VLAN allow-list) is being made to the XDP
//! program. Each is one named constant or function here, stating what the program does today,
//! so updating the model when that change lands is an edit of this file (and of the unit tests
//! that name these constants).

/// Extension headers (hop-by-hop, routing, destination options) the parser skips before it
/// gives up on finding TCP/UDP. A longer chain is seen with the extension header as its
/// protocol and port 0, so port rules miss it (today: the in-flight change treats it as
/// matching port rules).
pub const MAX_V6_EXT_HEADERS: usize = 3;

/// Whether a frame the parser finds unusable (malformed, truncated, fragmented) to a non-VIP
/// address, or in a frame for another MAC, meets the firewall rules. Today: no, it passes
/// untouched (the in-flight change: fragments meet rules on L3 fields, rules needing ports
/// count as matching).
pub const SUSPECT_FRAMES_MEET_RULES: bool = false;

/// Whether an 802.1Q/802.1ad-tagged frame with this VLAN id is balanced on the interface.
/// Today every VLAN is (the in-flight change: a per-interface allow-list; others pass).
pub fn vlan_balanced(_vid: u16) -> bool {
    true
}

/// VLAN tags the parser strips. A frame with more (QinQ) is not parsed: it passes to the
/// kernel without meeting the firewall (the in-flight change: double-tagged frames meet it).
pub const MAX_VLAN_TAGS: usize = 1;
