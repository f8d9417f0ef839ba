//! NAT connection tracking from userspace: the backend-address prefilter and `FW_HAS_NAT`
//! (written before any NAT backend can get a flow), the sweeper thread that forgets idle
//! connections, and the listing behind `foobar-lb flows`.
//!
//! The program writes each direction's last-seen time and FIN/RST bits into its own entry
//! (`NatFwd::seen` for the client's packets, `NatRev::seen` for the backend's); the state and
//! its idle timeout follow from both ([`nat_state`]).

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use foobar_lb_common::{
    decode_addr, flow_age, nat_reply_key, vip_filter_bit, Backend, FlowKey, NatFwd, NatRev,
    VipFilter, BACKEND_UNUSED, FLOW_FIN, FLOW_RST, FLOW_TIME_MASK, FWD_FULLNAT, FWD_NAT,
    FW_HAS_NAT, FW_HAS_SNAT, MAP_BACKENDS, MAP_FLOW_CLOCK, MAP_NAT_FWD, MAP_NAT_REV,
    MAP_NAT_SRC_FILTER, MAP_SNAT_ADDRS, NAT_FULL, NAT_REPLIED, NAT_TIME_MASK, PROTO_UDP,
    VIP_FILTER_WORDS,
};

use super::{flow_now, map_err, Dataplane, DataplaneError};
use crate::{config::NatTimeouts, reconcile::MapOp};

/// A tracked connection's state, as conntrack would name it, from the flags seen each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatState {
    /// TCP: the backend has not answered.
    SynSent,
    Established,
    /// TCP: a FIN seen in either direction.
    Closing,
    /// TCP: a RST seen.
    Closed,
    /// UDP: no answer yet.
    Unreplied,
    /// UDP: answered.
    Replied,
}

impl NatState {
    pub fn name(self) -> &'static str {
        match self {
            NatState::SynSent => "syn_sent",
            NatState::Established => "established",
            NatState::Closing => "closing",
            NatState::Closed => "closed",
            NatState::Unreplied => "unreplied",
            NatState::Replied => "replied",
        }
    }

    /// Its idle timeout in seconds.
    pub fn timeout(self, t: &NatTimeouts) -> u32 {
        match self {
            NatState::SynSent => t.tcp_syn,
            NatState::Established => t.tcp_established,
            NatState::Closing => t.tcp_closing,
            NatState::Closed => t.tcp_closed,
            NatState::Unreplied => t.udp,
            NatState::Replied => t.udp_stream,
        }
    }
}

/// The state of a connection of protocol `proto` from its two `seen` words.
pub fn nat_state(proto: u8, fwd_seen: u32, rev_seen: u32) -> NatState {
    let replied = rev_seen & NAT_REPLIED != 0;
    if proto == PROTO_UDP {
        return if replied {
            NatState::Replied
        } else {
            NatState::Unreplied
        };
    }
    let both = fwd_seen | rev_seen;
    if both & FLOW_RST != 0 {
        NatState::Closed
    } else if both & FLOW_FIN != 0 {
        NatState::Closing
    } else if replied {
        NatState::Established
    } else {
        NatState::SynSent
    }
}

/// Flow-time units (2^30 ns) since the connection's last packet in either direction.
pub fn nat_idle(now: u32, fwd_seen: u32, rev_seen: u32) -> u32 {
    let fwd = flow_age(now, fwd_seen & FLOW_TIME_MASK);
    let rev = (now & NAT_TIME_MASK).wrapping_sub(rev_seen & NAT_TIME_MASK) & NAT_TIME_MASK;
    fwd.min(rev)
}

/// Seconds in flow-time units, rounded up: a connection lives at least its timeout.
fn units(secs: u32) -> u32 {
    (secs as u64 * 1_000_000_000).div_ceil(1 << 30) as u32
}

/// Whether a connection idle for `idle` units in `state` has outlived its timeout.
pub fn nat_expired(state: NatState, idle: u32, t: &NatTimeouts) -> bool {
    idle > units(state.timeout(t))
}

/// One tracked connection, for `foobar-lb flows`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NatConn {
    pub proto: u8,
    pub client: (IpAddr, u16),
    pub vip: (IpAddr, u16),
    pub backend: (IpAddr, u16),
    /// Full NAT: the source address and port the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<(IpAddr, u16)>,
    pub backend_id: u32,
    pub state: NatState,
    /// Seconds since the last packet either way (flow-clock resolution, ~1 s).
    pub idle_secs: u64,
}

impl Dataplane {
    /// Before `ops` run: the prefilter bits of the NAT backends they write, and `FW_HAS_NAT`,
    /// so the replies of a backend's first connection are recognised. Bits are only added
    /// while the process runs (a stale bit costs a hash miss on that address's traffic);
    /// [`Dataplane::refresh_nat_filter`] rebuilds the filter from the backend table.
    pub(super) fn prepare_nat(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        let adding: Vec<&Backend> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::SetBackend { backend, .. }
                    if backend.fwd_mode == FWD_NAT || backend.fwd_mode == FWD_FULLNAT =>
                {
                    Some(backend)
                }
                _ => None,
            })
            .collect();
        if adding.is_empty() {
            return Ok(());
        }
        let mut filter = self.nat_filter()?;
        let before = filter;
        for b in adding {
            let bit = vip_filter_bit(&b.addr, b.family) as usize;
            filter[bit >> 6] |= 1 << (bit & 63);
        }
        if filter != before {
            self.array::<VipFilter>(MAP_NAT_SRC_FILTER)?
                .set(0, filter, 0)
                .map_err(map_err(MAP_NAT_SRC_FILTER))?;
        }
        self.set_fw_flag(FW_HAS_NAT, true)
    }

    fn nat_filter(&self) -> Result<VipFilter, DataplaneError> {
        let arr: Array<&MapData, VipFilter> =
            Array::try_from(self.map(MAP_NAT_SRC_FILTER)?).map_err(map_err(MAP_NAT_SRC_FILTER))?;
        arr.get(&0, 0).map_err(map_err(MAP_NAT_SRC_FILTER))
    }

    /// Rebuilds the NAT prefilter from the backend table (entries in use in NAT mode) and sets
    /// `FW_HAS_NAT` to whether there is any: at start, after adopting a pinned data plane.
    pub fn refresh_nat_filter(&mut self) -> Result<(), DataplaneError> {
        let backends: Array<&MapData, Backend> =
            Array::try_from(self.map(MAP_BACKENDS)?).map_err(map_err(MAP_BACKENDS))?;
        let mut filter: VipFilter = [0; VIP_FILTER_WORDS];
        let mut any = false;
        for b in backends.iter().filter_map(Result::ok) {
            if (b.fwd_mode == FWD_NAT || b.fwd_mode == FWD_FULLNAT) && b.state != BACKEND_UNUSED {
                let bit = vip_filter_bit(&b.addr, b.family) as usize;
                filter[bit >> 6] |= 1 << (bit & 63);
                any = true;
            }
        }
        if any {
            self.array::<VipFilter>(MAP_NAT_SRC_FILTER)?
                .set(0, filter, 0)
                .map_err(map_err(MAP_NAT_SRC_FILTER))?;
        }
        self.set_fw_flag(FW_HAS_NAT, any)
    }

    /// Replaces the SNAT address set (the stray check's) with `addrs` (address, `snat_range`):
    /// new ones first, then the ones gone; `FW_HAS_SNAT` on while there are any.
    pub(super) fn set_snat_addrs(&mut self, addrs: &[(IpAddr, u32)]) -> Result<(), DataplaneError> {
        let key = |a: &IpAddr| {
            let (addr, family) = foobar_lb_common::encode_addr(*a);
            foobar_lb_common::VipKey {
                addr,
                family,
                _pad: [0; 3],
            }
        };
        if !addrs.is_empty() {
            self.set_fw_flag(FW_HAS_SNAT, true)?;
        }
        let mut map = self.hash::<foobar_lb_common::VipKey, u32>(MAP_SNAT_ADDRS)?;
        let wanted: Vec<foobar_lb_common::VipKey> = addrs.iter().map(|(a, _)| key(a)).collect();
        for ((_, range), k) in addrs.iter().zip(&wanted) {
            map.insert(k, range, 0).map_err(map_err(MAP_SNAT_ADDRS))?;
        }
        let gone: Vec<foobar_lb_common::VipKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in gone {
            let _ = map.remove(&k);
        }
        if addrs.is_empty() {
            self.set_fw_flag(FW_HAS_SNAT, false)?;
        }
        Ok(())
    }

    /// The SNAT address set as the map holds it (address, `snat_range`).
    pub(super) fn snat_addrs(&self) -> Result<Vec<(IpAddr, u32)>, DataplaneError> {
        let map: HashMap<&MapData, foobar_lb_common::VipKey, u32> =
            HashMap::try_from(self.map(MAP_SNAT_ADDRS)?).map_err(map_err(MAP_SNAT_ADDRS))?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, range)| (decode_addr(&k.addr, k.family), range))
            .collect())
    }

    /// Every tracked NAT connection (walks the table: for the CLI, not hot paths).
    pub fn nat_connections(&self) -> Result<Vec<NatConn>, DataplaneError> {
        let fwd: HashMap<&MapData, FlowKey, NatFwd> =
            HashMap::try_from(self.map(MAP_NAT_FWD)?).map_err(map_err(MAP_NAT_FWD))?;
        let rev: HashMap<&MapData, FlowKey, NatRev> =
            HashMap::try_from(self.map(MAP_NAT_REV)?).map_err(map_err(MAP_NAT_REV))?;
        let clock: Array<&MapData, u32> =
            Array::try_from(self.map(MAP_FLOW_CLOCK)?).map_err(map_err(MAP_FLOW_CLOCK))?;
        let now = clock.get(&0, 0).unwrap_or(0);
        let mut out = Vec::new();
        for (k, f) in fwd.iter().filter_map(Result::ok) {
            let r = rev.get(&nat_reply_key(&k, &f), 0).unwrap_or_default();
            let idle = nat_idle(now, f.seen, r.seen);
            out.push(NatConn {
                proto: k.proto,
                client: (decode_addr(&k.src, k.family), u16::from_be(k.sport)),
                vip: (decode_addr(&k.dst, k.family), u16::from_be(k.dport)),
                backend: (
                    decode_addr(&f.backend_addr, k.family),
                    u16::from_be(f.backend_port),
                ),
                snat: (f.flags & NAT_FULL != 0).then(|| {
                    (
                        decode_addr(&f.snat_addr, k.family),
                        u16::from_be(f.snat_port),
                    )
                }),
                backend_id: f.backend_id,
                state: nat_state(k.proto, f.seen, r.seen),
                idle_secs: (idle as u64 * (1 << 30)) / 1_000_000_000,
            });
        }
        Ok(out)
    }

    /// The kernel's memory accounting of each NAT table (forward, reverse), in bytes: the
    /// `memlock` line of the map's fdinfo. The tables are preallocated, so this is their whole
    /// capacity's, whatever their fill.
    pub fn nat_table_memlock(&self) -> Result<(u64, u64), DataplaneError> {
        let memlock = |name: &'static str| -> Result<u64, DataplaneError> {
            use std::os::fd::{AsFd, AsRawFd};
            let aya::maps::Map::HashMap(data) = self.map(name)? else {
                return Err(DataplaneError::Missing(name));
            };
            let fd = data.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map_err(|e| {
                DataplaneError::Fdinfo {
                    map: name,
                    source: e,
                }
            })?;
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or(DataplaneError::Fdinfo {
                    map: name,
                    source: std::io::Error::other("no memlock line"),
                })
        };
        Ok((memlock(MAP_NAT_FWD)?, memlock(MAP_NAT_REV)?))
    }

    /// Entries in each NAT table (forward, reverse): walks the keys.
    pub fn nat_table_fill(&self) -> Result<(u64, u64), DataplaneError> {
        let fwd: HashMap<&MapData, FlowKey, NatFwd> =
            HashMap::try_from(self.map(MAP_NAT_FWD)?).map_err(map_err(MAP_NAT_FWD))?;
        let rev: HashMap<&MapData, FlowKey, NatRev> =
            HashMap::try_from(self.map(MAP_NAT_REV)?).map_err(map_err(MAP_NAT_REV))?;
        Ok((
            fwd.keys().filter(Result::is_ok).count() as u64,
            rev.keys().filter(Result::is_ok).count() as u64,
        ))
    }

    /// Starts the sweeper: a thread of its own (a walk of a full table takes about a second)
    /// that forgets connections idle beyond their state's timeout, reverse entry first (a late
    /// reply then passes untranslated rather than a late client packet meeting a reverse entry
    /// with no forward one). It walks at most every `every`, in batches with a pause between
    /// them so it never holds a CPU for long; [`NatSweeper`] stops it when dropped.
    ///
    /// Race: a packet may refresh a connection between the sweeper's read and its delete; the
    /// sweeper reads both entries again just before deleting, which leaves a window of two
    /// syscalls on a connection idle for its whole timeout.
    pub fn spawn_nat_sweeper(
        &self,
        timeouts: NatTimeouts,
        every: Duration,
    ) -> Result<NatSweeper, DataplaneError> {
        let fwd: HashMap<MapData, FlowKey, NatFwd> =
            HashMap::try_from(aya::maps::Map::HashMap(self.own(MAP_NAT_FWD)?))
                .map_err(map_err(MAP_NAT_FWD))?;
        let rev: HashMap<MapData, FlowKey, NatRev> =
            HashMap::try_from(aya::maps::Map::HashMap(self.own(MAP_NAT_REV)?))
                .map_err(map_err(MAP_NAT_REV))?;
        let sweeper = NatSweeper::default();
        let (stop, swept) = (sweeper.stop.clone(), sweeper.swept.clone());
        let tracked = sweeper.tracked.clone();
        let mut tables = Tables { fwd, rev };
        std::thread::Builder::new()
            .name("nat-sweeper".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let (seen, n) = tables.sweep(&timeouts, flow_now(), &stop);
                    swept.fetch_add(n, Ordering::Relaxed);
                    tracked.store(seen.saturating_sub(n), Ordering::Relaxed);
                    std::thread::sleep(every.max(start.elapsed()));
                }
            })
            .map_err(DataplaneError::Thread)?;
        Ok(sweeper)
    }

    /// The same map through a descriptor of its own, for a thread.
    fn own(&self, name: &'static str) -> Result<MapData, DataplaneError> {
        let aya::maps::Map::HashMap(data) = self.map(name)? else {
            return Err(DataplaneError::Missing(name));
        };
        let id = data.info().map_err(map_err(name))?.id();
        MapData::from_id(id).map_err(map_err(name))
    }

    /// One sweep now, on the caller's thread (tests; the daemon runs the thread).
    pub fn sweep_nat(&mut self, timeouts: &NatTimeouts, now: u32) -> Result<u64, DataplaneError> {
        let mut tables = Tables {
            fwd: HashMap::try_from(aya::maps::Map::HashMap(self.own(MAP_NAT_FWD)?))
                .map_err(map_err(MAP_NAT_FWD))?,
            rev: HashMap::try_from(aya::maps::Map::HashMap(self.own(MAP_NAT_REV)?))
                .map_err(map_err(MAP_NAT_REV))?,
        };
        Ok(tables.sweep(timeouts, now, &AtomicBool::new(false)).1)
    }
}

/// Connections looked at between two pauses of the sweeper.
const SWEEP_BATCH: usize = 4096;
const SWEEP_PAUSE: Duration = Duration::from_millis(5);

struct Tables {
    fwd: HashMap<MapData, FlowKey, NatFwd>,
    rev: HashMap<MapData, FlowKey, NatRev>,
}

impl Tables {
    /// Deletes expired pairs; returns (connections looked at, connections forgotten).
    fn sweep(&mut self, t: &NatTimeouts, now: u32, stop: &AtomicBool) -> (u64, u64) {
        // The keys first: deleting while walking with get_next_key restarts the walk.
        let keys: Vec<FlowKey> = self.fwd.keys().filter_map(Result::ok).collect();
        let mut forgotten = 0;
        for batch in keys.chunks(SWEEP_BATCH) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for k in batch {
                if self.expired(k, t, now) == Some(true) {
                    if let Ok(f) = self.fwd.get(k, 0) {
                        let _ = self.rev.remove(&nat_reply_key(k, &f));
                    }
                    let _ = self.fwd.remove(k);
                    forgotten += 1;
                }
            }
            std::thread::sleep(SWEEP_PAUSE);
        }
        // Reverse entries with no forward one: left by a race of two CPUs opening and
        // forgetting the same connection. Judged only once idle for the shortest timeout, so
        // a connection being opened (reverse entry first) is never taken for one.
        let orphans: Vec<(FlowKey, NatRev)> = self.rev.iter().filter_map(Result::ok).collect();
        for (rk, r) in orphans {
            let full = r.flags & NAT_FULL != 0;
            let fk = FlowKey {
                src: if full { r.client } else { rk.dst },
                dst: r.vip,
                sport: if full { r.cport } else { rk.dport },
                dport: r.vport,
                proto: rk.proto,
                family: rk.family,
                _pad: [0; 2],
            };
            let idle = (now & NAT_TIME_MASK).wrapping_sub(r.seen & NAT_TIME_MASK) & NAT_TIME_MASK;
            if self.fwd.get(&fk, 0).is_err() && idle > units(t.tcp_closed) {
                let _ = self.rev.remove(&rk);
            }
        }
        (keys.len() as u64, forgotten)
    }

    /// Whether the connection of `k` is expired (`None`: gone meanwhile).
    fn expired(&self, k: &FlowKey, t: &NatTimeouts, now: u32) -> Option<bool> {
        let f = self.fwd.get(k, 0).ok()?;
        let Ok(r) = self.rev.get(&nat_reply_key(k, &f), 0) else {
            // A forward entry without its reverse: useless (its replies cannot be
            // translated); forgotten once idle, as a connection that never got an answer.
            let idle = flow_age(now, f.seen & FLOW_TIME_MASK);
            return Some(idle > units(t.tcp_closed));
        };
        let state = nat_state(k.proto, f.seen, r.seen);
        Some(nat_expired(state, nat_idle(now, f.seen, r.seen), t))
    }
}

/// Handle of the sweeper thread: stops it when dropped.
#[derive(Default)]
pub struct NatSweeper {
    stop: Arc<AtomicBool>,
    swept: Arc<AtomicU64>,
    tracked: Arc<AtomicU64>,
}

impl NatSweeper {
    /// Connections forgotten so far.
    pub fn swept(&self) -> u64 {
        self.swept.load(Ordering::Relaxed)
    }

    /// Connections tracked after the last sweep (at most 2 s old).
    pub fn tracked(&self) -> u64 {
        self.tracked.load(Ordering::Relaxed)
    }
}

impl Drop for NatSweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foobar_lb_common::PROTO_TCP;

    #[test]
    fn states_follow_the_flags_seen_each_way() {
        assert_eq!(nat_state(PROTO_TCP, 5, 5), NatState::SynSent);
        assert_eq!(
            nat_state(PROTO_TCP, 5, 5 | NAT_REPLIED),
            NatState::Established
        );
        assert_eq!(
            nat_state(PROTO_TCP, 5 | FLOW_FIN, 5 | NAT_REPLIED),
            NatState::Closing
        );
        assert_eq!(
            nat_state(PROTO_TCP, 5, 5 | NAT_REPLIED | FLOW_FIN),
            NatState::Closing
        );
        assert_eq!(
            nat_state(PROTO_TCP, 5 | FLOW_FIN, 5 | NAT_REPLIED | FLOW_RST),
            NatState::Closed
        );
        assert_eq!(nat_state(PROTO_UDP, 5, 5), NatState::Unreplied);
        assert_eq!(nat_state(PROTO_UDP, 5, 5 | NAT_REPLIED), NatState::Replied);
    }

    #[test]
    fn idle_is_since_the_last_packet_either_way_and_timeouts_round_up() {
        // Client side seen at 100, backend side at 90: idle since 100.
        assert_eq!(nat_idle(110, 100, 90 | NAT_REPLIED), 10);
        assert_eq!(nat_idle(110, 95 | FLOW_FIN, 105 | NAT_REPLIED), 5);
        let t = NatTimeouts::default();
        // 10 s is 9.31 units: still open at 10 units' age is wrong, at 9 right.
        assert!(!nat_expired(NatState::Closed, 10, &t));
        assert!(nat_expired(NatState::Closed, 11, &t));
        assert!(!nat_expired(NatState::Established, 6930, &t));
        assert!(nat_expired(NatState::Established, 6931, &t));
    }
}
