//! Flow-state sync between balancer nodes (README "Redundancy"): the flows this node's data
//! plane creates (its ring buffer), and its NAT connections, go to every peer that connects,
//! translated to backend addresses; the flows and NAT connections of every peer this node
//! dials are written into its own tables with its own backend ids, interfaces and next hops. On connect, the listener first sends its whole table (bulk sync);
//! a starting node is not ready before one bulk sync completed (or no peer answered in time).
//!
//! A peer's NAT connections are swept by the receiver's own sweeper (`[nat.timeouts]`), and it
//! sees none of their packets while the sender is active: so the sender re-announces every
//! connection that had a packet since the last round, every third of the shortest timeout
//! (IPVS's sync refresh does the same), each with its idle time, and the receiver's copies
//! live as long as the sender's connections do.
//!
//! Everything runs on tasks of its own, on map descriptors of its own: a dead peer, a slow
//! link or a failed write here never touches forwarding or the daemon's main loop.

mod local;
mod table;
pub mod wire;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use foobar_lb_common::{decode_addr, nat_reply_key, FlowEvent};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
    time::timeout,
};

use crate::{
    config::{NatTimeouts, SyncConfig},
    dataplane::{flow_is_open, flow_now, NatWrite, SyncMaps, SyncWalk},
};
use local::Local;
use table::{NatImport, Table};
use wire::{Entry, Frame, NatEntry, MAX_BATCH};

/// A connection's handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The listener pings this often when it has nothing to send...
const PING_EVERY: Duration = Duration::from_secs(1);
/// ...and the dialer gives a connection up after this long without a frame...
const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);
/// ...but waits this long for the first, while the listener walks a large table for the
/// bulk sync (about a second per million flows).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(60);
/// A write to a peer taking longer than this drops the connection (the peer reconnects and
/// gets a bulk sync), rather than letting events pile up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff: from the first to the last, doubling.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The id-to-address table is rebuilt from the maps at most this often (and on a miss).
const TABLE_MAX_AGE: Duration = Duration::from_secs(1);
/// How often the program's ring is read: it writes without waking the reader (a wakeup per
/// event would cost each new flow ~5 us), so the lag this adds is at most this.
const RING_POLL: Duration = Duration::from_millis(5);
/// Connections the listener serves at once from the configured peers' addresses (handshakes
/// included): nothing opening many can make it spawn without bound.
const MAX_CONNECTIONS: usize = 16;
/// Connections at once from any other address (a peer dialing from an unlisted address, or a
/// stranger): their own pool, so strangers holding silent handshakes open cannot take the
/// slots the configured peers need.
const MAX_STRANGERS: usize = 4;
/// Live events queued per connected peer before the slowest loses some (counted).
const QUEUE: usize = 1024;
/// A peer's NAT connection this node cannot localize yet (no neighbour entry for its next
/// hop: a node that just started, whose link came up with an empty neighbour table) is
/// retried this long, while the resolution its first try started completes.
const PENDING_FOR: Duration = Duration::from_secs(5);
/// At most this many such connections wait (a bulk sync's worth); more are skipped.
const PENDING_MAX: usize = 1 << 18;
/// Bounds of the NAT re-announcement period (see [`refresh_every`]).
const REFRESH_MIN: Duration = Duration::from_secs(1);
const REFRESH_MAX: Duration = Duration::from_secs(60);

/// How often live NAT connections are re-announced: a third of the shortest idle timeout a
/// live connection can have, so a receiver's copy is refreshed at least twice before it could
/// expire (tcp_closed is left out: a closed connection is not worth keeping).
pub fn refresh_every(t: &NatTimeouts) -> Duration {
    let shortest = [
        t.tcp_syn,
        t.tcp_established,
        t.tcp_closing,
        t.udp,
        t.udp_stream,
    ]
    .into_iter()
    .min()
    .unwrap_or(0);
    (Duration::from_secs(shortest.into()) / 3).clamp(REFRESH_MIN, REFRESH_MAX)
}

/// Counters and state that `status`, `stats` and the metrics show, and readiness reads.
#[derive(Default)]
pub struct SyncStats {
    /// Flow entries sent to peers (live and bulk).
    pub sent: AtomicU64,
    /// Flow entries received from peers.
    pub received: AtomicU64,
    /// Received entries written into the flow table.
    pub applied: AtomicU64,
    /// Received entries naming a service or backend this node does not have (skipped).
    pub unknown_backend: AtomicU64,
    /// NAT connections sent to peers (live, bulk and re-announced); also counted in `sent`.
    pub nat_sent: AtomicU64,
    /// Re-announcements of live NAT connections (among `nat_sent`), per peer.
    pub nat_refreshed: AtomicU64,
    /// Peers' NAT connections written into the NAT tables; also counted in `applied`.
    pub nat_applied: AtomicU64,
    /// Peers' NAT connections not written: their reply 5-tuple is another connection's here
    /// (a collision), or this node has no route or next hop for them.
    pub nat_skipped: AtomicU64,
    /// Events the program lost to a full ring (read from its counter).
    pub ring_full: AtomicU64,
    /// Events the program wrote to the ring.
    pub ring_events: AtomicU64,
    /// Live events a slow peer's connection lost (it was behind by more than its queue).
    pub lagged: AtomicU64,
    /// Connections refused because the other side did not prove the key (or we could not
    /// verify it).
    pub auth_failures: AtomicU64,
    /// Peers this node receives from now.
    pub peers_connected: AtomicU64,
    /// Bulk syncs completed from a peer since start.
    pub bulk_syncs: AtomicU64,
    /// Wall clock (ms) of the newest entry applied, as the sender stamped it, and when it was
    /// applied: their difference is the lag.
    pub last_sent_ms: AtomicU64,
    pub last_applied_ms: AtomicU64,
    /// Set once: a bulk sync completed, or the wait for one ended.
    ready: AtomicBool,
    /// Why the node became ready, or what it waits for.
    gate: Mutex<String>,
}

/// The mutex's value; a panic elsewhere while holding it leaves the value usable (each
/// change to it is made whole or not at all).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SyncStats {
    /// Counts a received batch of `received` entries of which `applied` were written, sent
    /// at `sent_ms` (the lag metric); returns `applied`.
    fn received_batch(&self, received: usize, applied: u64, sent_ms: u64) -> u64 {
        self.received.fetch_add(received as u64, Ordering::Relaxed);
        if applied > 0 {
            self.applied.fetch_add(applied, Ordering::Relaxed);
            self.last_sent_ms.store(sent_ms, Ordering::Relaxed);
            self.last_applied_ms.store(now_ms(), Ordering::Relaxed);
        }
        applied
    }

    /// `Err(why)` while a starting node waits for its bulk sync.
    pub fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self.gate_text())
        }
    }

    /// The readiness gate in words, for `status` and `ready`.
    pub fn gate_text(&self) -> String {
        lock(&self.gate).clone()
    }

    pub(crate) fn set_gate(&self, text: String, ready: bool) {
        *lock(&self.gate) = text;
        if ready {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Milliseconds between the newest applied entry's sending and its application.
    pub fn lag_ms(&self) -> u64 {
        self.last_applied_ms
            .load(Ordering::Relaxed)
            .saturating_sub(self.last_sent_ms.load(Ordering::Relaxed))
    }

    /// Seconds since the newest entry was applied (`None`: none yet).
    pub fn last_applied_age_secs(&self) -> Option<f64> {
        let at = self.last_applied_ms.load(Ordering::Relaxed);
        (at != 0).then(|| now_ms().saturating_sub(at) as f64 / 1000.0)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// New entries of this node, translated, for its peers.
#[derive(Debug, Default)]
struct Batch {
    flows: Vec<Entry>,
    nat: Vec<NatEntry>,
    /// A re-announcement of live NAT connections (counted apart).
    refresh: bool,
}

impl Batch {
    fn len(&self) -> usize {
        self.flows.len() + self.nat.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The maps and the translation table, shared by the tasks (each use is short).
struct Core {
    maps: SyncMaps,
    table: Table,
    built: Instant,
    /// This node's routes and neighbours, for peers' NAT connections (cleared with the table).
    local: Local,
    /// Peers' NAT connections waiting for this node's next hop, since when.
    pending: Vec<(Instant, NatEntry)>,
}

impl Core {
    fn rebuild(&mut self) {
        self.table = Table::new(&self.maps.services(), &self.maps.backends());
        self.built = Instant::now();
        self.local.clear();
    }

    fn fresh(&mut self) {
        if self.built.elapsed() > TABLE_MAX_AGE {
            self.rebuild();
        }
    }

    /// The node-independent form of the program's events; a miss rebuilds the table once.
    /// A NAT service's event names a connection the program tracks: its two entries are read
    /// (the SNAT port and state are there), so what is sent is what the program wrote.
    fn export(&mut self, events: &[FlowEvent], stats: &SyncStats) -> Batch {
        self.fresh();
        let mut rebuilt = false;
        let mut out = Batch::default();
        for ev in events {
            let mut done = self.export_one(ev, &mut out);
            if !done && !rebuilt {
                self.rebuild();
                rebuilt = true;
                done = self.export_one(ev, &mut out);
            }
            if !done {
                stats.unknown_backend.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }

    fn export_one(&self, ev: &FlowEvent, out: &mut Batch) -> bool {
        if self.table.is_nat(&ev.key) {
            // Gone already (closed, or the sweeper's): nothing to announce.
            let Some((fwd, rev)) = self.maps.nat_conn(&ev.key) else {
                return true;
            };
            match self.table.export_nat(&ev.key, &fwd, &rev, flow_now()) {
                Some(e) => out.nat.push(e),
                None => return false,
            }
        } else {
            match self.table.export(&ev.key, ev.backend_id, ev.owner, 0) {
                Some(e) => out.flows.push(e),
                None => return false,
            }
        }
        true
    }

    /// Fills in this node's own view of a peer's NAT connection: the interface the replies
    /// leave by (the route to the client; one the program runs on) and, for full NAT, the
    /// backend's next hop from the SNAT address. `false`: this node cannot forward it.
    fn localize(&mut self, c: &mut NatImport) -> bool {
        let family = c.key.family;
        let Some(to_client) = self.local.route(decode_addr(&c.key.src, family), None) else {
            return false;
        };
        if self.maps.iface_mac(to_client.ifindex).is_none() {
            return false;
        }
        c.rev.ifindex = to_client.ifindex;
        if c.full() {
            let (backend, snat) = (
                decode_addr(&c.fwd.backend_addr, family),
                decode_addr(&c.fwd.snat_addr, family),
            );
            let Some(hop) = self.local.route(backend, Some(snat)) else {
                return false;
            };
            let (Some(src_mac), Some(next_mac)) =
                (self.maps.iface_mac(hop.ifindex), self.local.mac(hop))
            else {
                return false;
            };
            c.fwd.ifindex = hop.ifindex;
            c.fwd.next_mac = next_mac;
            c.fwd.src_mac = src_mac;
        }
        true
    }

    /// Writes a peer's NAT connections into the NAT tables; returns how many were written.
    /// One this node cannot localize yet waits in `pending` (see [`PENDING_FOR`]).
    fn import_nat(&mut self, entries: &[NatEntry], stats: &SyncStats) -> u64 {
        let received = Instant::now();
        let entries: Vec<(Instant, NatEntry)> = entries.iter().map(|e| (received, *e)).collect();
        self.import_nat_since(&entries, stats)
    }

    /// Retries the connections waiting for a next hop (the watch task, every 100 ms).
    fn retry_pending(&mut self, stats: &SyncStats) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        let (waiting, expired): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(since, _)| since.elapsed() < PENDING_FOR);
        stats
            .nat_skipped
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        self.import_nat_since(&waiting, stats)
    }

    fn import_nat_since(&mut self, entries: &[(Instant, NatEntry)], stats: &SyncStats) -> u64 {
        self.fresh();
        let now = flow_now();
        let mut rebuilt = false;
        let mut applied = 0;
        for &(since, mut e) in entries {
            // Aged by the wait, so its copy still expires with the sender's.
            e.idle = e
                .idle
                .saturating_add((since.elapsed().as_nanos() >> 30) as u32);
            let e = &e;
            let mut local = self.table.import_nat(e, now);
            if local.is_none() && !rebuilt {
                self.rebuild();
                rebuilt = true;
                local = self.table.import_nat(e, now);
            }
            let Some(mut c) = local else {
                stats.unknown_backend.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if !self.localize(&mut c) {
                if self.pending.len() < PENDING_MAX {
                    self.pending.push((since, *e));
                } else {
                    stats.nat_skipped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // Already here (a re-announcement, or a repeated bulk sync): keep what is newer,
            // and write nothing if that is all this node's (the node carrying a connection
            // gets its own copy echoed back: a rewrite would race its program's updates).
            if let Some((f, r)) = self.maps.nat_conn(&c.key) {
                if nat_reply_key(&c.key, &f) == c.rkey {
                    c.merge(&f, &r, now);
                    if (c.fwd.seen, c.rev.seen) == (f.seen, r.seen) {
                        continue;
                    }
                }
            }
            match self.maps.write_nat(&c.key, &c.fwd, &c.rkey, &c.rev) {
                Ok(NatWrite::Written) => applied += 1,
                Ok(NatWrite::Collision) => {
                    stats.nat_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => log::warn!("sync: cannot write a peer's NAT connection: {e:#}"),
            }
        }
        stats.nat_applied.fetch_add(applied, Ordering::Relaxed);
        applied
    }

    /// Writes a peer's entries into the flow table; returns how many were written.
    fn import(&mut self, entries: &[Entry], stats: &SyncStats) -> u64 {
        self.fresh();
        let now = flow_now();
        let mut rebuilt = false;
        let mut applied = 0;
        for e in entries {
            let mut local = self.table.import(e, now);
            if local.is_none() && !rebuilt {
                self.rebuild();
                rebuilt = true;
                local = self.table.import(e, now);
            }
            let Some((key, value)) = local else {
                stats.unknown_backend.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match self.maps.write_flow(&key, &value) {
                Ok(()) => applied += 1,
                Err(e) => log::warn!("sync: cannot write a peer's flow: {e:#}"),
            }
        }
        applied
    }

    /// A fresh copy of the translation table, for a walk outside the lock.
    fn snapshot(&mut self) -> Table {
        self.rebuild();
        self.table.clone()
    }
}

/// Every open flow and tracked NAT connection of this node, node-independent (the bulk
/// sync). Walks its own descriptors with a copy of the table: the tasks sharing the core are
/// not held up for the walk's length.
fn dump(walk: &SyncWalk, table: &Table) -> Batch {
    let now = flow_now();
    let flows = walk
        .flows()
        .into_iter()
        .filter(|(k, v)| flow_is_open(k, v, now))
        .filter_map(|(k, v)| table.export(&k, v.backend_id, v.owner, v.seen))
        .collect();
    // The sweeper deletes expired connections: every tracked one is sent.
    let nat = walk
        .nat_conns()
        .into_iter()
        .filter_map(|(k, f, r)| table.export_nat(&k, &f, &r, now))
        .collect();
    Batch {
        flows,
        nat,
        refresh: false,
    }
}

/// Starts the sync tasks for `config` on the daemon's runtime; the returned stats live as long
/// as the daemon.
pub fn start(
    config: &SyncConfig,
    key: Vec<u8>,
    ring: RingBuf<MapData>,
    maps: SyncMaps,
    walk: SyncWalk,
    nat_timeouts: &NatTimeouts,
) -> Arc<SyncStats> {
    let stats = Arc::new(SyncStats::default());
    let key: Arc<[u8]> = key.into();
    let core = Arc::new(Mutex::new(Core {
        table: Table::default(),
        maps,
        built: Instant::now() - 2 * TABLE_MAX_AGE,
        local: Local::default(),
        pending: Vec::new(),
    }));
    let walk = Arc::new(walk);
    let (live, _) = broadcast::channel::<Arc<Batch>>(QUEUE);
    stats.set_gate(
        format!(
            "syncing flows: waiting for a bulk sync from {} (at most {} ms while none answers)",
            list(&config.peers),
            config.bulk_timeout_ms
        ),
        false,
    );
    tokio::spawn(read_ring(ring, core.clone(), live.clone(), stats.clone()));
    tokio::spawn(listen(
        config.listen,
        config.peers.iter().map(|p| p.ip()).collect(),
        key.clone(),
        core.clone(),
        walk.clone(),
        live.clone(),
        stats.clone(),
    ));
    tokio::spawn(refresh(
        refresh_every(nat_timeouts),
        core.clone(),
        walk,
        live,
    ));
    for &peer in &config.peers {
        tokio::spawn(dial(peer, key.clone(), core.clone(), stats.clone()));
    }
    tokio::spawn(watch(
        Duration::from_millis(config.bulk_timeout_ms),
        core,
        stats.clone(),
    ));
    log::info!(
        "sync: listening on {}, peers {}",
        config.listen,
        list(&config.peers)
    );
    stats
}

fn list(peers: &[SocketAddr]) -> String {
    peers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the program's new flows and hands them, translated, to every connected peer.
async fn read_ring(
    mut ring: RingBuf<MapData>,
    core: Arc<Mutex<Core>>,
    live: broadcast::Sender<Arc<Batch>>,
    stats: Arc<SyncStats>,
) {
    let mut tick = tokio::time::interval(RING_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the program writes whole `FlowEvent`s (checked length; any bit
                // pattern is valid for it); read unaligned from the ring's memory.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            }
            if events.len() == MAX_BATCH {
                break;
            }
        }
        if events.is_empty() {
            continue;
        }
        let entries = lock(&core).export(&events, &stats);
        if !entries.is_empty() && live.receiver_count() > 0 {
            let _ = live.send(Arc::new(entries));
        }
    }
}

/// Re-announces, every `every`, the NAT connections that had a packet since the last round
/// (a walk of the NAT table on the sync's own descriptors, outside the core's lock).
async fn refresh(
    every: Duration,
    core: Arc<Mutex<Core>>,
    walk: Arc<SyncWalk>,
    live: broadcast::Sender<Arc<Batch>>,
) {
    // Packets since the previous round, and a margin for the flow clock's ~1 s resolution.
    let within = (every.as_nanos() >> 30) as u32 + 2;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if live.receiver_count() == 0 {
            continue;
        }
        let (core, walk) = (core.clone(), walk.clone());
        let active = tokio::task::spawn_blocking(move || {
            let table = lock(&core).snapshot();
            table.export_active(&walk.nat_conns(), flow_now(), within)
        })
        .await
        .unwrap_or_default();
        for chunk in active.chunks(MAX_BATCH) {
            let batch = Batch {
                flows: Vec::new(),
                nat: chunk.to_vec(),
                refresh: true,
            };
            let _ = live.send(Arc::new(batch));
        }
    }
}

/// Accepts peers: each that proves the key gets the bulk dump, then the live flows.
/// The listener's two pools of connection slots: the configured peers' addresses, and any
/// other address (a peer dialing from an unlisted address, or a stranger). A connection holds
/// its slot until it ends, handshake included.
struct Admission {
    peer_ips: Vec<std::net::IpAddr>,
    peers: Arc<tokio::sync::Semaphore>,
    strangers: Arc<tokio::sync::Semaphore>,
}

impl Admission {
    fn new(peer_ips: Vec<std::net::IpAddr>) -> Admission {
        Admission {
            peer_ips,
            peers: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            strangers: Arc::new(tokio::sync::Semaphore::new(MAX_STRANGERS)),
        }
    }

    /// A slot for a connection from `ip`, or why there is none.
    fn admit(&self, ip: std::net::IpAddr) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
        let (pool, max) = if self.peer_ips.contains(&ip.to_canonical()) {
            (&self.peers, MAX_CONNECTIONS)
        } else {
            (&self.strangers, MAX_STRANGERS)
        };
        pool.clone()
            .try_acquire_owned()
            .map_err(|_| format!("already serving {max} connections from such addresses"))
    }
}

async fn listen(
    addr: SocketAddr,
    peer_ips: Vec<std::net::IpAddr>,
    key: Arc<[u8]>,
    core: Arc<Mutex<Core>>,
    walk: Arc<SyncWalk>,
    live: broadcast::Sender<Arc<Batch>>,
    stats: Arc<SyncStats>,
) {
    // The address may appear after the daemon starts: retry rather than give up on sync.
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                log::warn!("sync: cannot listen on {addr} ({e}); retrying");
                tokio::time::sleep(BACKOFF_MAX).await;
            }
        }
    };
    let admission = Admission::new(peer_ips);
    loop {
        let Ok((sock, from)) = listener.accept().await else {
            tokio::time::sleep(BACKOFF_MIN).await;
            continue;
        };
        let slot = match admission.admit(from.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                log::warn!("sync: {from} refused: {why}");
                continue;
            }
        };
        let (key, core, stats, live) = (key.clone(), core.clone(), stats.clone(), live.clone());
        let walk = walk.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match serve(sock, &key, core, walk, &live, &stats).await {
                Ok(()) => {}
                Err(e) if e.is_auth() => {
                    stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    log::warn!(event = "sync_auth_failed", peer:% = from; "sync: refused {from}: {e}");
                }
                Err(e @ wire::WireError::Version { .. }) => {
                    log::warn!("sync: refused {from}: {e}");
                }
                Err(e) => log::info!("sync: stream to {from} ended: {e}"),
            }
        });
    }
}

async fn serve(
    mut sock: TcpStream,
    key: &[u8],
    core: Arc<Mutex<Core>>,
    walk: Arc<SyncWalk>,
    live: &broadcast::Sender<Arc<Batch>>,
    stats: &SyncStats,
) -> Result<(), wire::WireError> {
    let _ = sock.set_nodelay(true);
    let mut w = timeout(
        HANDSHAKE_TIMEOUT,
        wire::accept_handshake(&mut sock, key, wire::instance_id()),
    )
    .await
    .map_err(|_| wire::WireError::AuthFailed)??;
    // Subscribed before the dump is taken: no flow falls between the two.
    let mut rx = live.subscribe();
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let dump = tokio::task::spawn_blocking(move || {
        // Only the table's rebuild holds the lock; the walk does not.
        let table = lock(&core).snapshot();
        dump(&walk, &table)
    })
    .await
    .unwrap_or_default();
    let count = dump.len() as u64;
    let sent_ms = now_ms();
    for chunk in dump.flows.chunks(MAX_BATCH) {
        let f = Frame::Flows {
            sent_ms,
            entries: chunk.to_vec(),
        };
        send(&mut w, &mut sock, &f).await?;
        stats.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    for chunk in dump.nat.chunks(MAX_BATCH) {
        let f = Frame::Nat {
            sent_ms,
            entries: chunk.to_vec(),
        };
        send(&mut w, &mut sock, &f).await?;
        stats.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        stats
            .nat_sent
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    send(&mut w, &mut sock, &Frame::BulkDone { count }).await?;
    let nat = dump.nat.len();
    log::info!(event = "sync_bulk_sent", peer = peer.as_str(), flows = count, nat = nat; "sync: sent {count} flow(s) to {peer} (bulk), {nat} of them NAT connections");
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            got = rx.recv() => {
                let entries = match got {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        stats.lagged.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                let sent_ms = now_ms();
                if !entries.flows.is_empty() {
                    let f = Frame::Flows { sent_ms, entries: entries.flows.clone() };
                    send(&mut w, &mut sock, &f).await?;
                }
                if !entries.nat.is_empty() {
                    let f = Frame::Nat { sent_ms, entries: entries.nat.clone() };
                    send(&mut w, &mut sock, &f).await?;
                    stats.nat_sent.fetch_add(entries.nat.len() as u64, Ordering::Relaxed);
                    if entries.refresh {
                        stats.nat_refreshed.fetch_add(entries.nat.len() as u64, Ordering::Relaxed);
                    }
                }
                stats.sent.fetch_add(entries.len() as u64, Ordering::Relaxed);
            }
            _ = ping.tick() => send(&mut w, &mut sock, &Frame::Ping).await?,
        }
    }
}

async fn send(
    w: &mut wire::FrameWriter,
    sock: &mut TcpStream,
    f: &Frame,
) -> Result<(), wire::WireError> {
    timeout(WRITE_TIMEOUT, w.send(sock, f))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Receives one peer's flows, reconnecting with backoff for as long as the daemon runs.
async fn dial(peer: SocketAddr, key: Arc<[u8]>, core: Arc<Mutex<Core>>, stats: Arc<SyncStats>) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    loop {
        let started = Instant::now();
        match receive(peer, &key, &core, &stats).await {
            Err(e) if e.is_auth() => {
                stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!(event = "sync_auth_failed", peer:% = peer; "sync: refused {peer}: {e}");
            }
            Err(e) => {
                // The first failure in a row is worth a line; a peer that stays down is not
                // worth one per attempt.
                if failures == 0 {
                    log::info!("sync: no stream from {peer}: {e}; retrying");
                }
            }
            Ok(()) => {}
        }
        failures += 1;
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
            failures = 0;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[derive(Debug, thiserror::Error)]
enum ReceiveError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection timed out")]
    Timeout,
    #[error(transparent)]
    Wire(#[from] wire::WireError),
}

impl ReceiveError {
    fn is_auth(&self) -> bool {
        matches!(self, ReceiveError::Wire(w) if w.is_auth())
    }
}

async fn receive(
    peer: SocketAddr,
    key: &[u8],
    core: &Arc<Mutex<Core>>,
    stats: &Arc<SyncStats>,
) -> Result<(), ReceiveError> {
    let mut sock = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| ReceiveError::Timeout)?
        .map_err(ReceiveError::Connect)?;
    let _ = sock.set_nodelay(true);
    let mut r = timeout(
        HANDSHAKE_TIMEOUT,
        wire::dial_handshake(&mut sock, key, wire::instance_id()),
    )
    .await
    .map_err(|_| ReceiveError::Timeout)??;
    log::info!(event = "sync_connected", peer:% = peer; "sync: receiving flows from {peer}");
    stats.peers_connected.fetch_add(1, Ordering::Relaxed);
    let result = receive_frames(peer, &mut sock, &mut r, core, stats).await;
    stats.peers_connected.fetch_sub(1, Ordering::Relaxed);
    log::info!(event = "sync_disconnected", peer:% = peer; "sync: stream from {peer} lost");
    result
}

async fn receive_frames(
    peer: SocketAddr,
    sock: &mut TcpStream,
    r: &mut wire::FrameReader,
    core: &Arc<Mutex<Core>>,
    stats: &Arc<SyncStats>,
) -> Result<(), ReceiveError> {
    let mut bulk = 0u64;
    let mut limit = FIRST_FRAME_TIMEOUT;
    loop {
        let frame = timeout(limit, r.recv(sock))
            .await
            .map_err(|_| ReceiveError::Timeout)??;
        limit = SILENCE_TIMEOUT;
        match frame {
            Frame::Flows { sent_ms, entries } => {
                let applied = lock(core).import(&entries, stats);
                bulk += stats.received_batch(entries.len(), applied, sent_ms);
            }
            Frame::Nat { sent_ms, entries } => {
                let applied = lock(core).import_nat(&entries, stats);
                bulk += stats.received_batch(entries.len(), applied, sent_ms);
            }
            Frame::BulkDone { count } => {
                // A starting node is ready once the bulk's NAT connections waiting for a next
                // hop are written too (or given up): the watch task retries them.
                if !stats.is_ready() {
                    let start = Instant::now();
                    while start.elapsed() < PENDING_FOR && !lock(core).pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                stats.bulk_syncs.fetch_add(1, Ordering::Relaxed);
                log::info!(event = "sync_bulk_done", peer:% = peer, flows = count; "sync: bulk sync from {peer} done: {count} flow(s) sent, {bulk} written");
                if !stats.is_ready() {
                    stats.set_gate(
                        format!("flows synced: bulk sync from {peer} done ({bulk} flow(s))"),
                        true,
                    );
                }
            }
            Frame::Ping => {}
        }
    }
}

/// Ends the wait for a bulk sync when no peer answers within `wait` (the first node of a
/// cluster has nobody to sync from), or at three times that whatever happens; and reads the
/// program's ring counters.
async fn watch(wait: Duration, core: Arc<Mutex<Core>>, stats: Arc<SyncStats>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let (events, full) = {
            let mut core = lock(&core);
            let applied = core.retry_pending(&stats);
            if applied > 0 {
                stats.applied.fetch_add(applied, Ordering::Relaxed);
            }
            core.maps.ring_counts()
        };
        stats.ring_events.store(events, Ordering::Relaxed);
        stats.ring_full.store(full, Ordering::Relaxed);
        if stats.is_ready() {
            continue;
        }
        let waited = start.elapsed();
        let connected = stats.peers_connected.load(Ordering::Relaxed);
        let why = if waited >= wait && connected == 0 {
            format!(
                "no bulk sync: no peer answered within {} ms (ready without one)",
                wait.as_millis()
            )
        } else if waited >= 3 * wait {
            format!(
                "no bulk sync: the peer did not finish within {} ms (ready without one)",
                (3 * wait).as_millis()
            )
        } else {
            continue;
        };
        log::warn!(event = "sync_ready_without_bulk"; "sync: {why}");
        stats.set_gate(why, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strangers holding silent connections open fill their own pool only: a configured
    /// peer still gets in, and a freed stranger slot is taken again.
    #[test]
    fn strangers_cannot_take_the_peers_slots() {
        let peer: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let a = Admission::new(vec![peer]);
        let stranger = |i: u8| std::net::IpAddr::from([192, 0, 2, i]);
        let held: Vec<_> = (0..MAX_STRANGERS as u8)
            .map(|i| a.admit(stranger(i)).expect("a stranger's slot"))
            .collect();
        let refused = a.admit(stranger(99)).unwrap_err();
        assert!(refused.contains("already serving 4"), "{refused}");
        // The peer, also as an IPv4-mapped IPv6 address (a dual-stack listener's view).
        let peers: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|i| {
                let ip = if i % 2 == 0 {
                    peer
                } else {
                    "::ffff:10.0.0.2".parse().unwrap()
                };
                a.admit(ip).expect("a peer's slot")
            })
            .collect();
        assert!(a.admit(peer).is_err(), "the peers' pool has a bound too");
        drop(held);
        assert!(a.admit(stranger(99)).is_ok(), "a freed slot is taken again");
        drop(peers);
    }

    #[test]
    fn live_nat_connections_are_re_announced_within_a_third_of_the_shortest_timeout() {
        let t = NatTimeouts::default();
        // udp = 30 s is the shortest live state's timeout by default.
        assert_eq!(refresh_every(&t), Duration::from_secs(10));
        let short = NatTimeouts {
            tcp_syn: 3,
            tcp_established: 6,
            ..t
        };
        assert_eq!(refresh_every(&short), Duration::from_secs(1));
        // tcp_closed does not count; the period stays within its bounds.
        let closed = NatTimeouts { tcp_closed: 1, ..t };
        assert_eq!(refresh_every(&closed), Duration::from_secs(10));
        let long = NatTimeouts {
            tcp_syn: 3600,
            tcp_established: 3600,
            tcp_closing: 3600,
            udp: 3600,
            udp_stream: 3600,
            ..t
        };
        assert_eq!(refresh_every(&long), REFRESH_MAX);
        let tiny = NatTimeouts { udp: 1, ..t };
        assert_eq!(refresh_every(&tiny), REFRESH_MIN);
    }
}
