//! Map names, key and value layouts.

/// Map names: userspace opens maps by these, never by a spelled-out string.
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKEND_SETS: &str = "BACKEND_SETS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_RR_CURSORS: &str = "RR_CURSORS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_VERDICT_STATS: &str = "VERDICT_STATS";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_IFACES: &str = "IFACES";
/// The interfaces frames may be redirected to (a `DEVMAP_HASH`: ifindex -> itself): every
/// interface of ours, written with [`MAP_IFACES`]. Through a devmap, redirected frames are
/// queued and flushed in bulk, once per NAPI poll.
pub const MAP_EGRESS: &str = "EGRESS";
/// Interfaces [`MAP_EGRESS`] holds.
pub const MAX_EGRESS: u32 = 64;
pub const MAP_BACKEND_ADMIN: &str = "BACKEND_ADMIN";
pub const MAP_FLOW_CLOCK: &str = "FLOW_CLOCK";
pub const MAP_IFACE_VLANS: &str = "IFACE_VLANS";
pub const MAP_SUSPECT_SCRATCH: &str = "SUSPECT_SCRATCH";
pub const MAP_NAT_FWD: &str = "NAT_FWD";
pub const MAP_NAT_REV: &str = "NAT_REV";
pub const MAP_NAT_SRC_FILTER: &str = "NAT_SRC_FILTER";
pub const MAP_NAT_SCRATCH: &str = "NAT_SCRATCH";
pub const MAP_SUM_SCRATCH: &str = "SUM_SCRATCH";
pub const MAP_SNAT_POOLS: &str = "SNAT_POOLS";
pub const MAP_SNAT_ADDRS: &str = "SNAT_ADDRS";
/// Backend id -> refused SYNs (per CPU, `u64`): a NAT or full-NAT backend answered a new
/// connection's SYN with a RST (`drop_syn_refused`). The controller's passive health reads it.
pub const MAP_BACKEND_REFUSED: &str = "BACKEND_REFUSED";

/// [`MAP_BACKEND_ADMIN`] bit: the operator drained this backend. Userspace state only (the
/// program never reads it), pinned so a restarted daemon keeps the drain.
pub const ADMIN_DRAINED: u32 = 1;
/// [`MAP_BACKEND_ADMIN`] bit: health checks hold this backend down (its entry may still keep
/// its flows): a restarted daemon must not take it for up.
pub const ADMIN_HEALTH_DOWN: u32 = 2;
/// [`MAP_BACKEND_ADMIN`] of a retired (free) backend id: its retirement sequence number,
/// shifted by this, so a restarted daemon reuses ids oldest-first as the previous one did.
pub const ADMIN_RETIRED_SHIFT: u32 = 8;

/// `Backend::owner` and `FlowValue::owner`: the service id in the low 16 bits, the backend
/// id's generation (bumped each time the id is given to a backend) in the high 16. A flow
/// entry follows its backend id only while both words are equal, so a reused id never
/// inherits another backend's flows, in its own service or another.
#[inline(always)]
pub const fn owner(service_id: u32, generation: u16) -> u32 {
    ((generation as u32) << 16) | (service_id & 0xffff)
}

/// The service id in an owner word (see [`owner`]).
#[inline(always)]
pub const fn owner_service(owner: u32) -> u32 {
    owner & 0xffff
}

/// The id generation in an owner word (see [`owner`]).
#[inline(always)]
pub const fn owner_generation(owner: u32) -> u16 {
    (owner >> 16) as u16
}

/// Name of the XDP program in the object file.
pub const PROG_NAME: &str = "foobar_lb";
/// An XDP_PASS program in the same object, for veth peers in test topologies.
pub const PASS_PROG_NAME: &str = "foobar_lb_pass";
/// The benchmark's minimal MAC-rewrite program (fixed backend, no maps).
pub const BENCH_FIXED_PROG_NAME: &str = "foobar_lb_bench_fixed";
pub const BENCH_MAC_GLOBAL: &str = "BENCH_MAC";

/// Services (VIP, port, protocol) the data plane knows; ids index the per-service arrays.
pub const MAX_SERVICES: u32 = 256;
/// Backend ids index [`MAP_BACKENDS`]; id 0 is reserved so an unset slot never forwards.
pub const MAX_BACKENDS: u32 = 4096;
/// Slots a service's set can hold: the largest Maglev table (a prime). Round robin uses at most
/// [`RR_SLOTS`] of them.
pub const MAX_SLOTS: usize = 65537;
/// Slots weighted round robin lays backends out in: room for every backend of a full service
/// at any weight to get its share within one slot.
pub const RR_SLOTS: usize = 4096;
/// Default Maglev table size (a prime, as Maglev needs).
pub const MAGLEV_DEFAULT_SIZE: u32 = 65537;
/// Backends per service.
pub const MAX_SERVICE_BACKENDS: usize = 256;
/// Highest backend weight.
pub const MAX_WEIGHT: u32 = 256;
/// Flow table capacity compiled into the object; the controller sets the real size at load time
/// (`flow_table_size` in the config).
pub const MAX_FLOWS: u32 = 1 << 18;
/// Default flow table capacity (about 25 MiB of kernel memory).
pub const DEFAULT_FLOWS: u32 = 1 << 18;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An IPv4 or IPv6 address as four 32-bit words in network byte order, exactly as they appear
/// in the packet. IPv4 uses word 0 and leaves words 1..3 zero.
pub type Addr = [u32; 4];

/// Key of [`MAP_SERVICES`]: a virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub vip: Addr,
    /// Destination port, network byte order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Index into the per-service maps; `< MAX_SERVICES`.
    pub id: u32,
    /// Low 8 bits: the prefix length IPv6 sources share a rate-limit bucket by (0: 64);
    /// [`SVC_MAGLEV`]: new flows pick their slot by [`flow_hash`], not the round-robin cursor.
    pub flags: u32,
    /// New flows per second allowed per source address; 0 = unlimited.
    pub rate_per_sec: u32,
    /// Token-bucket depth for `rate_per_sec`.
    pub burst: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 16);

/// [`ServiceInfo::flags`] bit: the service's set is a Maglev table (see `flow_hash`).
pub const SVC_MAGLEV: u32 = 1 << 8;
/// [`ServiceInfo::flags`] bit: the service forwards by destination NAT ([`FWD_NAT`]): its new
/// flows are tracked in [`MAP_NAT_FWD`] / [`MAP_NAT_REV`], never in [`MAP_FLOWS`].
pub const SVC_NAT: u32 = 1 << 9;

/// The hash a Maglev service picks a new flow's slot by (`slot = hash % len`): every balancer
/// running this program gives a 5-tuple the same one, so all pick the same backend from the
/// same table. Address words and ports mixed with murmur3's finalizer.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h: u32 = 0x9747_b28c ^ key.proto as u32;
    let words = [
        key.src[0],
        key.src[1],
        key.src[2],
        key.src[3],
        key.dst[0],
        key.dst[1],
        key.dst[2],
        key.dst[3],
        (key.sport as u32) << 16 | key.dport as u32,
    ];
    let mut i = 0;
    while i < words.len() {
        let mut k = words[i].wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= 36;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Key of [`MAP_VIPS`]: a VIP address, used to tell "malformed packet for us" from "not ours".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// Value of [`MAP_BACKEND_SETS`], keyed by service id: the round-robin slots of one service.
///
/// The whole set is one map value in a hash map allocated without preallocation, so an update
/// swaps the element under RCU: a packet sees the old set or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSet {
    /// Number of valid entries in `slots`; 0 means no backend can take new flows.
    pub len: u32,
    pub _pad: u32,
    /// Backend ids; a weight-w backend occupies w slots, interleaved by userspace.
    pub slots: [u32; MAX_SLOTS],
}
const _: () = assert!(core::mem::size_of::<BackendSet>() == 8 + 4 * MAX_SLOTS);

impl BackendSet {
    pub const EMPTY: BackendSet = BackendSet {
        len: 0,
        _pad: 0,
        slots: [0; MAX_SLOTS],
    };
}

/// Backend states in [`Backend::state`].
pub const BACKEND_UNUSED: u32 = 0;
/// Takes new flows (when in its service's set) and keeps existing ones.
pub const BACKEND_ACTIVE: u32 = 1;
/// Keeps existing flows, takes no new ones (operator drain).
pub const BACKEND_DRAINING: u32 = 2;
/// Gone: existing flows are moved to another backend on their next packet.
pub const BACKEND_DOWN: u32 = 3;

/// Forwarding modes in [`Backend::fwd_mode`].
/// Direct server return: only the Ethernet header changes; the backend answers the client.
pub const FWD_DSR: u8 = 0;
/// Destination NAT (LVS "NAT", one arm): the destination address and port become the
/// backend's ([`Backend::port`]); the backend routes its replies through the balancer, which
/// translates their source back to the VIP (see [`NatFwd`], [`NatRev`]).
pub const FWD_NAT: u8 = 1;
/// Full NAT (LVS "FULLNAT"): as [`FWD_NAT`], and the source becomes a balancer-owned SNAT
/// address and an allocated port ([`SnatPool`]), so the backend answers the balancer whatever
/// its routes (and a backend can be a client of its own service). The service has [`SVC_NAT`]
/// set too: its connections are tracked in the same maps, marked [`NAT_FULL`].
pub const FWD_FULLNAT: u8 = 2;

/// Value of [`MAP_BACKENDS`], indexed by backend id.
///
/// Userspace never rewrites the forwarding fields of an id that is in use: a changed backend
/// gets a new id. Only `state`, one aligned word, changes in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: Addr,
    /// MAC address of the backend on the load balancer's segment.
    pub mac: [u8; 6],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// How packets reach this backend: one of the `FWD_*` modes. Read on every forwarded
    /// packet, established flows included, so the rewrite is chosen per backend.
    pub fwd_mode: u8,
    /// The service this backend belongs to and the id's generation (see [`owner`]).
    pub owner: u32,
    /// One of the `BACKEND_*` states.
    pub state: u32,
    /// [`FWD_NAT`]: the port the destination port becomes, network byte order (0 in other
    /// modes).
    pub port: u16,
    pub _pad: [u8; 2],
    /// [`FWD_NAT`]: the interface the backend is on, when it is not the one the client's
    /// packet came in on (a two-arm balancer: the packet is redirected there). 0: the receiving
    /// interface (what entries written before this field hold).
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 40);

/// Interfaces the program can be attached to are indexed by ifindex in [`MAP_IFACES`], below
/// this bound (an array read per packet is cheaper than a hash lookup).
pub const MAX_IFINDEX: u32 = 65_536;

/// Value of [`MAP_IFACES`], indexed by ifindex: the interface as the data plane needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Iface {
    /// The interface's own MAC: only frames addressed to it are balanced, and forwarded frames
    /// leave with it as their source.
    pub mac: [u8; 6],
    /// [`IFACE_ACTIVE`] once the controller has written the entry (0: not one of ours), and
    /// [`IFACE_GENERIC`].
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<Iface>() == 8);

/// [`Iface::flags`]: the entry is set.
pub const IFACE_ACTIVE: u16 = 1;
/// [`Iface::flags`]: the program runs on this interface in generic (skb) mode, where a frame
/// stays the kernel's skb through the program and keeps its checksum state (see
/// `partial::finish` in the XDP program).
pub const IFACE_GENERIC: u16 = 2;

/// Key of [`MAP_IFACE_VLANS`]: a VLAN whose tagged frames an interface balances (the value is
/// unused). Frames with another tag, or two tags, are not balanced.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VlanKey {
    pub ifindex: u32,
    /// The VLAN id (12 bits of the tag; 0: priority-tagged frames).
    pub vlan: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<VlanKey>() == 8);

/// Value of [`MAP_SUSPECT_SCRATCH`] (one per CPU, never read by userspace): what the program's
/// path for unbalanceable packets hands its firewall check.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SuspectScratch {
    pub key: FlowKey,
    /// Bit 0: the key's protocol and ports are the real ones; bit 1: the block list applies.
    pub flags: u32,
    /// The verdict if the packet passes the firewall.
    pub pass_as: u32,
}
const _: () = assert!(core::mem::size_of::<SuspectScratch>() == 48);

/// Value of [`MAP_SUM_SCRATCH`] (one per CPU, never read by userspace): where the program sums
/// a TCP/UDP segment whose checksum arrived partial, [`SUM_CHUNK`] bytes at a time (the last
/// chunk zero-padded to whole words within them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SumScratch {
    pub buf: [u32; SUM_CHUNK / 4],
}
/// What one `bpf_csum_diff` call sums at most (the kernel's limit).
pub const SUM_CHUNK: usize = 512;
const _: () = assert!(core::mem::size_of::<SumScratch>() == SUM_CHUNK);

/// Value of [`MAP_NAT_SCRATCH`] (one per CPU, never read by userspace): the parsed packet as
/// the NAT paths read it back (see the map's doc in the program).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatScratch {
    pub key: FlowKey,
    pub l3_off: u16,
    pub l4_off: u16,
    pub tcp_flags: u8,
    /// 1 if the packet's TCP/UDP checksum looked partial on arrival (`partial::note`).
    pub partial: u8,
    pub _pad: [u8; 2],
    /// The full-NAT connection this packet belongs to, for its rewrite (`nat::forward_full`):
    /// written by the lookup or the open that found or made it. Also where a new connection's
    /// entries and FIB lookup are built (`nat::open`): the program's 512-byte stack cannot
    /// hold them beside the rest.
    pub conn: NatFwd,
    pub rev: NatRev,
    pub rkey: FlowKey,
    /// A `struct bpf_fib_lookup` (64 bytes).
    pub fib: [u32; 16],
    /// An ICMP error about a NAT connection, as decided for its translation (`nat_icmp`).
    pub icmp: NatIcmp,
}
const _: () = assert!(core::mem::size_of::<NatScratch>() == 352);

/// [`NatScratch::icmp`]: what the translation of an ICMP error about a NAT connection
/// writes (decided by the lookup that found the connection, done once at the program's exit).
/// Each change pairs an address of the quoted packet with the outer header's opposite one: the
/// quoted source is the peer the error is addressed to (outer destination), the quoted
/// destination the peer that reports (outer source, or a router on its path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatIcmp {
    /// The quoted packet's 5-tuple as it must become (addresses and ports of the pairs that
    /// change; the others are not read).
    pub quote: FlowKey,
    /// [`ICMP_QUOTE_SRC`] and/or [`ICMP_QUOTE_DST`]: the pairs that change.
    pub changes: u32,
    /// The interface the translated error leaves by, as the connection's own packets do
    /// (0: the receiving one).
    pub ifindex: u32,
    /// Its next hop's MAC and the source MAC for the receiving interface (another egress
    /// interface's own is set by the program's exit when it redirects there).
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The verdict counted when it is sent.
    pub verdict: u32,
    /// Which way the error goes if it is about a NAT connection: [`ICMP_TO_BACKEND`] (it
    /// came for a VIP) or 0 (to the client).
    pub toward: u32,
    /// The verdict if it is about none (a drop verdict drops it, `PASS` passes it).
    pub fallback: u32,
}
const _: () = assert!(core::mem::size_of::<NatIcmp>() == 72);

/// [`NatIcmp::toward`]: an error for a VIP, about the reply side of a connection.
pub const ICMP_TO_BACKEND: u32 = 1;

/// [`NatIcmp::changes`] bit: the quoted source address and port, and the outer destination
/// address, become `quote.src` / `quote.sport`.
pub const ICMP_QUOTE_SRC: u32 = 1;
/// [`NatIcmp::changes`] bit: the quoted destination address and port, and the outer source
/// address, become `quote.dst` / `quote.dport`.
pub const ICMP_QUOTE_DST: u32 = 2;

/// (interface, VLAN) pairs [`MAP_IFACE_VLANS`] can hold.
pub const MAX_IFACE_VLANS: u32 = 4096;

/// Key of [`MAP_FLOWS`]: the 5-tuple as seen on the wire, including the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Ports in network byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// Makes this key `src:sport -> dst:dport` of `like`'s protocol and family, in place: the
    /// program builds lookup keys in its per-CPU scratch map this way (a `FlowKey` value
    /// would be built on the stack, then copied).
    #[inline(always)]
    pub fn set(&mut self, src: &Addr, sport: u16, dst: &Addr, dport: u16, like: &FlowKey) {
        self.src = *src;
        self.dst = *dst;
        self.sport = sport;
        self.dport = dport;
        self.proto = like.proto;
        self.family = like.family;
        self._pad = [0; 2];
    }

    /// Makes this key the reverse of `k` (the other direction of its connection), in place.
    #[inline(always)]
    pub fn set_reverse_of(&mut self, k: &FlowKey) {
        self.set(&k.dst, k.dport, &k.src, k.sport, k);
    }
}

/// Value of [`MAP_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_id: u32,
    /// Firewall generation the flow was last checked under (see `FW_IDX_GEN`).
    pub fw_gen: u32,
    /// When the flow last had a packet ([`FLOW_TIME_MASK`] bits, in [`flow_time`] units) and
    /// whether a FIN ([`FLOW_FIN`]) or RST ([`FLOW_RST`]) was seen. A closing flow keeps its
    /// backend until the entry is evicted; open-flow counts age entries by this time.
    pub seen: u32,
    /// The backend's [`owner`] word when the flow was scheduled: a hit counts only while the
    /// backend id still has it (ids of removed backends are reused).
    pub owner: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);

/// [`FlowValue::seen`] bit: a TCP FIN was seen (the client closed its side; the connection may
/// still carry the server's data).
pub const FLOW_FIN: u32 = 1 << 30;
/// [`FlowValue::seen`] bit: a TCP RST was seen: the connection is over.
pub const FLOW_RST: u32 = 1 << 31;
/// [`FlowValue::seen`] bits holding the time.
pub const FLOW_TIME_MASK: u32 = FLOW_FIN - 1;

/// A monotonic clock reading (ns, `CLOCK_MONOTONIC`) in the units of [`FlowValue::seen`]:
/// 2^30 ns, about 1.07 s. The controller keeps the current value in [`MAP_FLOW_CLOCK`] for the
/// program to stamp flows with: one array read, where a clock helper call per packet costs
/// ~15 ns (measured: established flows 84 -> 99 ns).
#[inline(always)]
pub const fn flow_time(monotonic_ns: u64) -> u32 {
    (monotonic_ns >> 30) as u32 & FLOW_TIME_MASK
}

/// Whole [`flow_time`] units from `then` to `now` (the clock wraps after ~36 years).
#[inline(always)]
pub const fn flow_age(now: u32, then: u32) -> u32 {
    now.wrapping_sub(then) & FLOW_TIME_MASK
}

/// NAT connection tracking capacity compiled into the object; the controller sets the real one
/// at load time (`nat_table_size`). Both NAT maps have it: one pair of entries per connection.
pub const MAX_NAT: u32 = 1 << 18;
/// Default `nat_table_size`.
pub const DEFAULT_NAT: u32 = 1 << 18;

/// Value of [`MAP_NAT_FWD`], keyed by the client's 5-tuple as it reaches the balancer
/// (client -> VIP:vport, a [`FlowKey`]): where the connection was sent. The entry is never
/// evicted (a plain hash map): the userspace sweeper deletes it, with its [`NatRev`] pair,
/// when its idle timeout for its state passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatFwd {
    /// The backend address the destination became (wire order, as [`Addr`]).
    pub backend_addr: Addr,
    pub backend_id: u32,
    /// The backend's [`owner`] word when the flow was scheduled (see [`FlowValue::owner`]).
    pub owner: u32,
    /// Firewall generation the flow was last checked under.
    pub fw_gen: u32,
    /// The client side's last packet ([`FLOW_TIME_MASK`] bits) and its FIN ([`FLOW_FIN`]) and
    /// RST ([`FLOW_RST`]), as [`FlowValue::seen`]. Written by client -> backend packets only.
    pub seen: u32,
    /// The port the destination port became, network byte order.
    pub backend_port: u16,
    /// [`NAT_FULL`]: the port the source port became (network order); else 0.
    pub snat_port: u16,
    /// [`NAT_FULL`]: the interface the backend's next hop is on (from the FIB lookup at open).
    pub ifindex: u32,
    /// [`NAT_FULL`]: the address the source became (the SNAT address).
    pub snat_addr: Addr,
    /// [`NAT_FULL`]: the next hop's MAC (the backend, or its router) and the egress
    /// interface's own, as the FIB lookup at open gave them.
    pub next_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// [`NAT_FULL`] or 0.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<NatFwd>() == 72);

/// [`NatFwd::flags`], [`NatRev::flags`]: a full-NAT connection ([`FWD_FULLNAT`]).
pub const NAT_FULL: u32 = 1;

/// Value of [`MAP_NAT_REV`], keyed by the reply's 5-tuple as the backend sends it
/// (backend:bport -> client:cport for NAT, backend:bport -> snat:sport for full NAT, a
/// [`FlowKey`]): what its addresses become and where it goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatRev {
    /// The VIP the reply's source address becomes.
    pub vip: Addr,
    /// The source MAC of the client's first frame (its router, or the client on the segment):
    /// the reply's next hop, so no FIB lookup is needed.
    pub client_mac: [u8; 6],
    /// The port the reply's source port becomes (the service port), network byte order.
    pub vport: u16,
    /// Interface the client's frames came in on: the replies leave by it.
    pub ifindex: u32,
    /// The backend side's last packet and FIN/RST, as [`NatFwd::seen`]; written by
    /// backend -> client packets only. [`NAT_REPLIED`] once a reply has been translated.
    pub seen: u32,
    /// [`NAT_FULL`]: the client the reply's destination becomes (else unused: the reply is
    /// already addressed to it).
    pub client: Addr,
    /// [`NAT_FULL`]: the client's port the destination port becomes, network order.
    pub cport: u16,
    pub _pad: u16,
    /// [`NAT_FULL`] or 0.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<NatRev>() == 56);

/// [`NatRev::seen`] bit: the backend has answered (TCP: the connection is established; UDP: a
/// stream). It takes one bit of the time, which still wraps only after ~18 years.
pub const NAT_REPLIED: u32 = 1 << 29;
/// [`NatRev::seen`] bits holding the time.
pub const NAT_TIME_MASK: u32 = NAT_REPLIED - 1;

/// The [`MAP_NAT_REV`] key of the replies of a connection `fwd` tracks for client flow `key`:
/// to the client (NAT), or to the SNAT address and port (full NAT).
#[inline(always)]
pub fn nat_reply_key(key: &FlowKey, fwd: &NatFwd) -> FlowKey {
    let full = fwd.flags & NAT_FULL != 0;
    FlowKey {
        src: fwd.backend_addr,
        dst: if full { fwd.snat_addr } else { key.src },
        sport: fwd.backend_port,
        dport: if full { fwd.snat_port } else { key.sport },
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// SNAT addresses a full-NAT service may use per address family.
pub const MAX_SNAT_ADDRS: usize = 8;
/// Candidate source ports a new full-NAT connection tries before it is dropped
/// (`drop_snat_exhausted`).
pub const SNAT_PORT_TRIES: u32 = 8;
/// (SNAT address) entries [`MAP_SNAT_ADDRS`] can hold.
pub const MAX_SNAT_ENTRIES: u32 = 1024;

/// Value of [`MAP_SNAT_POOLS`], indexed by service id: the source addresses and port range a
/// full-NAT service's new connections take. Only the service's address family (its backends')
/// is stored. Replaced in one update; a connection keeps the address and port it got.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatPool {
    /// Addresses in `addrs` (0: the service is not full NAT, its new flows are dropped).
    pub count: u32,
    /// The source port range, host order, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    pub addrs: [Addr; MAX_SNAT_ADDRS],
}
const _: () = assert!(core::mem::size_of::<SnatPool>() == 8 + 16 * MAX_SNAT_ADDRS);

/// Value of [`MAP_SNAT_ADDRS`] (keyed by [`VipKey`]): the SNAT port range of that address,
/// `lo | hi << 16` (host order). A TCP/UDP packet to the address with a destination port in
/// it and no tracked connection is dropped (`drop_snat_stray`); other ports are the host's.
pub fn snat_range(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceInfo {}
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::BackendSet {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::Iface {}
    unsafe impl aya::Pod for super::VlanKey {}
    unsafe impl aya::Pod for super::SuspectScratch {}
    unsafe impl aya::Pod for super::SumScratch {}
    unsafe impl aya::Pod for super::NatFwd {}
    unsafe impl aya::Pod for super::NatRev {}
    unsafe impl aya::Pod for super::NatScratch {}
    unsafe impl aya::Pod for super::SnatPool {}
    unsafe impl aya::Pod for super::super::stats::Counters {}
    unsafe impl aya::Pod for crate::firewall::Rule {}
    unsafe impl aya::Pod for crate::firewall::RuleSet {}
    unsafe impl aya::Pod for crate::firewall::RateKey {}
    unsafe impl aya::Pod for crate::firewall::Bucket {}
    unsafe impl aya::Pod for crate::firewall::BlockKey4 {}
    unsafe impl aya::Pod for crate::firewall::BlockKey6 {}
    unsafe impl aya::Pod for crate::firewall::PrefixLens {}
    unsafe impl aya::Pod for crate::registry::Meta {}
}

/// Encodes an IP address as the data plane stores it: (words in network byte order, family).
pub fn encode_addr(ip: core::net::IpAddr) -> (Addr, u8) {
    match ip {
        core::net::IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        core::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The address [`encode_addr`] stored as `a` (family `family`).
pub fn decode_addr(a: &Addr, family: u8) -> core::net::IpAddr {
    let b = |w: u32| w.to_ne_bytes();
    if family == FAMILY_V4 {
        core::net::IpAddr::from(b(a[0]))
    } else {
        let mut o = [0u8; 16];
        for (chunk, w) in o.chunks_exact_mut(4).zip(a) {
            chunk.copy_from_slice(&b(*w));
        }
        core::net::IpAddr::from(o)
    }
}

impl ServiceKey {
    pub fn new(vip: core::net::IpAddr, port: u16, proto: u8) -> ServiceKey {
        let (vip, family) = encode_addr(vip);
        ServiceKey {
            vip,
            port: port.to_be(),
            proto,
            family,
        }
    }

    /// The VIP address part of this key.
    pub fn vip_key(&self) -> VipKey {
        VipKey {
            addr: self.vip,
            family: self.family,
            _pad: [0; 3],
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_addr_undoes_encode_addr() {
        for ip in ["10.0.0.11", "fd00::11", "::ffff:10.0.0.1"] {
            let ip: core::net::IpAddr = ip.parse().unwrap();
            let (a, family) = super::encode_addr(ip);
            assert_eq!(super::decode_addr(&a, family), ip);
        }
    }

    #[test]
    fn a_reversed_key_swaps_the_ends_and_keeps_the_rest() {
        let k = super::FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport: 10,
            dport: 20,
            proto: super::PROTO_UDP,
            family: super::FAMILY_V6,
            _pad: [0; 2],
        };
        let mut r = super::FlowKey {
            _pad: [9; 2],
            ..Default::default()
        };
        r.set_reverse_of(&k);
        assert_eq!(
            r,
            super::FlowKey {
                src: [5, 6, 7, 8],
                dst: [1, 2, 3, 4],
                sport: 20,
                dport: 10,
                ..k
            }
        );
        let mut back = r;
        back.set_reverse_of(&r);
        assert_eq!(back, k);
    }

    use super::*;

    #[test]
    fn addresses_are_stored_as_wire_bytes() {
        let (a, f) = encode_addr("10.0.0.1".parse().unwrap());
        assert_eq!(f, FAMILY_V4);
        // In memory the word holds the bytes in packet order.
        assert_eq!(a[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(&a[1..], &[0, 0, 0]);
        let (a, f) = encode_addr("fd00::1:2".parse().unwrap());
        assert_eq!(f, FAMILY_V6);
        assert_eq!(a[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(a[3].to_ne_bytes(), [0, 1, 0, 2]);
    }

    #[test]
    fn service_key_port_is_network_order() {
        let k = ServiceKey::new("10.0.0.1".parse().unwrap(), 80, PROTO_TCP);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!(k.vip_key().addr, k.vip);
    }
}
