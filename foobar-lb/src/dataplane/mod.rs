//! The only module that touches aya: loads the XDP object, attaches it, executes map operations
//! planned by [`crate::reconcile`] and reads the counters. Firewall maps, pinning and the
//! auxiliary (benchmark and test) programs live in the submodules.

mod aux;
mod firewall;
mod pins;

pub use aux::{object, object_status, AuxProgram};
use pins::{check_layout_version, check_pinned_layouts, ensure_bpffs};
pub use pins::{teardown, Teardown};

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode as AyaXdpMode,
    },
    Ebpf, EbpfLoader,
};
use foobar_lb_common::{
    registry::{pinned_maps, Meta},
    verdict, Backend, BackendSet, Counters, FlowKey, FlowValue, Iface, ServiceInfo, ServiceKey,
    VipKey, VlanKey, IFACE_ACTIVE, LAYOUT_VERSION, MAP_BACKENDS, MAP_BACKEND_ADMIN,
    MAP_BACKEND_SETS, MAP_BACKEND_STATS, MAP_FLOWS, MAP_IFACES, MAP_IFACE_VLANS, MAP_META,
    MAP_SERVICES, MAP_SERVICE_STATS, MAP_VERDICT_STATS, MAP_VIPS, MAX_BLOCKED, MAX_IFINDEX,
    MAX_PREFIX_LENS, PROG_NAME,
};

use crate::{
    config::XdpMode,
    reconcile::{MapOp, PinnedState},
};

/// The XDP object built by build.rs (empty when the BPF toolchain was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FOOBAR_LB_EBPF_OBJ"));
/// Why the object is missing, if it is.
const MISSING: &str = env!("FOOBAR_LB_EBPF_MISSING");

/// Each variant says what failed; the underlying error is its `source`, printed once by the
/// caller's `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this foobar-lb binary was built without its XDP program ({MISSING}): run `cargo xtask \
         setup`, then rebuild"
    )]
    NotBuilt,
    #[error("cannot load the XDP object")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("cannot load the XDP program into the kernel")]
    Program(#[source] ProgramError),
    #[error("cannot attach XDP to {iface} in {mode} mode")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("XDP link on {iface}")]
    Link {
        iface: String,
        #[source]
        source: LinkError,
    },
    #[error("cannot pin {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot {what} {}", path.display())]
    PinIo {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a foobar-lb pin directory (it has no {MAP_META} pin; found: {found}): \
         nothing removed. Pass the pin_dir of a foobar-lb daemon", dir.display()
    )]
    NotOurPinDir { dir: PathBuf, found: String },
    #[error("cannot mount bpffs at /sys/fs/bpf (mount it: `mount -t bpf bpf /sys/fs/bpf`)")]
    MountBpffs(#[source] std::io::Error),
    #[error(
        "pin_dir {} is not on a bpffs: choose a directory under /sys/fs/bpf or mount one \
         (`mount -t bpf bpf DIR`)", .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("{} holds a partial data plane (no {missing}): {fix}", dir.display())]
    PartialPins {
        dir: PathBuf,
        missing: &'static str,
        fix: String,
    },
    #[error(
        "pinned map {} has {field} {pinned}, this build expects {expected} (made by another \
         foobar-lb version): {fix}", path.display()
    )]
    LayoutMismatch {
        path: PathBuf,
        field: &'static str,
        pinned: String,
        expected: String,
        fix: String,
    },
    #[error(
        "the pinned data plane has layout version {pinned}, this build uses {expected} (0: its \
         creator died before recording it): {fix}"
    )]
    LayoutVersion {
        pinned: u32,
        expected: u32,
        fix: String,
    },
    #[error(
        "the pinned flow table holds {pinned} flows but flow_table_size is {configured}: set it \
         back, or {fix}"
    )]
    FlowTableSize {
        pinned: u32,
        configured: u32,
        fix: String,
    },
    #[error("block list of {len} prefixes: at most {MAX_BLOCKED}")]
    BlocklistTooLong { len: usize },
    #[error(
        "block list uses {} distinct IPv{family} prefix lengths ({lens:?}); at most \
         {MAX_PREFIX_LENS} (each costs a lookup per packet): aggregate or split prefixes",
        lens.len()
    )]
    TooManyPrefixLengths { family: u8, lens: Vec<u8> },
    #[error("interface index {ifindex} is beyond the data plane's table ({MAX_IFINDEX} entries)")]
    IfindexTooLarge { ifindex: u32 },
    #[error("cannot start the flow-counting thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot count the possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("map {map}")]
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
    /// Took over the attachment pinned by an earlier daemon (its mode is kept).
    Adopted,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attached::Native => "native (driver)",
            Attached::Generic => "generic (skb)",
            Attached::Adopted => "the pinned (adopted, mode unchanged)",
        })
    }
}

/// Reader of the program's aya-log records.
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct LoadOptions {
    /// Capacity of the flow table (LRU: the least recently used flows are evicted when full).
    pub flow_table_size: u32,
    /// Pin maps and links here (a bpffs directory) so they outlive the process, and reuse what
    /// is already pinned there. `None`: everything goes when the `Dataplane` drops.
    pub pin_dir: Option<PathBuf>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Whether pinned maps from an earlier daemon were found and reused.
    adopted: bool,
    /// Map operations executed (see [`Dataplane::map_writes`]).
    writes: u64,
    logger: Option<Logger>,
}

impl Dataplane {
    /// Loads the object and the program (not attached).
    pub fn load(opts: &LoadOptions) -> Result<Dataplane, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let mut loader = EbpfLoader::new();
        let flow_entries = flow_map_entries(opts.flow_table_size)?;
        loader.map_max_entries(MAP_FLOWS, flow_entries);
        let mut adopted = false;
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs(dir)?;
            adopted = dir.join(MAP_SERVICES).exists();
            if adopted {
                check_pinned_layouts(dir, opts.flow_table_size, flow_entries)?;
            }
            for spec in pinned_maps() {
                loader.map_pin_path(spec.name, dir.join(spec.name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        if let Some(dir) = &opts.pin_dir {
            stamp_layout_version(&mut ebpf, dir, adopted)?;
        }
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_NAME)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()
            .map_err(DataplaneError::Program)?;
        prog.load().map_err(DataplaneError::Program)?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        Ok(Dataplane {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            adopted,
            writes: 0,
            logger,
        })
    }

    /// Service and backend map operations executed by this process.
    pub fn map_writes(&self) -> u64 {
        self.writes
    }

    /// Whether this data plane reuses pinned state of an earlier daemon.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The aya-log reader of the program's log records (taken once, polled by the daemon).
    pub fn take_logger(&mut self) -> Option<Logger> {
        self.logger.take()
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

    /// Attaches to `iface`. With a pin directory, an attachment pinned by an earlier daemon is
    /// taken over (the program swapped atomically, maps and flows kept), and a new one is pinned
    /// so it outlives this process. Without, the attachment lives as long as this `Dataplane`.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attached, DataplaneError> {
        let Some(dir) = self.pin_dir.clone() else {
            return self.attach_unpinned(iface, mode).map(|(a, _)| a);
        };
        let pin = dir.join(format!("{}{iface}", pins::LINK_PREFIX));
        let link_err = |source: LinkError| DataplaneError::Link {
            iface: iface.to_owned(),
            source,
        };
        if pin.exists() {
            let link = PinnedLink::from_pin(&pin).map_err(link_err)?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(link_err)?;
            self.program_mut()
                .attach_to_link(link)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_owned(),
                    mode: "adopted",
                    source,
                })?;
            return Ok(Attached::Adopted);
        }
        let (attached, id) = self.attach_unpinned(iface, mode)?;
        let link = self
            .program_mut()
            .take_link(id)
            .map_err(DataplaneError::Program)?;
        let fd = FdLink::try_from(link).map_err(link_err)?;
        fd.pin(&pin).map_err(|source| DataplaneError::Pin {
            path: pin.clone(),
            source,
        })?;
        Ok(attached)
    }

    fn attach_unpinned(
        &mut self,
        iface: &str,
        mode: XdpMode,
    ) -> Result<(Attached, XdpLinkId), DataplaneError> {
        let try_mode = |dp: &mut Dataplane, m: AyaXdpMode, name: &'static str| {
            dp.program_mut()
                .attach(iface, m)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_owned(),
                    mode: name,
                    source,
                })
        };
        match mode {
            XdpMode::Native => {
                try_mode(self, AyaXdpMode::Driver, "native").map(|l| (Attached::Native, l))
            }
            XdpMode::Generic => {
                try_mode(self, AyaXdpMode::Skb, "generic").map(|l| (Attached::Generic, l))
            }
            XdpMode::Auto => match try_mode(self, AyaXdpMode::Driver, "native") {
                Ok(l) => Ok((Attached::Native, l)),
                Err(e) => {
                    log::info!("{e}; falling back to generic mode");
                    try_mode(self, AyaXdpMode::Skb, "generic").map(|l| (Attached::Generic, l))
                }
            },
        }
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::Missing(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf.map_mut(name).ok_or(DataplaneError::Missing(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        let map = self.map_mut(name)?;
        HashMap::try_from(map).map_err(map_err(name))
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        let map = self.map_mut(name)?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn percpu<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&MapData, V>, DataplaneError> {
        let map = self.map(name)?;
        PerCpuArray::try_from(map).map_err(map_err(name))
    }

    fn reset_counters(&mut self, name: &'static str, id: u32) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let map = self.map_mut(name)?;
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
            self.writes += 1;
            match op {
                MapOp::SetBackend { id, backend } => self
                    .array::<Backend>(MAP_BACKENDS)?
                    .set(*id, backend, 0)
                    .map_err(map_err(MAP_BACKENDS))?,
                MapOp::ResetBackendStats { id } => self.reset_counters(MAP_BACKEND_STATS, *id)?,
                MapOp::SetBackendAdmin { id, flags } => self
                    .array::<u32>(MAP_BACKEND_ADMIN)?
                    .set(*id, flags, 0)
                    .map_err(map_err(MAP_BACKEND_ADMIN))?,
                MapOp::ResetServiceStats { id } => self.reset_counters(MAP_SERVICE_STATS, *id)?,
                MapOp::SetBackendSet { service_id, set } => self
                    .hash::<u32, BackendSet>(MAP_BACKEND_SETS)?
                    .insert(service_id, set.as_ref(), 0)
                    .map_err(map_err(MAP_BACKEND_SETS))?,
                MapOp::SetService { key, info } => self
                    .hash::<ServiceKey, ServiceInfo>(MAP_SERVICES)?
                    .insert(key, info, 0)
                    .map_err(map_err(MAP_SERVICES))?,
                MapOp::SetVip { key } => {
                    // The filter bit first: a packet that passes the filter still meets the
                    // exact VIP set.
                    self.write_vip_filter(Some(key))?;
                    self.hash::<VipKey, u32>(MAP_VIPS)?
                        .insert(key, 1, 0)
                        .map_err(map_err(MAP_VIPS))?
                }
                MapOp::RemoveService { key } => remove_if_present(
                    self.hash::<ServiceKey, ServiceInfo>(MAP_SERVICES)?,
                    key,
                    MAP_SERVICES,
                )?,
                MapOp::RemoveVip { key } => {
                    remove_if_present(self.hash::<VipKey, u32>(MAP_VIPS)?, key, MAP_VIPS)?;
                    self.write_vip_filter(None)?;
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

    /// Records an interface's MAC: the program balances only frames addressed to it, and
    /// forwards with it as the source MAC. One array element, written whole.
    pub fn set_interface(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), DataplaneError> {
        if ifindex >= MAX_IFINDEX {
            return Err(DataplaneError::IfindexTooLarge { ifindex });
        }
        let entry = Iface {
            mac,
            flags: IFACE_ACTIVE,
        };
        self.array::<Iface>(MAP_IFACES)?
            .set(ifindex, entry, 0)
            .map_err(map_err(MAP_IFACES))
    }

    /// Sets the VLANs whose tagged frames interface `ifindex` balances (untagged frames always
    /// are): the new ones are added before those no longer listed are removed.
    pub fn set_vlans(&mut self, ifindex: u32, vlans: &[u16]) -> Result<(), DataplaneError> {
        let mut map = self.hash::<VlanKey, u32>(MAP_IFACE_VLANS)?;
        let key = |vlan| VlanKey {
            ifindex,
            vlan,
            _pad: 0,
        };
        for &vlan in vlans {
            map.insert(key(vlan), 1, 0)
                .map_err(map_err(MAP_IFACE_VLANS))?;
        }
        let stale: Vec<VlanKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.ifindex == ifindex && !vlans.contains(&k.vlan))
            .collect();
        for k in &stale {
            map.remove(k).map_err(map_err(MAP_IFACE_VLANS))?;
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
        let flows: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.map(MAP_FLOWS)?).map_err(map_err(MAP_FLOWS))?;
        Ok(flows.keys().filter(Result::is_ok).count())
    }

    /// Services and backend entries as the maps hold them (to adopt a pinned data plane).
    pub fn read_state(&self) -> Result<PinnedState, DataplaneError> {
        let map = self.map(MAP_SERVICES)?;
        let services: HashMap<&MapData, ServiceKey, ServiceInfo> =
            HashMap::try_from(map).map_err(map_err(MAP_SERVICES))?;
        let services = services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_SERVICES))?;
        let map = self.map(MAP_BACKENDS)?;
        let arr: Array<&MapData, Backend> = Array::try_from(map).map_err(map_err(MAP_BACKENDS))?;
        let mut backends = Vec::new();
        for (id, b) in arr.iter().enumerate() {
            let b = b.map_err(map_err(MAP_BACKENDS))?;
            if b.state != foobar_lb_common::BACKEND_UNUSED {
                backends.push((id as u32, b));
            }
        }
        let sets: HashMap<&MapData, u32, BackendSet> =
            HashMap::try_from(self.map(MAP_BACKEND_SETS)?).map_err(map_err(MAP_BACKEND_SETS))?;
        let sets = sets
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_BACKEND_SETS))?;
        let map = self.map(MAP_BACKEND_ADMIN)?;
        let arr: Array<&MapData, u32> = Array::try_from(map).map_err(map_err(MAP_BACKEND_ADMIN))?;
        let mut admin = Vec::new();
        for (id, _) in &backends {
            let flags = arr.get(id, 0).map_err(map_err(MAP_BACKEND_ADMIN))?;
            if flags != 0 {
                admin.push((*id, flags));
            }
        }
        Ok(PinnedState {
            services,
            backends,
            sets,
            admin,
        })
    }

    /// Starts counting open flows per backend off the caller's thread: a walk of a large
    /// table takes long (about a second per million flows), and the daemon's event loop must
    /// keep handling health results meanwhile. The walker repeats at most every `every` and
    /// never spends more than half its time walking; [`FlowCounts::latest`] reads the last
    /// result.
    pub fn spawn_flow_counter(&self, every: Duration) -> Result<FlowCounts, DataplaneError> {
        let aya::maps::Map::LruHashMap(data) = self.map(MAP_FLOWS)? else {
            return Err(DataplaneError::Missing(MAP_FLOWS));
        };
        let id = data.info().map_err(map_err(MAP_FLOWS))?.id();
        // Its own descriptor of the same map, for the walker thread.
        let own = MapData::from_id(id).map_err(map_err(MAP_FLOWS))?;
        let flows: HashMap<MapData, FlowKey, FlowValue> =
            HashMap::try_from(aya::maps::Map::LruHashMap(own)).map_err(map_err(MAP_FLOWS))?;
        let counts = FlowCounts::default();
        let (latest, stop) = (counts.latest.clone(), counts.stop.clone());
        std::thread::Builder::new()
            .name("flow-counter".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let counts = open_flows_per_backend(&flows);
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(counts);
                    std::thread::sleep(every.max(start.elapsed()));
                }
            })
            .map_err(DataplaneError::Thread)?;
        Ok(counts)
    }

    /// Open (not closing) flow-table entries per backend id (walks the table: for status
    /// output only). TCP flows stop counting at their FIN or RST; UDP flows count until the
    /// LRU evicts them.
    pub fn flows_per_backend(&self) -> Result<std::collections::HashMap<u32, u64>, DataplaneError> {
        let map = self.map(MAP_FLOWS)?;
        let flows: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(map).map_err(map_err(MAP_FLOWS))?;
        Ok(open_flows_per_backend(&flows))
    }
}

/// Open (not closing) flow-table entries per backend id: TCP flows stop counting at their FIN
/// or RST; UDP flows count until the LRU evicts them.
fn open_flows_per_backend<T: std::borrow::Borrow<MapData>>(
    flows: &HashMap<T, FlowKey, FlowValue>,
) -> std::collections::HashMap<u32, u64> {
    let mut counts = std::collections::HashMap::new();
    for (_, v) in flows.iter().flatten().filter(|(_, v)| v.closing == 0) {
        *counts.entry(v.backend_id).or_default() += 1;
    }
    counts
}

/// Open flows per backend id, as last counted by the walker thread of
/// [`Dataplane::spawn_flow_counter`]; the thread stops when this is dropped.
#[derive(Default)]
pub struct FlowCounts {
    latest: Arc<Mutex<Arc<std::collections::HashMap<u32, u64>>>>,
    stop: Arc<AtomicBool>,
}

impl FlowCounts {
    pub fn latest(&self) -> Arc<std::collections::HashMap<u32, u64>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FlowCounts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Entries a flow table holding `flow_table_size` live flows needs. The LRU hash is shared by
/// all CPUs (one capacity, not a slice per CPU), but the kernel keeps a small free list per CPU
/// (LOCAL_FREE_TARGET, 128) and starts evicting when the rest is full: that much headroom per
/// possible CPU keeps `flow_table_size` flows from being evicted.
pub fn flow_map_entries(flow_table_size: u32) -> Result<u32, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    Ok(flow_table_size.saturating_add(LRU_HEADROOM_PER_CPU * cpus as u32))
}

/// See [`flow_map_entries`].
const LRU_HEADROOM_PER_CPU: u32 = 128;

/// A new data plane records this build's layout version; an adopted one must carry it.
fn stamp_layout_version(
    ebpf: &mut Ebpf,
    dir: &std::path::Path,
    adopted: bool,
) -> Result<(), DataplaneError> {
    let map = ebpf
        .map_mut(MAP_META)
        .ok_or(DataplaneError::Missing(MAP_META))?;
    let mut meta: Array<&mut MapData, Meta> = Array::try_from(map).map_err(map_err(MAP_META))?;
    if adopted {
        let pinned = meta.get(&0, 0).map_err(map_err(MAP_META))?;
        return check_layout_version(dir, pinned.layout_version);
    }
    let stamp = Meta {
        layout_version: LAYOUT_VERSION,
        _pad: 0,
    };
    meta.set(0, stamp, 0).map_err(map_err(MAP_META))
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
