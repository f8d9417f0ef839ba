//! Client traffic for end-to-end tests: single requests and long keep-alive connections.

use std::process::{Child, Stdio};

use crate::netns::{Netns, VIP4};

/// One GET on a new connection (1 s limit); the body or the failure.
pub fn try_get(client: &Netns, url: &str) -> Result<String, String> {
    try_get_within(client, url, 1)
}

/// One GET on a new connection within `secs` seconds (3 leaves room for one SYN retransmit on
/// a loaded machine); the body or the failure.
pub fn try_get_within(client: &Netns, url: &str, secs: u32) -> Result<String, String> {
    let out = client
        .cmd("curl")
        .args(["-sS", "-g", "--max-time", &secs.to_string(), url])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A keep-alive client: `n` requests on one connection at 10/s, printing bodies and the number
/// of new connections per request.
pub fn keepalive_client(client: &Netns, n: usize) -> Child {
    let mut cmd = client.cmd("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--rate",
        "10/s",
        "-w",
        " %{num_connects}\n",
    ]);
    for _ in 0..n {
        cmd.arg(format!("http://{VIP4}/"));
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (answers, total new connections) of a finished keep-alive client.
pub fn keepalive_result(child: Child) -> (Vec<String>, u32) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "keep-alive client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Each transfer prints its body ("webN\n") then " <num_connects>\n".
    let tokens: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(tokens.len() % 2, 0, "{text}");
    let bodies = tokens.chunks(2).map(|p| p[0].to_owned()).collect();
    let connects = tokens.chunks(2).map(|p| p[1].parse::<u32>().unwrap()).sum();
    (bodies, connects)
}

/// A plain HTTP/1.1 client over std sockets, for load that must report exactly how each
/// request and connection ended (a reset is an `io::ErrorKind::ConnectionReset`). Run it on a
/// thread inside the client's namespace ([`crate::netns::spawn_in_netns`]).
pub mod http {
    use std::{
        io::{self, BufRead, BufReader, Read, Write},
        net::{SocketAddr, TcpStream},
        sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            Arc,
        },
        time::{Duration, Instant},
    };

    /// How long one read or write may wait: generous, so a takeover (about a second of lost
    /// packets and TCP's retransmission back-off) or a loaded machine is not taken for a
    /// failure; a reset still fails at once.
    pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

    fn open(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn describe(e: &io::Error) -> String {
        format!("{:?}: {e}", e.kind())
    }

    /// Reads one response's head; returns (status, content length).
    fn read_head(r: &mut impl BufRead) -> io::Result<(u16, usize)> {
        let mut line = String::new();
        let mut status = None;
        let mut length = None;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status.is_none() {
                status = l.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok();
                }
            }
        }
        match (status, length) {
            (Some(s), Some(n)) => Ok((s, n)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response without status or Content-Length",
            )),
        }
    }

    fn request(path: &str, close: bool) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: {}\r\n\r\n",
            if close { "close" } else { "keep-alive" }
        )
        .into_bytes()
    }

    /// One GET on a new connection (closed after the answer); the body or how it failed.
    pub fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
        let s = open(addr).map_err(|e| format!("connect: {}", describe(&e)))?;
        (&s).write_all(&request(path, true))
            .map_err(|e| format!("write: {}", describe(&e)))?;
        let mut r = BufReader::new(&s);
        let (status, n) = read_head(&mut r).map_err(|e| format!("read: {}", describe(&e)))?;
        let mut body = vec![0; n];
        r.read_exact(&mut body)
            .map_err(|e| format!("read body: {}", describe(&e)))?;
        if status != 200 {
            return Err(format!("status {status}"));
        }
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }

    /// What one keep-alive connection saw: the answers in order (`webN`), and the error that
    /// ended it early, if any.
    #[derive(Debug, Default)]
    pub struct KeepAlive {
        pub answers: Vec<String>,
        pub error: Option<String>,
    }

    /// GETs `/` on one connection every `every` until `stop` (at most `max` requests);
    /// `progress` counts answers as they come.
    pub fn keepalive(
        addr: SocketAddr,
        every: Duration,
        max: usize,
        stop: &AtomicBool,
        progress: &AtomicUsize,
    ) -> KeepAlive {
        let mut out = KeepAlive::default();
        let s = match open(addr) {
            Ok(s) => s,
            Err(e) => {
                out.error = Some(format!("connect: {}", describe(&e)));
                return out;
            }
        };
        let mut r = BufReader::new(&s);
        while out.answers.len() < max && !stop.load(Ordering::Relaxed) {
            let res = (&s).write_all(&request("/", false)).and_then(|()| {
                let (status, n) = read_head(&mut r)?;
                let mut body = vec![0; n];
                r.read_exact(&mut body)?;
                Ok((status, body))
            });
            match res {
                Ok((200, body)) => {
                    out.answers
                        .push(String::from_utf8_lossy(&body).trim().to_owned());
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, _)) => {
                    out.error = Some(format!("status {status}"));
                    break;
                }
                Err(e) => {
                    out.error = Some(format!(
                        "request {} on the connection: {}",
                        out.answers.len() + 1,
                        describe(&e)
                    ));
                    break;
                }
            }
            std::thread::sleep(every);
        }
        out
    }

    /// A finished download: the body, and when it started and ended.
    pub struct Download {
        pub body: Vec<u8>,
        pub started: Instant,
        pub ended: Instant,
    }

    /// A slow download: GETs `path` on a new connection and reads the body at about
    /// `bytes_per_sec` (the server's sending follows through TCP's window), counting
    /// received bytes in `progress`.
    pub fn slow_download(
        addr: SocketAddr,
        path: &str,
        bytes_per_sec: usize,
        progress: Arc<AtomicUsize>,
    ) -> Result<Download, String> {
        let started = Instant::now();
        let s = open(addr).map_err(|e| format!("connect: {}", describe(&e)))?;
        (&s).write_all(&request(path, true))
            .map_err(|e| format!("write: {}", describe(&e)))?;
        let mut r = BufReader::new(&s);
        let (status, n) = read_head(&mut r).map_err(|e| format!("read: {}", describe(&e)))?;
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let mut body = Vec::with_capacity(n);
        let mut chunk = [0u8; 8192];
        while body.len() < n {
            let want = chunk.len().min(n - body.len());
            let got = r
                .read(&mut chunk[..want])
                .map_err(|e| format!("read at byte {} of {n}: {}", body.len(), describe(&e)))?;
            if got == 0 {
                return Err(format!("connection closed at byte {} of {n}", body.len()));
            }
            body.extend_from_slice(&chunk[..got]);
            progress.store(body.len(), Ordering::Relaxed);
            // Pace: never ahead of the rate since the start.
            let due = Duration::from_secs_f64(body.len() as f64 / bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(Download {
            body,
            started,
            ended: Instant::now(),
        })
    }
}

/// One GET on a new connection (3 s limit); panics on failure.
pub fn get(client: &Netns, url: &str) -> String {
    try_get_within(client, url, 3).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Bodies of `n` GETs of `url`, each on a new connection, counted.
pub fn tally(client: &Netns, url: &str, n: usize) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for _ in 0..n {
        *seen.entry(get(client, url)).or_default() += 1;
    }
    seen
}

/// `n` answers split evenly (within one) between web1 and web2, and nothing else.
pub fn assert_even(seen: &std::collections::HashMap<String, usize>, n: usize) {
    for web in ["web1", "web2"] {
        let got = seen.get(web).copied().unwrap_or(0);
        assert!(
            got.abs_diff(n / 2) <= 1,
            "{web} answered {got} of {n}: {seen:?}"
        );
    }
    assert_eq!(seen.values().sum::<usize>(), n, "{seen:?}");
}

/// Waits until `url` answers `client` (a daemon just started: its first health checks
/// passed); panics after `secs` seconds.
pub fn wait_answers(client: &Netns, url: &str, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while try_get(client, url).is_err() {
        assert!(std::time::Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Through both VIPs, from `client`: `n` IPv4 requests and 10 IPv6 ones (each on a new
/// connection) spread evenly over web1 and web2, and a 16 MiB download per family intact
/// (SHA-256).
pub fn assert_balanced_and_intact(topo: &crate::netns::Topology, client: &Netns, n: usize) {
    use crate::netns::VIP6;
    assert_even(&tally(client, &format!("http://{VIP4}/"), n), n);
    assert_even(&tally(client, &format!("http://[{VIP6}]/"), 10), 10);
    let want = topo.big_file("big16", 16).unwrap();
    for url in [
        format!("http://{VIP4}/big16"),
        format!("http://[{VIP6}]/big16"),
    ] {
        let out = topo.dir.join("download");
        assert_eq!(
            download_sha256(client, &url, &out),
            want,
            "{url}: content differs"
        );
    }
}

/// No packet was dropped or aborted for a reason the program counts.
pub fn assert_no_drops(d: &crate::daemon::Daemon) {
    let st = d.stats();
    let drops: Vec<(String, u64)> = st
        .verdicts
        .iter()
        .filter(|(name, n)| *n > 0 && (name.starts_with("drop_") || name == "aborted"))
        .cloned()
        .collect();
    assert!(drops.is_empty(), "drops: {drops:?}");
}

/// Downloads `url` in `client` into `out` (60 s limit) and returns the file's SHA-256.
pub fn download_sha256(client: &Netns, url: &str, out: &std::path::Path) -> String {
    crate::netns::run(client.cmd("curl").args([
        "-sS",
        "-g",
        "--max-time",
        "60",
        "-o",
        out.to_str().unwrap(),
        url,
    ]))
    .unwrap_or_else(|e| panic!("download {url}: {e}"));
    crate::netns::sha256(out).unwrap()
}
