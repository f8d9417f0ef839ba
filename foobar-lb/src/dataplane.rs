//! The only module that touches aya: loads the XDP object, attaches it, executes map operations
//! planned by [`crate::reconcile`] and reads the counters.

use std::path::{Path, PathBuf};

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
    encode_addr, prefix_mask, verdict, vip_filter_bit, Backend, BackendSet, BlockKey4, BlockKey6,
    BufferSlot, Counters, FwWords, PrefixLen, PrefixLens, RuleSet, ServiceInfo, ServiceKey,
    VipFilter, VipKey, FAMILY_V4, FAMILY_V6, FW_HAS_BLOCKLIST, FW_HAS_RULES, FW_IDX_BLOCKLIST_SLOT,
    FW_IDX_FLAGS, FW_IDX_GEN, MAP_BACKENDS, MAP_BACKEND_SETS, MAP_BACKEND_STATS, MAP_BLOCKLIST4,
    MAP_BLOCKLIST6, MAP_BLOCK_LENS, MAP_FLOWS, MAP_FW_FLAGS, MAP_FW_RULES, MAP_RATE_BUCKETS,
    MAP_RR_CURSORS, MAP_RULE_STATS, MAP_SERVICES, MAP_SERVICE_STATS, MAP_VERDICT_STATS, MAP_VIPS,
    MAP_VIP_FILTER, MAP_VIP_POLICY, MAX_BLOCKED, MAX_PREFIX_LENS, PASS_PROG_NAME, PROG_NAME,
    VIP_FILTER_WORDS, VIP_POLICY_ALLOW, VIP_POLICY_DROP,
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
    #[error("XDP link on {iface}: {source}")]
    Link {
        iface: String,
        #[source]
        source: LinkError,
    },
    #[error("cannot pin {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("{0}")]
    Bpffs(String),
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

/// What a pinned data plane holds: services by key, and backend entries by id.
pub type PinnedState = (Vec<(ServiceKey, ServiceInfo)>, Vec<(u32, Backend)>);

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
    logger: Option<Logger>,
}

impl Dataplane {
    /// Loads the object and the program (not attached).
    pub fn load(opts: &LoadOptions) -> Result<Dataplane, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_FLOWS, opts.flow_table_size);
        let mut adopted = false;
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs(dir)?;
            adopted = dir.join(MAP_SERVICES).exists();
            if adopted {
                check_pinned_layouts(dir, opts.flow_table_size)?;
            }
            // Every map but aya-log's (per process) carries state across daemon restarts.
            for (name, _, _) in expected_layouts() {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
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
            logger,
        })
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
        let pin = dir.join(format!("link-{iface}"));
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
        fd.pin(&pin).map_err(|e| DataplaneError::Pin {
            path: pin.clone(),
            reason: e.to_string(),
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

    // ---- Firewall ----------------------------------------------------------------------------

    fn fw_words(&self) -> Result<FwWords, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_FW_FLAGS)
            .ok_or(DataplaneError::Missing(MAP_FW_FLAGS))?;
        let arr: Array<&MapData, FwWords> = Array::try_from(map).map_err(map_err(MAP_FW_FLAGS))?;
        arr.get(&0, 0).map_err(map_err(MAP_FW_FLAGS))
    }

    /// Changes the firewall control words (the daemon is their only writer).
    fn update_fw_words(&mut self, f: impl FnOnce(&mut FwWords)) -> Result<(), DataplaneError> {
        let mut w = self.fw_words()?;
        let before = w;
        f(&mut w);
        if w != before {
            self.array::<FwWords>(MAP_FW_FLAGS)?
                .set(0, w, 0)
                .map_err(map_err(MAP_FW_FLAGS))?;
        }
        Ok(())
    }

    /// Sets or clears one `FW_HAS_*` bit.
    pub fn set_fw_flag(&mut self, bit: u32, on: bool) -> Result<(), DataplaneError> {
        self.update_fw_words(|w| {
            let f = &mut w[FW_IDX_FLAGS as usize];
            *f = if on { *f | bit } else { *f & !bit };
        })
    }

    /// Replaces the whole rule list in one map update, then switches rule evaluation on or off.
    pub fn set_rules(&mut self, set: &RuleSet) -> Result<(), DataplaneError> {
        if set.len > 0 {
            self.hash::<u32, RuleSet>(MAP_FW_RULES)?
                .insert(0, set, 0)
                .map_err(map_err(MAP_FW_RULES))?;
        }
        self.set_fw_flag(FW_HAS_RULES, set.len > 0)?;
        self.bump_fw_generation()
    }

    pub fn reset_rule_counters(&mut self) -> Result<(), DataplaneError> {
        for i in 0..foobar_lb_common::MAX_RULES as u32 {
            self.reset_counters(MAP_RULE_STATS, i)?;
        }
        Ok(())
    }

    /// Packets/bytes matched per rule index.
    pub fn rule_counters(&self, n: usize) -> Result<Vec<Counters>, DataplaneError> {
        (0..n as u32)
            .map(|i| self.counters(MAP_RULE_STATS, i))
            .collect()
    }

    /// Loads a block list atomically from the data plane's view: fills the idle buffer and its
    /// prefix-length table, then flips the live-buffer word and bumps the firewall generation
    /// (so established flows are checked against the new list). Logs progress for long lists.
    pub fn load_blocklist(&mut self, nets: &[ipnet::IpNet]) -> Result<(), DataplaneError> {
        let lens = prefix_lens(nets)?;
        if nets.len() > MAX_BLOCKED as usize {
            return Err(DataplaneError::Bpffs(format!(
                "block list of {} prefixes: at most {MAX_BLOCKED}",
                nets.len()
            )));
        }
        let live = self.fw_words()?[FW_IDX_BLOCKLIST_SLOT as usize];
        let idle = 1 - live.min(1);
        // Leftovers of an interrupted load in the idle buffer go first.
        self.clear_blocklist_slot(idle as u8)?;
        let slot = idle as u8;
        let v4 = nets.iter().filter_map(|n| match n {
            ipnet::IpNet::V4(n) => Some(BlockKey4 {
                addr: u32::from_ne_bytes(n.network().octets()),
                len: n.prefix_len(),
                slot,
                _pad: [0; 2],
            }),
            _ => None,
        });
        self.write_keys(MAP_BLOCKLIST4, v4, nets.len())?;
        let v6 = nets.iter().filter_map(|n| match n {
            ipnet::IpNet::V6(n) => Some(BlockKey6 {
                addr: encode_addr(n.network().into()).0,
                len: n.prefix_len(),
                slot,
                _pad: [0; 2],
            }),
            _ => None,
        });
        self.write_keys(MAP_BLOCKLIST6, v6, nets.len())?;
        self.array::<PrefixLens>(MAP_BLOCK_LENS)?
            .set(idle, lens, 0)
            .map_err(map_err(MAP_BLOCK_LENS))?;
        // One update: the live buffer, the stage flag and the generation change together.
        self.update_fw_words(|w| {
            w[FW_IDX_BLOCKLIST_SLOT as usize] = idle;
            let f = &mut w[FW_IDX_FLAGS as usize];
            *f = if nets.is_empty() {
                *f & !FW_HAS_BLOCKLIST
            } else {
                *f | FW_HAS_BLOCKLIST
            };
            w[FW_IDX_GEN as usize] = w[FW_IDX_GEN as usize].wrapping_add(1);
        })?;
        // A packet that read the old slot just before the flip finishes within microseconds
        // (XDP runs to completion under RCU); wait well past that, then free the old buffer.
        std::thread::sleep(std::time::Duration::from_millis(10));
        self.clear_blocklist_slot(live.min(1) as u8)
    }

    fn write_keys<K: aya::Pod>(
        &mut self,
        name: &'static str,
        keys: impl Iterator<Item = K>,
        total: usize,
    ) -> Result<(), DataplaneError> {
        let mut list = self.hash::<K, u32>(name)?;
        for (i, k) in keys.enumerate() {
            list.insert(k, 1, 0).map_err(map_err(name))?;
            if (i + 1) % 50_000 == 0 {
                log::info!("block list: {} of {total} prefixes written", i + 1);
            }
        }
        Ok(())
    }

    fn clear_blocklist_slot(&mut self, slot: u8) -> Result<(), DataplaneError> {
        self.clear_slot::<BlockKey4>(MAP_BLOCKLIST4, slot)?;
        self.clear_slot::<BlockKey6>(MAP_BLOCKLIST6, slot)
    }

    fn clear_slot<K: aya::Pod + BufferSlot>(
        &mut self,
        name: &'static str,
        slot: u8,
    ) -> Result<(), DataplaneError> {
        let mut list = self.hash::<K, u32>(name)?;
        let old: Vec<K> = list
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot() == slot)
            .collect();
        for k in &old {
            let _ = list.remove(k);
        }
        Ok(())
    }

    /// Makes every established flow pass the firewall again on its next packet.
    pub fn bump_fw_generation(&mut self) -> Result<(), DataplaneError> {
        self.update_fw_words(|w| w[FW_IDX_GEN as usize] = w[FW_IDX_GEN as usize].wrapping_add(1))
    }

    /// Rewrites the VIP prefilter from the VIP set in the maps (plus `adding`, written just
    /// before it shows up there).
    fn write_vip_filter(&mut self, adding: Option<&VipKey>) -> Result<(), DataplaneError> {
        let vips: Vec<VipKey> = {
            let map = self
                .ebpf
                .map(MAP_VIPS)
                .ok_or(DataplaneError::Missing(MAP_VIPS))?;
            let m: HashMap<&MapData, VipKey, u32> =
                HashMap::try_from(map).map_err(map_err(MAP_VIPS))?;
            m.keys().filter_map(Result::ok).collect()
        };
        let mut filter: VipFilter = [0; VIP_FILTER_WORDS];
        for v in vips.iter().chain(adding) {
            let bit = vip_filter_bit(&v.addr, v.family) as usize;
            filter[bit >> 6] |= 1 << (bit & 63);
        }
        self.array::<VipFilter>(MAP_VIP_FILTER)?
            .set(0, filter, 0)
            .map_err(map_err(MAP_VIP_FILTER))
    }

    /// Sets the policy for VIP traffic matching no service on interface `ifindex`.
    pub fn set_vip_policy(&mut self, ifindex: u32, drop: bool) -> Result<(), DataplaneError> {
        let policy = if drop {
            VIP_POLICY_DROP
        } else {
            VIP_POLICY_ALLOW
        };
        self.hash::<u32, u32>(MAP_VIP_POLICY)?
            .insert(ifindex, policy, 0)
            .map_err(map_err(MAP_VIP_POLICY))
    }

    /// Services and backend entries as the maps hold them (to adopt a pinned data plane).
    pub fn read_state(&self) -> Result<PinnedState, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_SERVICES)
            .ok_or(DataplaneError::Missing(MAP_SERVICES))?;
        let services: HashMap<&MapData, ServiceKey, ServiceInfo> =
            HashMap::try_from(map).map_err(map_err(MAP_SERVICES))?;
        let services = services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_SERVICES))?;
        let map = self
            .ebpf
            .map(MAP_BACKENDS)
            .ok_or(DataplaneError::Missing(MAP_BACKENDS))?;
        let arr: Array<&MapData, Backend> = Array::try_from(map).map_err(map_err(MAP_BACKENDS))?;
        let mut backends = Vec::new();
        for (id, b) in arr.iter().enumerate() {
            let b = b.map_err(map_err(MAP_BACKENDS))?;
            if b.state != foobar_lb_common::BACKEND_UNUSED {
                backends.push((id as u32, b));
            }
        }
        Ok((services, backends))
    }

    /// Open (not closing) flow-table entries per backend id (walks the table: for status
    /// output only). TCP flows stop counting at their FIN or RST; UDP flows count until the
    /// LRU evicts them.
    pub fn flows_per_backend(&self) -> Result<std::collections::HashMap<u32, u64>, DataplaneError> {
        use foobar_lb_common::{FlowKey, FlowValue};
        let map = self
            .ebpf
            .map(MAP_FLOWS)
            .ok_or(DataplaneError::Missing(MAP_FLOWS))?;
        let flows: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(map).map_err(map_err(MAP_FLOWS))?;
        let mut counts = std::collections::HashMap::new();
        for (_, v) in flows.iter().flatten().filter(|(_, v)| v.closing == 0) {
            *counts.entry(v.backend_id).or_default() += 1;
        }
        Ok(counts)
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

/// Removes a pinned data plane: unpinning the links detaches the program, unpinning the maps
/// frees them once no program uses them. Returns what was removed.
pub fn teardown(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => {
            return Err(DataplaneError::Bpffs(format!(
                "cannot read {}: {e}",
                pin_dir.display()
            )))
        }
    };
    // Links first, so the program stops before its maps go.
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
    });
    for path in paths {
        std::fs::remove_file(&path)
            .map_err(|e| DataplaneError::Bpffs(format!("cannot remove {}: {e}", path.display())))?;
        removed.push(path);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// (map, key size, value size) of every pinned map, from the shared types. aya reuses a
/// pinned map without comparing it to the object's definition, so the daemon compares first.
fn expected_layouts() -> [(&'static str, usize, usize); 18] {
    use foobar_lb_common::{Bucket, FlowKey, FlowValue, FwWords, RateKey};
    use std::mem::size_of;
    [
        (
            MAP_SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceInfo>(),
        ),
        (MAP_VIPS, size_of::<VipKey>(), 4),
        (MAP_BACKEND_SETS, 4, size_of::<BackendSet>()),
        (MAP_BACKENDS, 4, size_of::<Backend>()),
        (MAP_RR_CURSORS, 4, 8),
        (MAP_FLOWS, size_of::<FlowKey>(), size_of::<FlowValue>()),
        (MAP_VERDICT_STATS, 4, 8),
        (MAP_SERVICE_STATS, 4, size_of::<Counters>()),
        (MAP_BACKEND_STATS, 4, size_of::<Counters>()),
        (MAP_FW_FLAGS, 4, size_of::<FwWords>()),
        (MAP_FW_RULES, 4, size_of::<RuleSet>()),
        (MAP_RULE_STATS, 4, size_of::<Counters>()),
        (MAP_BLOCKLIST4, size_of::<BlockKey4>(), 4),
        (MAP_BLOCKLIST6, size_of::<BlockKey6>(), 4),
        (MAP_BLOCK_LENS, 4, size_of::<PrefixLens>()),
        (MAP_VIP_FILTER, 4, size_of::<VipFilter>()),
        (MAP_VIP_POLICY, 4, 4),
        (MAP_RATE_BUCKETS, size_of::<RateKey>(), size_of::<Bucket>()),
    ]
}

/// Refuses to adopt pinned maps whose layout this build does not share (an older or newer
/// foobar-lb), or a flow table of another size: reusing them would misread their contents.
fn check_pinned_layouts(dir: &Path, flow_table_size: u32) -> Result<(), DataplaneError> {
    let fix = format!(
        "run `foobar-lb teardown --pin-dir {}` (this interrupts traffic) and start again",
        dir.display()
    );
    for (name, key, value) in expected_layouts() {
        let path = dir.join(name);
        if !path.exists() {
            return Err(DataplaneError::Bpffs(format!(
                "{} holds a partial data plane (no {name}): {fix}",
                dir.display()
            )));
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            return Err(DataplaneError::Bpffs(format!(
                "pinned map {} has key/value sizes {}/{}, this build expects {key}/{value} (made \
                 by another foobar-lb version): {fix}",
                path.display(),
                info.key_size(),
                info.value_size()
            )));
        }
        if name == MAP_FLOWS && info.max_entries() != flow_table_size {
            return Err(DataplaneError::Bpffs(format!(
                "the pinned flow table holds {} flows but flow_table_size is {flow_table_size}: \
                 set it back, or {fix}",
                info.max_entries()
            )));
        }
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `dir` exists on a bpffs, mounting one at /sys/fs/bpf if that is where it goes and
/// none is mounted (it is not by default on these machines).
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        let _ = std::fs::create_dir_all(sys);
        let ok = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        } == 0;
        if !ok {
            return Err(DataplaneError::Bpffs(format!(
                "cannot mount bpffs at /sys/fs/bpf: {} (mount it: `mount -t bpf bpf /sys/fs/bpf`)",
                std::io::Error::last_os_error()
            )));
        }
        log::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| DataplaneError::Bpffs(format!("cannot create {}: {e}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Bpffs(format!(
            "pin_dir {} is not on a bpffs: choose a directory under /sys/fs/bpf or mount one \
             (`mount -t bpf bpf DIR`)",
            dir.display()
        )));
    }
    Ok(())
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

/// Loads one auxiliary program of the object (not the balancer) with small maps.
fn load_aux(name: &'static str, mac: Option<[u8; 6]>) -> Result<Ebpf, DataplaneError> {
    if OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt);
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_FLOWS, 1024);
    if let Some(mac) = &mac {
        loader.override_global(foobar_lb_common::BENCH_MAC_GLOBAL, mac, true);
    }
    let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing("auxiliary XDP program"))?
        .try_into()
        .map_err(DataplaneError::Program)?;
    prog.load().map_err(DataplaneError::Program)?;
    Ok(ebpf)
}

/// Auxiliary programs for benchmarks, loaded but not attached: the XDP_PASS floor and the
/// minimal fixed-MAC rewrite. Run them with BPF_PROG_TEST_RUN or attach them.
pub struct AuxProgram {
    ebpf: Ebpf,
    name: &'static str,
}

impl AuxProgram {
    pub fn pass() -> Result<AuxProgram, DataplaneError> {
        Ok(AuxProgram {
            ebpf: load_aux(PASS_PROG_NAME, None)?,
            name: PASS_PROG_NAME,
        })
    }

    pub fn fixed_mac(mac: [u8; 6]) -> Result<AuxProgram, DataplaneError> {
        let name = foobar_lb_common::BENCH_FIXED_PROG_NAME;
        Ok(AuxProgram {
            ebpf: load_aux(name, Some(mac))?,
            name,
        })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded")
    }

    /// Attaches to `iface` (of the current network namespace) for as long as this lives.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        let m = match mode {
            XdpMode::Generic => AyaXdpMode::Skb,
            XdpMode::Native | XdpMode::Auto => AyaXdpMode::Driver,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded");
        prog.attach(iface, m)
            .map(|_| ())
            .map_err(|source| DataplaneError::Attach {
                iface: iface.to_owned(),
                mode: "requested",
                source,
            })
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

/// The distinct prefix lengths of a list per family, longest first, with their masks.
fn prefix_lens(nets: &[ipnet::IpNet]) -> Result<PrefixLens, DataplaneError> {
    let mut out = PrefixLens::default();
    for (family, v6) in [(FAMILY_V4, false), (FAMILY_V6, true)] {
        let mut lens: Vec<u8> = nets
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .map(|n| n.prefix_len())
            .collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        if lens.len() > MAX_PREFIX_LENS {
            return Err(DataplaneError::Bpffs(format!(
                "block list uses {} distinct IPv{} prefix lengths ({:?}); at most \
                 {MAX_PREFIX_LENS} (each costs a lookup per packet): aggregate or split prefixes",
                lens.len(),
                if v6 { 6 } else { 4 },
                lens
            )));
        }
        let slots = if family == FAMILY_V4 {
            &mut out.v4
        } else {
            &mut out.v6
        };
        for (slot, len) in slots.iter_mut().zip(&lens) {
            *slot = PrefixLen {
                mask: prefix_mask(*len, v6),
                len: *len,
                _pad: [0; 3],
            };
        }
        if v6 {
            out.n6 = lens.len() as u32;
        } else {
            out.n4 = lens.len() as u32;
        }
    }
    Ok(out)
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
