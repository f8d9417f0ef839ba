//! The only module that touches aya: loads the XDP object, attaches it, executes map operations
//! planned by [`crate::reconcile`] and reads the counters. Firewall maps, pinning and the
//! auxiliary (benchmark and test) programs live in the submodules.

mod aux;
mod firewall;
mod nat;
mod pins;
mod sync;

pub use aux::{object, object_status, AuxProgram};
pub use nat::{nat_expired, nat_idle, nat_state, NatConn, NatState, NatSweeper};
use pins::{check_layout_version, check_pinned_layouts, ensure_bpffs};
pub use pins::{teardown, Teardown};
pub use sync::{NatWrite, SyncMaps, SyncWalk};

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
    flow_age, flow_time,
    registry::{pinned_maps, Meta},
    verdict, Backend, BackendSet, Counters, FlowKey, FlowValue, Iface, ServiceInfo, ServiceKey,
    VipKey, VlanKey, FLOW_FIN, FLOW_RST, FLOW_TIME_MASK, IFACE_ACTIVE, IFACE_GENERIC,
    LAYOUT_VERSION, MAP_BACKENDS, MAP_BACKEND_ADMIN, MAP_BACKEND_SETS, MAP_BACKEND_STATS,
    MAP_EGRESS, MAP_FLOWS, MAP_FLOW_CLOCK, MAP_IFACES, MAP_IFACE_VLANS, MAP_META, MAP_SERVICES,
    MAP_SERVICE_STATS, MAP_VERDICT_STATS, MAP_VIPS, MAX_BACKENDS, MAX_BLOCKED, MAX_IFINDEX,
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
    #[error("cannot make interface {ifindex} a redirect target")]
    Egress {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("cannot read the kernel's accounting of map {map}")]
    Fdinfo {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
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
    #[error(
        "the pinned NAT connection table holds {pinned} connections but nat_table_size is \
         {configured}: set it back, or {fix}"
    )]
    NatTableSize {
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
    /// Capacity of each NAT connection table (never evicted).
    pub nat_table_size: u32,
    /// Pin maps and links here (a bpffs directory) so they outlive the process, and reuse what
    /// is already pinned there. `None`: everything goes when the `Dataplane` drops.
    pub pin_dir: Option<PathBuf>,
    /// Whether the program announces new flows for `[sync]` (on its ring buffer).
    pub sync: bool,
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
        loader.map_max_entries(foobar_lb_common::MAP_NAT_FWD, opts.nat_table_size);
        loader.map_max_entries(foobar_lb_common::MAP_NAT_REV, opts.nat_table_size);
        let sync_enabled = u32::from(opts.sync);
        loader.override_global(foobar_lb_common::SYNC_ENABLED_GLOBAL, &sync_enabled, true);
        let mut adopted = false;
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs(dir)?;
            adopted = dir.join(MAP_SERVICES).exists();
            if adopted {
                check_pinned_layouts(dir, opts.flow_table_size, flow_entries, opts.nat_table_size)?;
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
            match self.program_mut().attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the attachment; holding its fd here too would keep the
                    // program on the interface after the pin is removed (detach by unpinning).
                    drop(self.program_mut().take_link(id));
                    return Ok(Attached::Adopted);
                }
                // The device this link was made for is gone (deleted, or deleted and created
                // again under the same name): the link is defunct and cannot be updated. Drop
                // its pin and attach afresh to whatever device has the name now.
                Err(e) => {
                    log::warn!(
                        "the pinned attachment to {iface} cannot be taken over ({e});                          attaching anew"
                    );
                    self.unpin_link(iface)?;
                }
            }
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

    /// Removes the pinned attachment to `iface` (if any): once no process holds it, the
    /// program is detached from that interface.
    pub fn unpin_link(&self, iface: &str) -> Result<(), DataplaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        let pin = dir.join(format!("{}{iface}", pins::LINK_PREFIX));
        match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataplaneError::PinIo {
                what: "remove",
                path: pin,
                source,
            }),
        }
    }

    /// Interfaces with a pinned attachment in the pin directory, by name.
    pub fn pinned_links(&self) -> Vec<String> {
        let Some(dir) = &self.pin_dir else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix(pins::LINK_PREFIX))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
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
        self.prepare_nat(ops)?;
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
                MapOp::SetSnatPool { service_id, pool } => self
                    .array::<foobar_lb_common::SnatPool>(foobar_lb_common::MAP_SNAT_POOLS)?
                    .set(*service_id, pool.as_ref(), 0)
                    .map_err(map_err(foobar_lb_common::MAP_SNAT_POOLS))?,
                MapOp::SetSnatAddrs { addrs } => self.set_snat_addrs(addrs)?,
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
        // The attach mode (`set_attach_mode`) outlives a MAC change and a restart that adopts
        // the pinned attachment.
        let mode = self
            .array::<Iface>(MAP_IFACES)?
            .get(&ifindex, 0)
            .map_or(0, |i| i.flags & IFACE_GENERIC);
        let entry = Iface {
            mac,
            flags: IFACE_ACTIVE | mode,
        };
        // A redirect target before frames can arrive on it.
        let mut egress: aya::maps::DevMapHash<&mut MapData> =
            aya::maps::DevMapHash::try_from(self.map_mut(MAP_EGRESS)?)
                .map_err(map_err(MAP_EGRESS))?;
        egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| DataplaneError::Egress { ifindex, source })?;
        self.array::<Iface>(MAP_IFACES)?
            .set(ifindex, entry, 0)
            .map_err(map_err(MAP_IFACES))
    }

    /// Records how the program is attached to an interface it balances on (after
    /// [`Self::set_interface`]): in generic mode a frame keeps its checksum state through
    /// the program, and a partial checksum the program meets must stay partial
    /// (`IFACE_GENERIC`; the program's `partial` module).
    pub fn set_attach_mode(&mut self, ifindex: u32, generic: bool) -> Result<(), DataplaneError> {
        let mut ifaces = self.array::<Iface>(MAP_IFACES)?;
        let mut entry = ifaces.get(&ifindex, 0).map_err(map_err(MAP_IFACES))?;
        entry.flags = (entry.flags & !IFACE_GENERIC) | if generic { IFACE_GENERIC } else { 0 };
        ifaces.set(ifindex, entry, 0).map_err(map_err(MAP_IFACES))
    }

    /// Forgets an interface index (the device is gone or no longer configured): frames on it
    /// are no longer balanced should a program still run there.
    pub fn clear_interface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        if ifindex >= MAX_IFINDEX {
            return Ok(());
        }
        self.array::<Iface>(MAP_IFACES)?
            .set(ifindex, Iface::default(), 0)
            .map_err(map_err(MAP_IFACES))?;
        if let Ok(mut egress) =
            aya::maps::DevMapHash::<&mut MapData>::try_from(self.map_mut(MAP_EGRESS)?)
        {
            // Absent already (never written, or the device is gone): nothing to forget.
            let _ = egress.remove(ifindex);
        }
        Ok(())
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

    /// SYNs backend `id` refused with a RST (NAT and full NAT), summed over CPUs.
    pub fn refused(&self, id: u32) -> Result<u64, DataplaneError> {
        let name = foobar_lb_common::MAP_BACKEND_REFUSED;
        let values = self
            .percpu::<u64>(name)?
            .get(&id, 0)
            .map_err(map_err(name))?;
        Ok(values.iter().sum())
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
        // Only the used slots are kept: a whole set is 256 KiB.
        let mut live = Vec::new();
        for service_id in sets.keys() {
            let service_id = service_id.map_err(map_err(MAP_BACKEND_SETS))?;
            let set = Box::new(
                sets.get(&service_id, 0)
                    .map_err(map_err(MAP_BACKEND_SETS))?,
            );
            live.push((service_id, crate::reconcile::live_slots(&set)));
        }
        let sets = live;
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
            snat_addrs: self.snat_addrs()?,
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
        let backends = self.own_array::<Backend>(MAP_BACKENDS)?;
        let mut clock = self.own_array::<u32>(MAP_FLOW_CLOCK)?;
        let reader = self.own_array::<u32>(MAP_FLOW_CLOCK)?;
        // The clock is right before the first flow is stamped, then kept right by a thread of
        // its own (the walker may take seconds over a large table).
        clock
            .set(0, flow_now(), 0)
            .map_err(map_err(MAP_FLOW_CLOCK))?;
        let counts = FlowCounts::default();
        let stop = counts.stop.clone();
        std::thread::Builder::new()
            .name("flow-clock".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = clock.set(0, flow_now(), 0) {
                        log::warn!("cannot advance the flow clock: {e}");
                    }
                    std::thread::sleep(FLOW_CLOCK_EVERY);
                }
            })
            .map_err(DataplaneError::Thread)?;
        let (latest, entries, stop) = (
            counts.latest.clone(),
            counts.entries.clone(),
            counts.stop.clone(),
        );
        std::thread::Builder::new()
            .name("flow-counter".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let (counts, total) = open_flows_per_backend(&flows, &backends, &reader);
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(counts);
                    entries.store(total, Ordering::Relaxed);
                    std::thread::sleep(every.max(start.elapsed()));
                }
            })
            .map_err(DataplaneError::Thread)?;
        Ok(counts)
    }

    /// Open flows per backend id (walks the table: for status output only); see
    /// [`flow_is_open`].
    pub fn flows_per_backend(&self) -> Result<std::collections::HashMap<u32, u64>, DataplaneError> {
        let map = self.map(MAP_FLOWS)?;
        let flows: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(map).map_err(map_err(MAP_FLOWS))?;
        let backends: Array<&MapData, Backend> =
            Array::try_from(self.map(MAP_BACKENDS)?).map_err(map_err(MAP_BACKENDS))?;
        let clock: Array<&MapData, u32> =
            Array::try_from(self.map(MAP_FLOW_CLOCK)?).map_err(map_err(MAP_FLOW_CLOCK))?;
        Ok(open_flows_per_backend(&flows, &backends, &clock).0)
    }

    /// A descriptor of its own on an array map, for a thread that outlives this borrow.
    fn own_array<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Array<MapData, V>, DataplaneError> {
        let aya::maps::Map::Array(data) = self.map(name)? else {
            return Err(DataplaneError::Missing(name));
        };
        let id = data.info().map_err(map_err(name))?.id();
        let own = MapData::from_id(id).map_err(map_err(name))?;
        Array::try_from(aya::maps::Map::Array(own)).map_err(map_err(name))
    }
}

/// How often the flow clock is advanced (its unit is ~1.07 s).
const FLOW_CLOCK_EVERY: Duration = Duration::from_millis(250);

/// How long a flow with no packets still counts as open, in seconds (IPVS's defaults for a
/// director that sees only the client's side): TCP, TCP after the client's FIN (the server may
/// still be sending; the client's ACKs keep the flow seen), UDP.
pub const TCP_IDLE_SECS: u64 = 900;
pub const TCP_FIN_IDLE_SECS: u64 = 120;
pub const UDP_IDLE_SECS: u64 = 300;

/// Whether a flow entry is an open connection at flow time `now`: not reset, and seen within
/// its idle timeout (see the constants above). Half-closed TCP connections still count.
pub fn flow_is_open(key: &FlowKey, v: &FlowValue, now: u32) -> bool {
    if v.seen & FLOW_RST != 0 {
        return false;
    }
    let idle = if key.proto == foobar_lb_common::PROTO_UDP {
        UDP_IDLE_SECS
    } else if v.seen & FLOW_FIN != 0 {
        TCP_FIN_IDLE_SECS
    } else {
        TCP_IDLE_SECS
    };
    // In flow-time units (2^30 ns), rounded up: an entry counts at least as long as `idle`.
    let units = (idle * 1_000_000_000).div_ceil(1 << 30);
    u64::from(flow_age(now, v.seen & FLOW_TIME_MASK)) <= units
}

/// The flow clock now (`CLOCK_MONOTONIC`, the clock the program reads coarsely).
pub fn flow_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    flow_time(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Open flows per backend id: entries that [`flow_is_open`] and whose backend id still has
/// the owner word (service and generation) the flow was scheduled with, so entries left by a
/// removed backend are never credited to the one that reuses its id. Also: all entries.
fn open_flows_per_backend<F, B, C>(
    flows: &HashMap<F, FlowKey, FlowValue>,
    backends: &Array<B, Backend>,
    clock: &Array<C, u32>,
) -> (std::collections::HashMap<u32, u64>, u64)
where
    F: std::borrow::Borrow<MapData>,
    B: std::borrow::Borrow<MapData>,
    C: std::borrow::Borrow<MapData>,
{
    let owners: Vec<u32> = (0..MAX_BACKENDS)
        .map(|id| backends.get(&id, 0).map_or(0, |b| b.owner))
        .collect();
    // The clock the program stamps flows with (0 where no daemon keeps it, as in tests).
    let now = clock.get(&0, 0).unwrap_or(0);
    let mut counts = std::collections::HashMap::new();
    let mut entries = 0;
    for (k, v) in flows.iter().flatten() {
        entries += 1;
        let current = owners.get(v.backend_id as usize).copied();
        if current == Some(v.owner) && flow_is_open(&k, &v, now) {
            *counts.entry(v.backend_id).or_default() += 1;
        }
    }
    (counts, entries)
}

/// Open flows per backend id, as last counted by the walker thread of
/// [`Dataplane::spawn_flow_counter`]; the thread stops when this is dropped.
#[derive(Default)]
pub struct FlowCounts {
    latest: Arc<Mutex<Arc<std::collections::HashMap<u32, u64>>>>,
    entries: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FlowCounts {
    pub fn latest(&self) -> Arc<std::collections::HashMap<u32, u64>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Entries in the flow table at the last walk, open or not (for "table near full").
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use foobar_lb_common::{PROTO_TCP, PROTO_UDP};

    fn key(proto: u8) -> FlowKey {
        FlowKey {
            proto,
            ..Default::default()
        }
    }

    /// A flow value last seen `secs` before `now` with `bits` (FIN/RST).
    fn seen(now: u32, secs: u64, bits: u32) -> FlowValue {
        let ago = ((secs * 1_000_000_000) >> 30) as u32;
        FlowValue {
            seen: (now.wrapping_sub(ago) & FLOW_TIME_MASK) | bits,
            ..Default::default()
        }
    }

    #[test]
    fn flows_age_by_time_half_closed_ones_count_and_reset_ones_do_not() {
        // Near the clock's wrap too: ages are taken modulo the time bits.
        for now in [5_000u32, 3, FLOW_TIME_MASK] {
            let tcp = key(PROTO_TCP);
            assert!(flow_is_open(&tcp, &seen(now, 0, 0), now));
            assert!(flow_is_open(&tcp, &seen(now, 890, 0), now));
            assert!(
                !flow_is_open(&tcp, &seen(now, 1000, 0), now),
                "idle TCP ages out"
            );
            assert!(
                flow_is_open(&tcp, &seen(now, 60, FLOW_FIN), now),
                "half-closed"
            );
            assert!(!flow_is_open(&tcp, &seen(now, 200, FLOW_FIN), now));
            assert!(!flow_is_open(&tcp, &seen(now, 0, FLOW_RST), now), "reset");
            let udp = key(PROTO_UDP);
            assert!(flow_is_open(&udp, &seen(now, 250, 0), now));
            assert!(!flow_is_open(&udp, &seen(now, 400, 0), now));
        }
    }
}
