//! The maps the flow-state sync uses (`crate::sync`), on descriptors of its own so its tasks
//! never wait for the daemon's main task: the program's ring of new flows, the flow table it
//! writes peers' flows into, the NAT connection maps (read for the announcements, written
//! with peers' connections), and the service, backend and interface maps it translates with.

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use foobar_lb_common::{
    nat_reply_key, Backend, FlowKey, FlowValue, Iface, NatFwd, NatRev, ServiceInfo, ServiceKey,
    IFACE_ACTIVE, MAP_BACKENDS, MAP_FLOWS, MAP_FLOW_EVENTS, MAP_IFACES, MAP_NAT_FWD, MAP_NAT_REV,
    MAP_SERVICES, MAP_SYNC_STATS, SYNC_STAT_RING_FULL, SYNC_STAT_SENT,
};

use super::{map_err, Dataplane, DataplaneError};

pub struct SyncMaps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    backends: Array<MapData, Backend>,
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    stats: PerCpuArray<MapData, u64>,
    nat_fwd: HashMap<MapData, FlowKey, NatFwd>,
    nat_rev: HashMap<MapData, FlowKey, NatRev>,
    ifaces: Array<MapData, Iface>,
}

/// Descriptors of their own of the tables a bulk dump walks, so the walk (about a second per
/// million entries) holds no lock the sync's other tasks wait on.
pub struct SyncWalk {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    nat_fwd: HashMap<MapData, FlowKey, NatFwd>,
    nat_rev: HashMap<MapData, FlowKey, NatRev>,
}

impl SyncWalk {
    /// Every flow-table entry.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().flatten().collect()
    }

    /// Every tracked NAT connection with its reply entry.
    pub fn nat_conns(&self) -> Vec<(FlowKey, NatFwd, NatRev)> {
        self.nat_fwd
            .iter()
            .flatten()
            .filter_map(|(k, f)| {
                let r = self.nat_rev.get(&nat_reply_key(&k, &f), 0).ok()?;
                Some((k, f, r))
            })
            .collect()
    }
}

/// How writing a peer's NAT connection went.
#[derive(Debug, PartialEq, Eq)]
pub enum NatWrite {
    Written,
    /// Another connection of this node holds the reply 5-tuple (both nodes gave one SNAT
    /// port to two clients): nothing written, the local one kept.
    Collision,
}

const EEXIST: i32 = 17;
/// `bpf_map_update_elem` flag: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// A second descriptor of the map `name` (the same kernel object).
fn own(dp: &Dataplane, name: &'static str) -> Result<Map, DataplaneError> {
    let map = dp.map(name)?;
    let data = match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
        _ => return Err(DataplaneError::Missing(name)),
    };
    let id = data.info().map_err(map_err(name))?.id();
    let own = MapData::from_id(id).map_err(map_err(name))?;
    Ok(match map {
        Map::HashMap(_) => Map::HashMap(own),
        Map::LruHashMap(_) => Map::LruHashMap(own),
        Map::Array(_) => Map::Array(own),
        _ => Map::PerCpuArray(own),
    })
}

impl Dataplane {
    /// The ring of new flows (taken: only one reader), the maps sync writes and reads, and
    /// the ones its bulk dumps walk.
    pub fn sync_maps(&mut self) -> Result<(RingBuf<MapData>, SyncMaps, SyncWalk), DataplaneError> {
        let ring = self
            .ebpf
            .take_map(MAP_FLOW_EVENTS)
            .ok_or(DataplaneError::Missing(MAP_FLOW_EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(map_err(MAP_FLOW_EVENTS))?;
        let maps = SyncMaps {
            flows: HashMap::try_from(own(self, MAP_FLOWS)?).map_err(map_err(MAP_FLOWS))?,
            backends: Array::try_from(own(self, MAP_BACKENDS)?).map_err(map_err(MAP_BACKENDS))?,
            services: HashMap::try_from(own(self, MAP_SERVICES)?).map_err(map_err(MAP_SERVICES))?,
            stats: PerCpuArray::try_from(own(self, MAP_SYNC_STATS)?)
                .map_err(map_err(MAP_SYNC_STATS))?,
            nat_fwd: HashMap::try_from(own(self, MAP_NAT_FWD)?).map_err(map_err(MAP_NAT_FWD))?,
            nat_rev: HashMap::try_from(own(self, MAP_NAT_REV)?).map_err(map_err(MAP_NAT_REV))?,
            ifaces: Array::try_from(own(self, MAP_IFACES)?).map_err(map_err(MAP_IFACES))?,
        };
        let walk = SyncWalk {
            flows: HashMap::try_from(own(self, MAP_FLOWS)?).map_err(map_err(MAP_FLOWS))?,
            nat_fwd: HashMap::try_from(own(self, MAP_NAT_FWD)?).map_err(map_err(MAP_NAT_FWD))?,
            nat_rev: HashMap::try_from(own(self, MAP_NAT_REV)?).map_err(map_err(MAP_NAT_REV))?,
        };
        Ok((ring, maps, walk))
    }
}

impl SyncMaps {
    pub fn services(&self) -> Vec<(ServiceKey, ServiceInfo)> {
        self.services.iter().flatten().collect()
    }

    /// Backend ids in use and their entries.
    pub fn backends(&self) -> Vec<(u32, Backend)> {
        self.backends
            .iter()
            .enumerate()
            .filter_map(|(id, b)| b.ok().map(|b| (id as u32, b)))
            .filter(|(_, b)| b.state != foobar_lb_common::BACKEND_UNUSED)
            .collect()
    }

    /// Writes one flow (one update: the data plane sees the old entry or the new one).
    pub fn write_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DataplaneError> {
        self.flows.insert(key, value, 0).map_err(map_err(MAP_FLOWS))
    }

    /// The NAT connection of client flow `key` (forward and reply entries), if tracked.
    pub fn nat_conn(&self, key: &FlowKey) -> Option<(NatFwd, NatRev)> {
        let fwd = self.nat_fwd.get(key, 0).ok()?;
        let rev = self.nat_rev.get(&nat_reply_key(key, &fwd), 0).ok()?;
        Some((fwd, rev))
    }

    /// Writes a peer's NAT connection as the program opens one: the reply entry first and
    /// only if its 5-tuple is free (or already this same connection's: a repeated bulk sync),
    /// then the forward entry. Each is one update: the data plane sees a whole entry or none.
    pub fn write_nat(
        &mut self,
        key: &FlowKey,
        fwd: &NatFwd,
        rkey: &FlowKey,
        rev: &NatRev,
    ) -> Result<NatWrite, DataplaneError> {
        match self.nat_rev.insert(rkey, rev, BPF_NOEXIST) {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(EEXIST) => {
                let same = self.nat_rev.get(rkey, 0).is_ok_and(|old| {
                    old.vip == rev.vip
                        && old.vport == rev.vport
                        && old.client == rev.client
                        && old.cport == rev.cport
                        && old.flags == rev.flags
                });
                if !same {
                    return Ok(NatWrite::Collision);
                }
                self.nat_rev
                    .insert(rkey, rev, 0)
                    .map_err(map_err(MAP_NAT_REV))?;
            }
            Err(e) => return Err(map_err(MAP_NAT_REV)(e)),
        }
        if let Err(e) = self.nat_fwd.insert(key, fwd, 0) {
            // As the program does: no reply entry without its forward one.
            let _ = self.nat_rev.remove(rkey);
            return Err(map_err(MAP_NAT_FWD)(e));
        }
        Ok(NatWrite::Written)
    }

    /// The MAC of `ifindex` if the program runs on it (frames can leave by it).
    pub fn iface_mac(&self, ifindex: u32) -> Option<[u8; 6]> {
        self.ifaces
            .get(&ifindex, 0)
            .ok()
            .filter(|i| i.flags & IFACE_ACTIVE != 0)
            .map(|i| i.mac)
    }

    /// (events the program wrote to the ring, events lost to a full ring), over all CPUs.
    pub fn ring_counts(&self) -> (u64, u64) {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        (sum(SYNC_STAT_SENT), sum(SYNC_STAT_RING_FULL))
    }
}
