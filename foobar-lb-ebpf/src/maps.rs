//! The program's maps. Each has an entry in `foobar_lb_common::registry::MAPS` (name, kind,
//! layout, capacity, flags, pinned): the controller pins and checks them from there, and
//! `tests/tests/registry.rs` fails when this file and the registry disagree.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use foobar_lb_common::{
    registry::Meta, verdict, Backend, BackendSet, BlockKey4, BlockKey6, Bucket, Counters, FlowKey,
    FlowValue, FwWords, Iface, NatFwd, NatRev, NatScratch, PrefixLens, RateKey, RuleSet,
    ServiceInfo, ServiceKey, SnatPool, SumScratch, SuspectScratch, VipFilter, VipKey, VlanKey,
    FLOW_EVENTS_BYTES, MAX_BACKENDS, MAX_BLOCKED, MAX_EGRESS, MAX_FLOWS, MAX_IFACE_VLANS,
    MAX_IFINDEX, MAX_NAT, MAX_RATE_SOURCES, MAX_RULES, MAX_SERVICES, MAX_SNAT_ENTRIES,
    MAX_VIP_POLICY_IFACES, SYNC_STAT_COUNT,
};

/// Index 0: facts about the pinned data plane (its layout version), written by the controller
/// that created the maps. The program never reads it.
#[map]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// (VIP, port, proto) -> service id.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// VIP addresses, to drop malformed packets aimed at them and pass everything else.
#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Service id -> its round-robin slots. No preallocation: an update replaces the element under
/// RCU, so a reader never sees a half-written set.
#[map]
pub static BACKEND_SETS: HashMap<u32, BackendSet> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backend id -> where to send packets. Id 0 stays unused.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Backend id -> `ADMIN_*` bits: the operator's intent (drain), kept pinned so a restarted
/// daemon knows it. Written by the controller only; the program never reads it.
#[map]
pub static BACKEND_ADMIN: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Index 0: the flow clock (`foobar_lb_common::flow_time` units), advanced by the controller
/// several times a second; flows are stamped with it.
#[map]
pub static FLOW_CLOCK: Array<u32> = Array::with_max_entries(1, 0);

/// Service id -> round-robin cursor, advanced atomically (shared by all CPUs).
#[map]
pub static RR_CURSORS: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// Ifindex -> the interface's MAC: frames not addressed to it are not balanced, and forwarded
/// frames take it as their source MAC.
#[map]
pub static IFACES: Array<Iface> = Array::with_max_entries(MAX_IFINDEX, 0);

/// Ifindex -> the same interface, for XDP_REDIRECT (`rewrite::out_by`): every interface of
/// ours, so a redirect is queued and flushed in bulk.
#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_EGRESS, 0);

/// (ifindex, VLAN id) of the VLANs whose tagged frames an interface balances; looked up only
/// for tagged frames.
#[map]
pub static IFACE_VLANS: HashMap<VlanKey, u32> = HashMap::with_max_entries(MAX_IFACE_VLANS, 0);

/// Scratch for main.rs's firewall check of packets passed to the kernel after the firewall
/// alone (unbalanceable ones, VIP packets in frames for another MAC or VLAN, addresses sharing
/// a VIP's prefilter bit): values stored here and read back (volatile) are unknown to the
/// verifier, so the dozens of ways there (family, VLAN tags, parse outcome, receiver, sanity
/// checks) reach one firewall check in one state, verified once
/// instead of once per way (which took the program from 160k to 860k verified instructions,
/// near the kernel's 1M limit).
#[map]
pub static SUSPECT_SCRATCH: PerCpuArray<SuspectScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where `partial::finish` sums a segment whose checksum arrived partial (too large for the
/// stack).
#[map]
pub static SUM_SCRATCH: PerCpuArray<SumScratch> = PerCpuArray::with_max_entries(1, 0);

/// 5-tuple -> backend id: keeps every packet of a connection on one backend. One LRU shared by
/// all CPUs: per-CPU lists (BPF_F_NO_COMMON_LRU) would give each CPU 1/ncpus of the capacity
/// and evict live flows of a busy CPU early.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// NAT connections by the client's 5-tuple (see `NatFwd`). Plain hash maps, preallocated: a
/// tracked connection is never evicted (the controller's sweeper removes idle ones), and an
/// insert never allocates on the packet path.
#[map]
pub static NAT_FWD: HashMap<FlowKey, NatFwd> = HashMap::with_max_entries(MAX_NAT, 0);

/// NAT connections by their replies' 5-tuple (see `NatRev`).
#[map]
pub static NAT_REV: HashMap<FlowKey, NatRev> = HashMap::with_max_entries(MAX_NAT, 0);

/// Bloom-style prefilter over the addresses of NAT backends (`vip_filter_bit`), so traffic
/// that is not for a VIP pays one array read, not a hash lookup, to prove it is no reply.
#[map]
pub static NAT_SRC_FILTER: Array<VipFilter> = Array::with_max_entries(1, 0);

/// Scratch for the NAT paths (nat.rs): the parsed packet stored here and read back (volatile)
/// is unknown to the verifier, so the dozens of parse outcomes that reach a NAT path (family,
/// VLAN tags, protocol, header lengths) converge on one state, verified once instead of once
/// each (as `SUSPECT_SCRATCH` does for the firewall).
#[map]
pub static NAT_SCRATCH: PerCpuArray<NatScratch> = PerCpuArray::with_max_entries(1, 0);

/// Service id -> the source addresses and port range of a full-NAT service's new connections.
#[map]
pub static SNAT_POOLS: Array<SnatPool> = Array::with_max_entries(MAX_SERVICES, 0);

/// Every SNAT address in use -> its port range (`snat_range`): strays inside it are dropped.
#[map]
pub static SNAT_ADDRS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_SNAT_ENTRIES, 0);

#[map]
pub static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(verdict::COUNT, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Backend id -> SYNs it refused with a RST (NAT and full NAT, `nat::reply`): the controller's
/// passive health (`observe = "layer4"`) reads it several times a second.
#[map]
pub static BACKEND_REFUSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// New flows for the controller's flow-state sync (`FlowEvent` records; see sync.rs).
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);

/// `SYNC_STAT_*` counters of the sync events (written, lost to a full ring).
#[map]
pub static SYNC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SYNC_STAT_COUNT, 0);

// ---- Firewall -------------------------------------------------------------------------------

/// `FW_IDX_*` words: which stages are on, which block-list buffer is live.
#[map]
pub static FW_FLAGS: Array<FwWords> = Array::with_max_entries(1, 0);

/// Key 0: the ordered rule list, replaced whole (no preallocation: RCU swap).
#[map]
pub static FW_RULES: HashMap<u32, RuleSet> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Per-rule packets/bytes matched.
#[map]
pub static RULE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_RULES as u32, 0);

/// Source block list, double-buffered: userspace fills the idle buffer (prefixes keyed by
/// masked address, length and buffer, plus its `BLOCK_LENS` entry), then flips
/// `FW_IDX_BLOCKLIST_SLOT`, so a packet sees the old list or the new one, never a mix.
#[map]
pub static BLOCKLIST4: HashMap<BlockKey4, u32> =
    HashMap::with_max_entries(2 * MAX_BLOCKED, BPF_F_NO_PREALLOC);
#[map]
pub static BLOCKLIST6: HashMap<BlockKey6, u32> =
    HashMap::with_max_entries(2 * MAX_BLOCKED, BPF_F_NO_PREALLOC);
/// Index = buffer: the distinct prefix lengths of that buffer's list.
#[map]
pub static BLOCK_LENS: Array<PrefixLens> = Array::with_max_entries(2, 0);

/// Bloom-style prefilter over VIP addresses (see `vip_filter_bit`).
#[map]
pub static VIP_FILTER: Array<VipFilter> = Array::with_max_entries(1, 0);

/// Ingress ifindex -> `VIP_POLICY_*` for VIP traffic that matches no service.
#[map]
pub static VIP_POLICY: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VIP_POLICY_IFACES, 0);

/// (service, source) -> token bucket for new flows.
#[map]
pub static RATE_BUCKETS: LruHashMap<RateKey, Bucket> =
    LruHashMap::with_max_entries(MAX_RATE_SOURCES, 0);
