//! Counter layouts: per verdict, per service, per backend. All per-CPU; userspace sums them.

/// Index into [`crate::MAP_VERDICT_STATS`]: why the program returned what it returned.
/// Plain constants (not an enum) so the map index is the documented number.
pub mod verdict {
    /// Not for a service: handed to the kernel stack untouched.
    pub const PASS: u32 = 0;
    /// Forwarded to a backend (XDP_TX).
    pub const TX: u32 = 1;
    /// For a VIP but malformed or truncated.
    pub const DROP_MALFORMED: u32 = 2;
    /// For a VIP but fragmented (no L4 header to balance on).
    pub const DROP_FRAGMENT: u32 = 3;
    /// The service has no backend that can take a new flow.
    pub const DROP_NO_BACKEND: u32 = 4;
    /// A slot named a backend id that is unset or belongs to another service.
    pub const DROP_BAD_SLOT: u32 = 5;
    /// An internal error (map lookup that cannot fail did): XDP_ABORTED.
    pub const ABORTED: u32 = 6;
    /// Dropped by a firewall rule.
    pub const DROP_FW_RULE: u32 = 7;
    /// Source address in the block list.
    pub const DROP_BLOCKLIST: u32 = 8;
    /// For a VIP address but no service, on an interface whose VIP policy is drop.
    pub const DROP_VIP_POLICY: u32 = 9;
    /// New flow over its source's rate limit.
    pub const DROP_RATE_LIMIT: u32 = 10;
    /// For a VIP but not addressed to the receiving interface's MAC (broadcast, multicast,
    /// another host's frame flooded by a switch): passed to the kernel untouched, never
    /// forwarded.
    pub const PASS_OTHER_HOST: u32 = 11;
    /// A TCP FIN or RST that belongs to no flow in the table: it cannot create one.
    pub const DROP_NO_FLOW: u32 = 12;
    /// For a VIP, IPv4 header checksum wrong.
    pub const DROP_BAD_CHECKSUM: u32 = 13;
    /// For a VIP, with an IPv4 loose or strict source-route option.
    pub const DROP_SOURCE_ROUTE: u32 = 14;
    /// For a VIP from a source no real client has: unspecified, loopback, multicast, reserved,
    /// v4-mapped, or a VIP itself (LAND).
    pub const DROP_MARTIAN: u32 = 15;
    /// For a VIP, TCP flags no connection state allows (NULL, SYN+FIN, XMAS, FIN without ACK,
    /// ...), as Linux conntrack judges them.
    pub const DROP_BAD_TCP_FLAGS: u32 = 16;
    /// For a VIP, an IPv6 packet whose extension-header chain is longer than the parser walks
    /// (three option/routing headers and a fragment header): its L4 header is unknown.
    pub const DROP_EXT_HEADERS: u32 = 17;
    /// For a VIP in a frame the interface does not balance for its VLAN tag (a VLAN not
    /// configured for the interface, or two tags): passed to the kernel untouched after the
    /// firewall, never forwarded.
    pub const PASS_OTHER_VLAN: u32 = 18;
    /// A NAT service's new flow whose reply 5-tuple (backend:port -> client:port) another
    /// tracked connection already has: two VIPs translated to the same backend port, reached
    /// from the same client port. Dropped: its replies could not be told apart.
    pub const DROP_NAT_COLLISION: u32 = 19;
    /// A NAT service's new flow when the NAT connection table is full (`nat_table_size`):
    /// tracked connections are never evicted to make room.
    pub const DROP_NAT_TABLE_FULL: u32 = 20;
    /// A backend's reply to a NAT connection, translated back to the VIP and sent to the
    /// client (XDP_TX).
    pub const TX_NAT_REPLY: u32 = 21;
    /// A full-NAT service's new flow for which none of the candidate source ports
    /// (`SNAT_PORT_TRIES`, from the flow's hash) was free towards its backend: the SNAT
    /// addresses or port range are too few for the connections to that backend.
    pub const DROP_SNAT_EXHAUSTED: u32 = 22;
    /// TCP/UDP to a SNAT address, on a port inside its SNAT range, that is no tracked
    /// connection's reply: nothing on the host may use those ports.
    pub const DROP_SNAT_STRAY: u32 = 23;
    /// A full-NAT service's new flow whose backend (or its router) has no neighbour entry on
    /// the balancer (the FIB lookup's `NO_NEIGH`): the controller's health checks keep it.
    pub const DROP_FIB_NO_NEIGH: u32 = 24;
    /// A full-NAT service's new flow with no route to its backend from the SNAT address, or
    /// forwarding disabled on the receiving interface (any other FIB lookup failure).
    pub const DROP_FIB_NO_ROUTE: u32 = 25;
    /// A TCP RST from a NAT or full-NAT backend to a tracked connection that has had no reply
    /// yet (the backend refused the client's SYN: nothing listens on its port). Not forwarded:
    /// the connection is forgotten (both entries), so the client's SYN retransmission is
    /// scheduled anew, and the refusal is counted per backend (`BACKEND_REFUSED`) for the
    /// controller's passive health (`observe = "layer4"`).
    pub const DROP_SYN_REFUSED: u32 = 26;
    /// Forwarded to a backend, or a NAT reply sent to its client, out of another interface
    /// than the one it came in on (XDP_REDIRECT: a two-arm balancer, or a full-NAT backend
    /// the FIB reaches through another interface).
    pub const TX_REDIRECT: u32 = 27;
    /// Number of verdict counters.
    pub const COUNT: u32 = 28;

    /// Names in index order, for stats output and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "tx",
        "drop_malformed",
        "drop_fragment",
        "drop_no_backend",
        "drop_bad_slot",
        "aborted",
        "drop_fw_rule",
        "drop_blocklist",
        "drop_vip_policy",
        "drop_rate_limit",
        "pass_other_host",
        "drop_no_flow",
        "drop_bad_checksum",
        "drop_source_route",
        "drop_martian",
        "drop_bad_tcp_flags",
        "drop_ext_headers",
        "pass_other_vlan",
        "drop_nat_collision",
        "drop_nat_table_full",
        "tx_nat_reply",
        "drop_snat_exhausted",
        "drop_snat_stray",
        "drop_fib_no_neigh",
        "drop_fib_no_route",
        "drop_syn_refused",
        "tx_redirect",
    ];
}

/// Packet counters of one service or one backend (per CPU in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows this service/backend was chosen for by the scheduler.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 24);

impl Counters {
    /// Adds another CPU's counters (userspace sums per-CPU values).
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
    }
}
