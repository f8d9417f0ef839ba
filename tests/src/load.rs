//! Load that a failover must not disturb, from a client namespace: keep-alive connections, a
//! new connection per request and one slow download, with what each saw (`tests/tests/ha.rs`,
//! `tests/tests/ecmp.rs`).

use std::{
    fs,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    daemon::Daemon,
    netns::{spawn_in_netns, Netns, Topology, VIP4, VIP6},
    traffic::http::{self, Download, KeepAlive},
};

/// Served by every web server of [`start_webs_with_long_file`].
pub const LONG_PATH: &str = "/long";

/// Starts nginx on every web server, each serving the same 4 MiB pseudo-random file at
/// [`LONG_PATH`] (a wrong byte anywhere shows); returns the file.
pub fn start_webs_with_long_file(topo: &Topology) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let long: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    for i in 1..=topo.webs.len() {
        topo.start_web(i).unwrap();
        fs::write(topo.dir.join(format!("web{i}/long")), &long).unwrap();
    }
    long
}

/// Both VIPs, port 80: stream `i` uses IPv4 for even `i`, IPv6 for odd.
pub fn both_vips() -> Vec<SocketAddr> {
    vec![
        format!("{VIP4}:80").parse().unwrap(),
        format!("[{VIP6}]:80").parse().unwrap(),
    ]
}

/// Waits (bounded) until `cond` holds; panics with `what` after `secs`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s: {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Waits until every backend of the daemon is up.
pub fn wait_backends_up(d: &Daemon) {
    wait_for("all backends up", 30, || {
        d.stats()
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .all(|b| b.health == "up")
    });
}

/// The load the takeover must not disturb: keep-alive connections, new connections, and one
/// slow download, all from the client namespace, until `stop`.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub keepalive_answers: Arc<AtomicUsize>,
    pub new_answers: Arc<AtomicUsize>,
    pub download_bytes: Arc<AtomicUsize>,
    pub keepalive: Vec<thread::JoinHandle<KeepAlive>>,
    pub new_conns: thread::JoinHandle<Vec<(Duration, Result<String, String>)>>,
    pub download: Option<thread::JoinHandle<Result<Download, String>>>,
}

pub struct LoadResult {
    pub keepalive: Vec<KeepAlive>,
    pub new_conns: Vec<(Duration, Result<String, String>)>,
    pub download: Option<Result<Download, String>>,
}

impl LoadResult {
    /// The download, which must have run from before `from` to after `until` and delivered
    /// exactly `file`.
    pub fn intact_download_across(&self, from: Instant, until: Instant, file: &[u8]) -> &Download {
        let d = self
            .download
            .as_ref()
            .expect("no download was started")
            .as_ref()
            .expect("the download failed");
        assert!(
            d.started < from && d.ended > until,
            "the download did not span the event"
        );
        assert_eq!(d.body.len(), file.len(), "the download's length");
        assert!(d.body == file, "the download's bytes differ from the file");
        d
    }

    /// Nothing failed: every keep-alive connection answered throughout, always from the same
    /// backend, and every new connection was answered.
    pub fn assert_nothing_lost(&self) {
        for (i, k) in self.keepalive.iter().enumerate() {
            assert!(
                k.error.is_none(),
                "keep-alive connection {i}: {:?}",
                k.error
            );
            assert!(
                k.answers.iter().all(|a| *a == k.answers[0]),
                "keep-alive connection {i} changed backends: {:?}",
                k.answers
            );
        }
        let failed: Vec<_> = self
            .new_conns
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} new connections failed: {failed:?}",
            failed.len(),
            self.new_conns.len()
        );
    }
}

impl Load {
    /// Load on both VIPs (see [`both_vips`]).
    pub fn start(client: &Netns, keepalive_conns: usize, download: bool) -> Load {
        Load::start_on(client, both_vips(), keepalive_conns, download)
    }

    /// Load on `vips` (stream `i` on `vips[i % len]`; the download on the first).
    pub fn start_on(
        client: &Netns,
        vips: Vec<SocketAddr>,
        keepalive_conns: usize,
        download: bool,
    ) -> Load {
        let vip = |i: usize| vips[i % vips.len()];
        let stop = Arc::new(AtomicBool::new(false));
        let keepalive_answers = Arc::new(AtomicUsize::new(0));
        let new_answers = Arc::new(AtomicUsize::new(0));
        let download_bytes = Arc::new(AtomicUsize::new(0));
        let keepalive = (0..keepalive_conns)
            .map(|i| {
                let (stop, n) = (stop.clone(), keepalive_answers.clone());
                let addr = vip(i);
                spawn_in_netns(&client.name, move || {
                    http::keepalive(addr, Duration::from_millis(50), 5000, &stop, &n)
                })
            })
            .collect();
        let new_conns = {
            let (stop, n) = (stop.clone(), new_answers.clone());
            let vips = vips.clone();
            spawn_in_netns(&client.name, move || {
                let mut out = Vec::new();
                // Bounded in count as well as by `stop`.
                while !stop.load(Ordering::Relaxed) && out.len() < 5000 {
                    let t = Instant::now();
                    let r = http::get(vips[out.len() % vips.len()], "/");
                    if r.is_ok() {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    out.push((t.elapsed(), r));
                    thread::sleep(Duration::from_millis(20));
                }
                out
            })
        };
        let download = download.then(|| {
            let progress = download_bytes.clone();
            let addr = vip(0);
            spawn_in_netns(&client.name, move || {
                http::slow_download(addr, LONG_PATH, 256 << 10, progress)
            })
        });
        Load {
            stop,
            keepalive_answers,
            new_answers,
            download_bytes,
            keepalive,
            new_conns,
            download,
        }
    }

    /// Waits until every kind of load made `n` more answers (keep-alive: per connection).
    pub fn wait_progress(&self, what: &str, n: usize) {
        let (k0, n0) = (
            self.keepalive_answers.load(Ordering::Relaxed),
            self.new_answers.load(Ordering::Relaxed),
        );
        let per = self.keepalive.len().max(1);
        wait_for(what, 60, || {
            self.keepalive_answers.load(Ordering::Relaxed) >= k0 + n * per
                && self.new_answers.load(Ordering::Relaxed) >= n0 + n
        });
    }

    pub fn finish(self) -> LoadResult {
        // The download ends by itself; the rest when told.
        let download = self.download.map(|d| d.join().unwrap());
        self.stop.store(true, Ordering::Relaxed);
        LoadResult {
            keepalive: self
                .keepalive
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect(),
            new_conns: self.new_conns.join().unwrap(),
            download,
        }
    }
}
