//! The maps the flow-state sync uses (`crate::sync`), on descriptors of its own so its tasks
//! never wait for the daemon's main task: the program's ring of new flows, the flow table it
//! writes peers' flows into, and the service and backend maps it translates ids with.

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use foobar_lb_common::{
    Backend, FlowKey, FlowValue, ServiceInfo, ServiceKey, MAP_BACKENDS, MAP_FLOWS, MAP_FLOW_EVENTS,
    MAP_SERVICES, MAP_SYNC_STATS, SYNC_STAT_RING_FULL, SYNC_STAT_SENT,
};

use super::{map_err, Dataplane, DataplaneError};

pub struct SyncMaps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    backends: Array<MapData, Backend>,
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    stats: PerCpuArray<MapData, u64>,
}

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
    /// The ring of new flows (taken: only one reader) and the maps sync writes and reads.
    pub fn sync_maps(&mut self) -> Result<(RingBuf<MapData>, SyncMaps), DataplaneError> {
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
        };
        Ok((ring, maps))
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

    /// Every flow-table entry (a walk: for a bulk dump).
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().flatten().collect()
    }

    /// Writes one flow (one update: the data plane sees the old entry or the new one).
    pub fn write_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DataplaneError> {
        self.flows.insert(key, value, 0).map_err(map_err(MAP_FLOWS))
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
