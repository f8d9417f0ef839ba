//! The only module that touches aya: loads the XDP object, attaches it, executes map operations
//! planned by [`crate::reconcile`] and reads the counters.

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfLoader,
};
use foobar_lb_common::{
    verdict, Backend, BackendSet, Counters, ServiceInfo, ServiceKey, VipKey, MAP_BACKENDS,
    MAP_BACKEND_SETS, MAP_BACKEND_STATS, MAP_FLOWS, MAP_RR_CURSORS, MAP_SERVICES,
    MAP_SERVICE_STATS, MAP_VERDICT_STATS, MAP_VIPS, PASS_PROG_NAME, PROG_NAME,
};

use crate::{config::XdpMode, reconcile::MapOp};

/// The XDP object built by build.rs (empty when the BPF toolchain was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FOOBAR_LB_EBPF_OBJ"));
/// Why the object is missing, if it is.
const MISSING: &str = env!("FOOBAR_LB_EBPF_MISSING");

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this foobar-lb binary was built without its XDP program ({MISSING}): run `cargo xtask \
         setup`, then rebuild"
    )]
    NotBuilt,
    #[error("cannot load the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("cannot load the XDP program into the kernel: {0}")]
    Program(#[source] ProgramError),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// The attach mode actually in use on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attached::Native => "native (driver)",
            Attached::Generic => "generic (skb)",
        })
    }
}

pub struct LoadOptions {
    /// Capacity of the flow table (LRU: the least recently used flows are evicted when full).
    pub flow_table_size: u32,
}

pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the object and the program (not attached).
    pub fn load(opts: &LoadOptions) -> Result<Dataplane, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_FLOWS, opts.flow_table_size);
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_NAME)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()
            .map_err(DataplaneError::Program)?;
        prog.load().map_err(DataplaneError::Program)?;
        Ok(Dataplane { ebpf })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROG_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROG_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    /// Attaches to `iface`. `Auto` tries native mode first and falls back to generic.
    /// The attachment lives as long as this `Dataplane`.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attached, DataplaneError> {
        let try_mode = |dp: &mut Dataplane, m: AyaXdpMode, name: &'static str| {
            dp.program_mut()
                .attach(iface, m)
                .map(|_| ())
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_owned(),
                    mode: name,
                    source,
                })
        };
        match mode {
            XdpMode::Native => {
                try_mode(self, AyaXdpMode::Driver, "native").map(|_| Attached::Native)
            }
            XdpMode::Generic => {
                try_mode(self, AyaXdpMode::Skb, "generic").map(|_| Attached::Generic)
            }
            XdpMode::Auto => match try_mode(self, AyaXdpMode::Driver, "native") {
                Ok(()) => Ok(Attached::Native),
                Err(e) => {
                    log::info!("{e}; falling back to generic mode");
                    try_mode(self, AyaXdpMode::Skb, "generic").map(|_| Attached::Generic)
                }
            },
        }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        HashMap::try_from(map).map_err(map_err(name))
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn percpu<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&MapData, V>, DataplaneError> {
        let map = self.ebpf.map(name).ok_or(DataplaneError::Missing(name))?;
        PerCpuArray::try_from(map).map_err(map_err(name))
    }

    fn reset_counters(&mut self, name: &'static str, id: u32) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        let mut arr: PerCpuArray<&mut MapData, Counters> =
            PerCpuArray::try_from(map).map_err(map_err(name))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(DataplaneError::Cpus)?;
        arr.set(id, zeros, 0).map_err(map_err(name))
    }

    /// Executes planned operations in order. Each is one map update, so the data plane always
    /// sees a consistent state (see `reconcile`).
    pub fn execute(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        for op in ops {
            match op {
                MapOp::SetBackend { id, backend } => self
                    .array::<Backend>(MAP_BACKENDS)?
                    .set(*id, backend, 0)
                    .map_err(map_err(MAP_BACKENDS))?,
                MapOp::ResetBackendStats { id } => self.reset_counters(MAP_BACKEND_STATS, *id)?,
                MapOp::ResetServiceStats { id } => self.reset_counters(MAP_SERVICE_STATS, *id)?,
                MapOp::SetBackendSet { service_id, set } => self
                    .hash::<u32, BackendSet>(MAP_BACKEND_SETS)?
                    .insert(service_id, set.as_ref(), 0)
                    .map_err(map_err(MAP_BACKEND_SETS))?,
                MapOp::SetService { key, info } => self
                    .hash::<ServiceKey, ServiceInfo>(MAP_SERVICES)?
                    .insert(key, info, 0)
                    .map_err(map_err(MAP_SERVICES))?,
                MapOp::SetVip { key } => self
                    .hash::<VipKey, u32>(MAP_VIPS)?
                    .insert(key, 1, 0)
                    .map_err(map_err(MAP_VIPS))?,
                MapOp::RemoveService { key } => remove_if_present(
                    self.hash::<ServiceKey, ServiceInfo>(MAP_SERVICES)?,
                    key,
                    MAP_SERVICES,
                )?,
                MapOp::RemoveVip { key } => {
                    remove_if_present(self.hash::<VipKey, u32>(MAP_VIPS)?, key, MAP_VIPS)?
                }
                MapOp::RemoveBackendSet { service_id } => remove_if_present(
                    self.hash::<u32, BackendSet>(MAP_BACKEND_SETS)?,
                    service_id,
                    MAP_BACKEND_SETS,
                )?,
            }
        }
        Ok(())
    }

    /// Verdict counters summed over CPUs, in `verdict::NAMES` order.
    pub fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        let arr = self.percpu::<u64>(MAP_VERDICT_STATS)?;
        (0..verdict::COUNT)
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(MAP_VERDICT_STATS))
            })
            .collect()
    }

    pub fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        self.counters(MAP_SERVICE_STATS, id)
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        self.counters(MAP_BACKEND_STATS, id)
    }

    fn counters(&self, name: &'static str, id: u32) -> Result<Counters, DataplaneError> {
        let values = self
            .percpu::<Counters>(name)?
            .get(&id, 0)
            .map_err(map_err(name))?;
        let mut total = Counters::default();
        values.iter().for_each(|c| total.add(c));
        Ok(total)
    }

    /// Number of entries in the flow table (walks the keys: for status output, not hot paths).
    pub fn flow_count(&self) -> Result<usize, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_FLOWS)
            .ok_or(DataplaneError::Missing(MAP_FLOWS))?;
        Ok(map_keys_count(map))
    }

    /// The round-robin cursor of a service (for tests and diagnostics).
    pub fn cursor(&self, service_id: u32) -> Result<u64, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_RR_CURSORS)
            .ok_or(DataplaneError::Missing(MAP_RR_CURSORS))?;
        let arr: Array<&MapData, u64> = Array::try_from(map).map_err(map_err(MAP_RR_CURSORS))?;
        arr.get(&service_id, 0).map_err(map_err(MAP_RR_CURSORS))
    }
}

/// The object's XDP_PASS program attached to an interface of the current network namespace,
/// for as long as this value lives (veth peers in test and demo topologies need one in native
/// mode).
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(iface: &str) -> Result<PassProgram, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_FLOWS, 1024)
            .load(OBJECT)
            .map_err(DataplaneError::Load)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PASS_PROG_NAME)
            .ok_or(DataplaneError::Missing("XDP pass program"))?
            .try_into()
            .map_err(DataplaneError::Program)?;
        prog.load().map_err(DataplaneError::Program)?;
        prog.attach(iface, AyaXdpMode::Driver)
            .map_err(|source| DataplaneError::Attach {
                iface: iface.to_owned(),
                mode: "native",
                source,
            })?;
        Ok(PassProgram { _ebpf: ebpf })
    }
}

/// Whether this binary carries its XDP program, and if not why.
pub fn object_status() -> Result<&'static str, &'static str> {
    if OBJECT.is_empty() {
        Err(MISSING)
    } else {
        Ok(env!("FOOBAR_LB_EBPF_ROUTE"))
    }
}

fn map_keys_count(map: &aya::maps::Map) -> usize {
    use foobar_lb_common::{FlowKey, FlowValue};
    HashMap::<&MapData, FlowKey, FlowValue>::try_from(map)
        .map(|m| m.keys().filter(Result::is_ok).count())
        .unwrap_or(0)
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    mut map: HashMap<&mut MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), DataplaneError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}
