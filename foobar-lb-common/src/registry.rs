//! The one list of the program's maps: name, kind, key/value layout, capacity, flags and whether
//! the map is pinned. The loader pins from it, adoption checks pinned maps against it, and a
//! test compares it with the maps of the built XDP object (`tests/tests/registry.rs`), so a map
//! added to the program without an entry here fails the build's tests instead of being silently
//! left unpinned and lost on restart.

use core::mem::size_of;

use crate::{
    firewall::*, maps::*, stats::verdict, sync::*, Counters, MAX_BACKENDS, MAX_FLOWS, MAX_NAT,
    MAX_SERVICES,
};

/// Version of the pinned data plane's layout: bump it when a map's meaning changes without its
/// sizes changing (a field reused, a state added). Written into [`MAP_META`] by the daemon that
/// creates the maps; a daemon of another version refuses to adopt them.
pub const LAYOUT_VERSION: u32 = 5;

/// Kernel map types used here (`enum bpf_map_type` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    LruHash = 9,
    DevMapHash = 25,
    RingBuf = 27,
}

impl MapKind {
    pub const fn kernel_type(self) -> u32 {
        self as u32
    }

    pub fn from_kernel_type(t: u32) -> Option<MapKind> {
        [
            MapKind::Hash,
            MapKind::Array,
            MapKind::PerCpuArray,
            MapKind::LruHash,
            MapKind::DevMapHash,
            MapKind::RingBuf,
        ]
        .into_iter()
        .find(|k| k.kernel_type() == t)
    }
}

/// `BPF_F_NO_PREALLOC`: an update swaps the element under RCU (readers never see a torn value).
pub const F_NO_PREALLOC: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// As compiled into the object; [`MAP_FLOWS`] is resized at load time (`flow_table_size`),
    /// [`MAP_NAT_FWD`] and [`MAP_NAT_REV`] too (`nat_table_size`).
    pub max_entries: u32,
    pub flags: u32,
    /// Pinned maps carry state across daemon restarts; the others belong to one process.
    pub pinned: bool,
}

const fn spec<K, V>(
    name: &'static str,
    kind: MapKind,
    max_entries: u32,
    flags: u32,
    pinned: bool,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
        flags,
        pinned,
    }
}

/// Name of the map holding [`Meta`].
pub const MAP_META: &str = "META";
/// aya-log's ring buffer: per process, never pinned.
pub const MAP_AYA_LOGS: &str = "AYA_LOGS";

/// Value of [`MAP_META`] (index 0): facts about the pinned data plane itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the daemon that created the maps; 0 until it has written it.
    pub layout_version: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Meta>() == 8);

use MapKind::*;

/// Every map of the XDP object. Section-data maps (`.rodata`, `.bss`: the program's globals)
/// are not listed: aya creates them from the object and nothing keeps state in them.
pub const MAPS: &[MapSpec] = &[
    spec::<u32, Meta>(MAP_META, Array, 1, 0, true),
    spec::<ServiceKey, ServiceInfo>(MAP_SERVICES, Hash, MAX_SERVICES, 0, true),
    spec::<VipKey, u32>(MAP_VIPS, Hash, MAX_SERVICES, 0, true),
    spec::<u32, BackendSet>(MAP_BACKEND_SETS, Hash, MAX_SERVICES, F_NO_PREALLOC, true),
    spec::<u32, Backend>(MAP_BACKENDS, Array, MAX_BACKENDS, 0, true),
    spec::<u32, u32>(MAP_BACKEND_ADMIN, Array, MAX_BACKENDS, 0, true),
    spec::<u32, u32>(MAP_FLOW_CLOCK, Array, 1, 0, true),
    spec::<u32, u64>(MAP_RR_CURSORS, Array, MAX_SERVICES, 0, true),
    spec::<u32, Iface>(MAP_IFACES, Array, MAX_IFINDEX, 0, true),
    spec::<VlanKey, u32>(MAP_IFACE_VLANS, Hash, MAX_IFACE_VLANS, 0, true),
    // Redirect targets (`struct bpf_devmap_val`: ifindex, program): written with the
    // interfaces at every start, so never pinned.
    spec::<u32, [u32; 2]>(MAP_EGRESS, DevMapHash, MAX_EGRESS, 0, false),
    // Per-packet scratch: no state, so never pinned.
    spec::<u32, SuspectScratch>(MAP_SUSPECT_SCRATCH, PerCpuArray, 1, 0, false),
    spec::<u32, SumScratch>(MAP_SUM_SCRATCH, PerCpuArray, 1, 0, false),
    spec::<FlowKey, FlowValue>(MAP_FLOWS, LruHash, MAX_FLOWS, 0, true),
    // NAT connection tracking: plain hash maps (a tracked connection is never evicted),
    // resized at load time (`nat_table_size`).
    spec::<FlowKey, NatFwd>(MAP_NAT_FWD, Hash, MAX_NAT, 0, true),
    spec::<FlowKey, NatRev>(MAP_NAT_REV, Hash, MAX_NAT, 0, true),
    spec::<u32, VipFilter>(MAP_NAT_SRC_FILTER, Array, 1, 0, true),
    // Per-packet scratch: no state, so never pinned.
    spec::<u32, NatScratch>(MAP_NAT_SCRATCH, PerCpuArray, 1, 0, false),
    // Full NAT: each service's source addresses and ports, and every SNAT address's range.
    spec::<u32, SnatPool>(MAP_SNAT_POOLS, Array, MAX_SERVICES, 0, true),
    spec::<VipKey, u32>(MAP_SNAT_ADDRS, Hash, MAX_SNAT_ENTRIES, 0, true),
    spec::<u32, u64>(MAP_VERDICT_STATS, PerCpuArray, verdict::COUNT, 0, true),
    spec::<u32, Counters>(MAP_SERVICE_STATS, PerCpuArray, MAX_SERVICES, 0, true),
    spec::<u32, Counters>(MAP_BACKEND_STATS, PerCpuArray, MAX_BACKENDS, 0, true),
    spec::<u32, u64>(MAP_BACKEND_REFUSED, PerCpuArray, MAX_BACKENDS, 0, true),
    spec::<u32, FwWords>(MAP_FW_FLAGS, Array, 1, 0, true),
    spec::<u32, RuleSet>(MAP_FW_RULES, Hash, 1, F_NO_PREALLOC, true),
    spec::<u32, Counters>(MAP_RULE_STATS, PerCpuArray, MAX_RULES as u32, 0, true),
    spec::<BlockKey4, u32>(MAP_BLOCKLIST4, Hash, 2 * MAX_BLOCKED, F_NO_PREALLOC, true),
    spec::<BlockKey6, u32>(MAP_BLOCKLIST6, Hash, 2 * MAX_BLOCKED, F_NO_PREALLOC, true),
    spec::<u32, PrefixLens>(MAP_BLOCK_LENS, Array, 2, 0, true),
    spec::<u32, VipFilter>(MAP_VIP_FILTER, Array, 1, 0, true),
    spec::<u32, u32>(MAP_VIP_POLICY, Hash, MAX_VIP_POLICY_IFACES, 0, true),
    spec::<RateKey, Bucket>(MAP_RATE_BUCKETS, LruHash, MAX_RATE_SOURCES, 0, true),
    // Flow-state sync: new flows for the controller to stream to its peers, and the counts
    // of those written and lost. Per process: a restarted daemon reads its own program's.
    MapSpec {
        name: MAP_FLOW_EVENTS,
        kind: RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: FLOW_EVENTS_BYTES,
        flags: 0,
        pinned: false,
    },
    spec::<u32, u64>(MAP_SYNC_STATS, PerCpuArray, SYNC_STAT_COUNT, 0, false),
    // aya-log's ring buffer: no key or value, 128 KiB of records.
    MapSpec {
        name: MAP_AYA_LOGS,
        kind: RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: 128 * 1024,
        flags: 0,
        pinned: false,
    },
];

/// The registry entry of `name`.
pub fn map_spec(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|m| m.name == name)
}

/// The pinned maps, in registry order.
pub fn pinned_maps() -> impl Iterator<Item = &'static MapSpec> {
    MAPS.iter().filter(|m| m.pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_kinds_round_trip() {
        for (i, m) in MAPS.iter().enumerate() {
            assert!(
                MAPS[i + 1..].iter().all(|o| o.name != m.name),
                "{} listed twice",
                m.name
            );
            assert_eq!(
                MapKind::from_kernel_type(m.kind.kernel_type()),
                Some(m.kind)
            );
        }
    }

    #[test]
    fn state_carrying_maps_are_pinned() {
        for name in [
            MAP_FLOWS,
            MAP_BACKENDS,
            MAP_BACKEND_SETS,
            MAP_SERVICES,
            MAP_META,
        ] {
            assert!(map_spec(name).unwrap().pinned, "{name}");
        }
        assert!(!map_spec(MAP_AYA_LOGS).unwrap().pinned);
    }
}
