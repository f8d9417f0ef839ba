//! Health checking: the rise/fall state machine and the check schedule (pure), the TCP / HTTP /
//! TLS / MySQL probes and external commands, and the loop that runs one backend's checks.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr, SocketAddrV6},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

use crate::config::{is_link_local_v6, BackendConfig, CheckKind, HealthConfig, ServiceConfig};

/// HAProxy semantics: an up backend goes down after `fall` consecutive failures, a down one
/// comes up after `rise` consecutive successes. The first result decides at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    /// `None` until the first check.
    pub up: Option<bool>,
    /// Consecutive results contradicting `up`.
    streak: u32,
}

impl HealthState {
    /// Records one check result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        match self.up {
            None => {
                self.up = Some(ok);
                self.streak = 0;
                Some(ok)
            }
            Some(up) if up == ok => {
                self.streak = 0;
                None
            }
            Some(up) => {
                self.streak += 1;
                let needed = if up { fall } else { rise };
                if self.streak >= needed {
                    self.up = Some(ok);
                    self.streak = 0;
                    Some(ok)
                } else {
                    None
                }
            }
        }
    }

    /// HAProxy's `on-error mark-down`: live traffic saw the backend fail (`observe`), which
    /// counts as `fall` failed checks at once. Returns whether that changed the state.
    pub fn mark_down(&mut self) -> bool {
        let changed = self.up != Some(false);
        self.up = Some(false);
        self.streak = 0;
        changed
    }

    /// A state taken over from elsewhere (a pinned data plane): `up` until `fall` failures say
    /// otherwise, exactly as if it had been observed.
    pub fn assumed(up: bool) -> HealthState {
        HealthState {
            up: Some(up),
            streak: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }

    /// Between a first contrary result and the rise/fall threshold.
    pub fn in_transition(&self) -> bool {
        self.streak > 0
    }
}

/// When checks run: HAProxy's `inter`, `fastinter` and `downinter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub fastinter: Duration,
    pub downinter: Duration,
}

impl Schedule {
    pub fn new(h: &HealthConfig) -> Schedule {
        Schedule {
            interval: Duration::from_millis(h.interval_ms),
            fastinter: Duration::from_millis(h.fastinter_ms()),
            downinter: Duration::from_millis(h.downinter_ms()),
        }
    }

    /// The interval after a check that left the backend in `state`: `fastinter` in transition,
    /// `downinter` while down, `interval` otherwise (up, or not known yet).
    pub fn interval(&self, state: &HealthState) -> Duration {
        if state.in_transition() {
            self.fastinter
        } else if state.up == Some(false) {
            self.downinter
        } else {
            self.interval
        }
    }
}

/// The start of the next check: `step` after the start of the previous one (not after its
/// end, so the schedule does not drift by the checks' durations), or now if that time passed
/// already (a check that waited for a permit; missed starts are skipped, never bunched).
pub fn next_start(previous: Instant, step: Duration, now: Instant) -> Instant {
    (previous + step).max(now)
}

/// Whether a result counts: `Some(ok)`, or `None` for a local error, which says nothing about
/// the backend.
pub fn counts<T>(result: &Result<T, CheckError>) -> Option<bool> {
    match result {
        Ok(_) => Some(true),
        Err(e) if e.is_local() => None,
        Err(_) => Some(false),
    }
}

/// Runs one backend's checks until `check` or `report` says stop (`None`, `false`): checks
/// start every interval of `schedule` (jittered), the interval chosen from the backend's state
/// after each result, kept here by the same rise/fall rules (from `state`, what the daemon
/// holds when the loop starts) as the daemon applies to the reported results.
#[allow(clippy::too_many_arguments)]
pub async fn check_loop<C, CF, R, RF>(
    schedule: Schedule,
    rise: u32,
    fall: u32,
    mut state: HealthState,
    seed: u64,
    mut check: C,
    mut report: R,
) where
    C: FnMut() -> CF,
    CF: Future<Output = Option<Result<Duration, CheckError>>>,
    R: FnMut(Result<Duration, CheckError>) -> RF,
    RF: Future<Output = bool>,
{
    let mut start = Instant::now();
    for n in 0u64.. {
        let Some(result) = check().await else {
            return;
        };
        if let Some(ok) = counts(&result) {
            state.observe(ok, rise, fall);
        }
        if !report(result).await {
            return;
        }
        let step = jittered(schedule.interval(&state), seed ^ n);
        start = next_start(start, step, Instant::now());
        tokio::time::sleep_until(start).await;
    }
}

/// What one probe checks.
#[derive(Debug, Clone)]
pub struct Probe {
    pub kind: CheckKind,
    pub target: SocketAddr,
    /// Interface whose index scopes a link-local IPv6 target (looked up at each check, so a
    /// recreated interface is found again).
    pub interface: Option<String>,
    /// Address the socket is bound to before it connects.
    pub source: Option<IpAddr>,
    /// Host header for HTTP checks.
    pub host: String,
    /// TLS server name; `None` sends none.
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    pub path: String,
    pub status: (u16, u16),
    pub timeout: Duration,
    /// `mysql` checks: the user that logs in (empty password); `None` reads the greeting only.
    pub mysql_user: Option<String>,
    /// `external` checks: program and arguments.
    pub command: Vec<String>,
    /// `external` checks: the `FOOBAR_LB_*` variables the command gets.
    pub env: Vec<(&'static str, String)>,
}

impl Probe {
    /// The check of backend `b` of `svc` (a validated configuration).
    pub fn new(svc: &ServiceConfig, b: &BackendConfig) -> Probe {
        let h = &svc.health;
        let port = h.port.or(b.port).unwrap_or(svc.port);
        Probe {
            kind: h.check,
            target: SocketAddr::new(b.address, port),
            interface: h.interface.clone(),
            source: h.source,
            host: h
                .host
                .clone()
                .unwrap_or_else(|| default_host(b.address, port, h.check)),
            sni: h.server_name(),
            path: h.path.clone(),
            status: h.status_range().expect("validated"),
            timeout: Duration::from_millis(h.timeout_ms),
            mysql_user: h.mysql_user.clone(),
            command: h.command.clone(),
            env: if h.check == CheckKind::External {
                external::env(svc, b, port)
            } else {
                Vec::new()
            },
        }
    }

    /// The address to connect to: a link-local IPv6 target gets its interface as scope.
    fn scoped_target(&self) -> Result<SocketAddr, CheckError> {
        let (SocketAddr::V6(t), Some(ifname)) = (self.target, &self.interface) else {
            return Ok(self.target);
        };
        if !is_link_local_v6(IpAddr::V6(*t.ip())) {
            return Ok(self.target);
        }
        let index = crate::netdev::ifindex(ifname).map_err(|e| CheckError::Local {
            during: "interface",
            error: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
        })?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            *t.ip(),
            t.port(),
            0,
            index,
        )))
    }
}

/// The Host header for a check of `addr:port`: IPv6 in brackets, the port only when it is not
/// the scheme's default (443 for `https`, 80 otherwise).
pub fn default_host(addr: IpAddr, port: u16, kind: CheckKind) -> String {
    let default_port = if kind == CheckKind::Https { 443 } else { 80 };
    let addr = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if port == default_port {
        addr
    } else {
        format!("{addr}:{port}")
    }
}

/// Why a check failed. Its text is one short line, logged and shown as the backend's last
/// check in `status`, so the I/O cause is part of the message (and not a `source` as well:
/// a `{:#}` display prints it once).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connection refused")]
    Refused,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timeout after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("send: {0}")]
    Send(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("bad HTTP response")]
    BadResponse,
    /// An HTTP status outside the accepted range.
    #[error("status {0}")]
    Status(u16),
    /// A MySQL error packet: the server's error code and message (e.g. 1129: host blocked,
    /// 1040: too many connections, 1045: access denied).
    #[error("MySQL error {code}: {message}")]
    Mysql { code: u16, message: String },
    /// Bytes that are not the MySQL protocol, or an answer the check cannot go on from.
    #[error("MySQL: {0}")]
    MysqlProtocol(String),
    /// An external check's command could not be started.
    #[error("cannot run {program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    /// An external check's command ended with a failure: how, and the first line of what it
    /// wrote (stderr, else stdout).
    #[error("command {status}{}", if output.is_empty() { String::new() } else { format!(": {output}") })]
    Command { status: String, output: String },
    /// An external check's command outlived `timeout_ms`: its process group was killed.
    #[error("command timed out after {} ms (process group killed)", .0.as_millis())]
    CommandTimeout(Duration),
    /// This host could not run the check (out of file descriptors, buffers or ports; the
    /// source address is not ours; the interface is gone): the result says nothing about the
    /// backend and does not count.
    #[error("local error, not counted ({during}: {error})")]
    Local {
        during: &'static str,
        error: std::io::Error,
    },
}

impl CheckError {
    pub fn is_local(&self) -> bool {
        matches!(self, CheckError::Local { .. })
    }
}

/// Whether an I/O error is this host's own trouble rather than the backend's: out of file
/// descriptors (EMFILE, ENFILE), buffers or memory (ENOBUFS, ENOMEM), or local addresses and
/// ports (EADDRNOTAVAIL: source address not ours or no free port; EADDRINUSE).
pub fn is_local_io(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::EADDRINUSE
        )
    )
}

/// `wrap(e)`, unless `e` is a local error.
fn classify(
    during: &'static str,
    e: std::io::Error,
    wrap: impl FnOnce(std::io::Error) -> CheckError,
) -> CheckError {
    if is_local_io(&e) {
        CheckError::Local { during, error: e }
    } else {
        wrap(e)
    }
}

/// Runs one check: `Ok(latency)` or why it failed.
pub async fn check(p: &Probe) -> Result<Duration, CheckError> {
    let start = Instant::now();
    if p.kind == CheckKind::External {
        // Bounded by its own timeout, which also kills what the command started.
        return external::run(&p.command, &p.env, p.timeout)
            .await
            .map(|()| start.elapsed());
    }
    match tokio::time::timeout(p.timeout, run(p)).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(CheckError::Timeout(p.timeout)),
    }
}

/// A connected socket: created, bound to the source address if one is set, connected. Every
/// step before the connect is this host's business only, so its failures are local.
async fn connect(p: &Probe) -> Result<TcpStream, CheckError> {
    let target = p.scoped_target()?;
    let local = |during| move |error| CheckError::Local { during, error };
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(local("socket"))?;
    if let Some(source) = p.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(local("bind source"))?;
    }
    socket.connect(target).await.map_err(|e| {
        classify("connect", e, |e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => CheckError::Refused,
            _ => CheckError::Connect(e),
        })
    })
}

async fn run(p: &Probe) -> Result<(), CheckError> {
    let stream = connect(p).await?;
    match p.kind {
        CheckKind::Tls | CheckKind::Https => {
            let name = p
                .sni
                .clone()
                .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(p.target.ip().into()));
            let mut tls = tls::connector()
                .connect(name, stream)
                .await
                .map_err(|e| classify("TLS handshake", e, CheckError::Tls))?;
            if p.kind == CheckKind::Https {
                http_get(&mut tls, p).await?;
            }
            Ok(())
        }
        CheckKind::Http => http_get(&mut { stream }, p).await,
        CheckKind::Mysql => mysql::check(&mut { stream }, p.mysql_user.as_deref()).await,
        CheckKind::Tcp | CheckKind::None => Ok(()),
        CheckKind::External => unreachable!("external checks connect nowhere: see `check`"),
    }
}

/// GET `p.path` on `stream`; Ok when the status is in range.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    p: &Probe,
) -> Result<(), CheckError> {
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: foobar-lb-health\r\nConnection: close\r\n\r\n",
        p.path, p.host
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| classify("send", e, CheckError::Send))?;
    stream
        .flush()
        .await
        .map_err(|e| classify("send", e, CheckError::Send))?;
    // The status line fits in the first bytes; read at most 1 KiB.
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| classify("read", e, CheckError::Read))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let code = parse_status(&buf[..len]).ok_or(CheckError::BadResponse)?;
    if (p.status.0..=p.status.1).contains(&code) {
        Ok(())
    } else {
        Err(CheckError::Status(code))
    }
}

/// TLS handshake checks: accept any certificate, but still verify the handshake signatures
/// (so a backend must hold the private key of the certificate it presents).
mod tls {
    use std::sync::{Arc, OnceLock};

    use rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    };
    use tokio_rustls::TlsConnector;

    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connector() -> TlsConnector {
        static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
        CONNECTOR
            .get_or_init(|| {
                let provider = Arc::new(ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                    .with_no_client_auth();
                TlsConnector::from(Arc::new(config))
            })
            .clone()
    }
}

/// Text from the network or a command made fit for one log line: valid UTF-8 (lossy),
/// control characters as spaces, at most `max` characters.
fn one_line(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push_str("...");
    }
    out.trim().to_owned()
}

pub mod mysql;

pub mod external;

/// `HTTP/1.1 503 Service Unavailable` -> 503.
pub fn parse_status(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// A delay spread over ±10% of `interval`, so checks of many backends do not fire in lockstep.
pub fn jittered(interval: Duration, seed: u64) -> Duration {
    // splitmix64: cheap, good enough to spread timers.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let ms = interval.as_millis() as u64;
    let spread = ms / 5; // 20% window centred on the interval
    Duration::from_millis(ms - spread / 2 + if spread > 0 { z % spread } else { 0 })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An HTTP probe of `target` with everything else at its simplest.
    fn probe_of(target: SocketAddr) -> Probe {
        Probe {
            kind: CheckKind::Http,
            target,
            interface: None,
            source: None,
            host: "www".into(),
            sni: None,
            path: "/".into(),
            status: (200, 399),
            timeout: Duration::from_secs(2),
            mysql_user: None,
            command: Vec::new(),
            env: Vec::new(),
        }
    }

    const SEED: u64 = 42;

    /// Runs `check_loop` in paused (virtual) time over `script` (each entry: how long the
    /// check takes, and its result: `Some(ok)`, or `None` for a local error); returns the gaps
    /// between the starts of consecutive checks (one per entry: the start after the last
    /// entry finds the script empty and stops the loop).
    async fn gaps(
        schedule: Schedule,
        rise: u32,
        fall: u32,
        script: Vec<(u64, Option<bool>)>,
    ) -> Vec<Duration> {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let reported = Arc::new(Mutex::new(0));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let (s, r) = (starts.clone(), reported.clone());
        check_loop(
            schedule,
            rise,
            fall,
            HealthState::default(),
            SEED,
            move || {
                let (starts, script) = (s.clone(), script.clone());
                async move {
                    starts.lock().unwrap().push(Instant::now());
                    let (ms, outcome) = script.lock().unwrap().next()?;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Some(match outcome {
                        Some(true) => Ok(Duration::from_millis(ms)),
                        Some(false) => Err(CheckError::Refused),
                        None => Err(CheckError::Local {
                            during: "socket",
                            error: std::io::Error::from_raw_os_error(libc::EMFILE),
                        }),
                    })
                }
            },
            move |_| {
                *r.lock().unwrap() += 1;
                async { true }
            },
        )
        .await;
        let starts = starts.lock().unwrap();
        // The last start found the script empty.
        assert_eq!(*reported.lock().unwrap(), starts.len() - 1);
        starts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// What the gaps must be: `intervals[n]` jittered as the loop jitters its n-th step.
    fn expected(intervals: &[u64]) -> Vec<Duration> {
        intervals
            .iter()
            .enumerate()
            .map(|(n, &i)| jittered(ms(i), SEED ^ n as u64))
            .collect()
    }

    const PLAIN: Schedule = Schedule {
        interval: Duration::from_millis(1000),
        fastinter: Duration::from_millis(1000),
        downinter: Duration::from_millis(1000),
    };

    #[tokio::test(start_paused = true)]
    async fn checks_start_every_interval_however_long_they_take() {
        // Checks of 300 ms every 1000 ms: starts 1000 ms apart (not 1300).
        let script = vec![(300, Some(true)); 6];
        let got = gaps(PLAIN, 2, 3, script).await;
        assert_eq!(got, expected(&[1000; 6]));
        let total: Duration = got.iter().sum();
        assert!(
            total.abs_diff(ms(6000)) < ms(500),
            "6 intervals took {total:?}: the schedule drifts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_longer_than_the_interval_delays_the_next_without_bunching() {
        // The second check overruns its interval: the third starts when it ends, then the
        // schedule continues from there, one interval apart.
        let script = vec![
            (100, Some(true)),
            (1500, Some(true)),
            (100, Some(true)),
            (100, Some(true)),
        ];
        let got = gaps(PLAIN, 2, 3, script).await;
        assert_eq!(got[0], jittered(ms(1000), SEED));
        assert_eq!(got[1], ms(1500), "started as soon as the long check ended");
        assert_eq!(got[2], jittered(ms(1000), SEED ^ 2));
    }

    #[tokio::test(start_paused = true)]
    async fn fastinter_in_transition_and_downinter_while_down() {
        let schedule = Schedule {
            interval: ms(1000),
            fastinter: ms(200),
            downinter: ms(5000),
        };
        let (up, down) = ((10, Some(true)), (10, Some(false)));
        // rise 2, fall 3: up; 1st, 2nd failure (transition); 3rd: down; down; 1st success
        // (transition); 2nd: up; up.
        let script = vec![up, down, down, down, down, up, up, up];
        let got = gaps(schedule, 2, 3, script).await;
        assert_eq!(
            got,
            expected(&[1000, 200, 200, 5000, 5000, 200, 1000, 1000]),
            "interval after: up, 1st and 2nd failure, down, down, 1st success, up, up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn local_errors_change_neither_state_nor_interval() {
        let schedule = Schedule {
            interval: ms(1000),
            fastinter: ms(200),
            downinter: ms(5000),
        };
        let local = (10, None);
        // Up, then local errors (more than fall): still up, so still `interval`; then a real
        // failure starts the transition.
        let script = vec![
            (10, Some(true)),
            local,
            local,
            local,
            local,
            (10, Some(false)),
            (10, Some(true)),
        ];
        let got = gaps(schedule, 2, 3, script).await;
        assert_eq!(got, expected(&[1000, 1000, 1000, 1000, 1000, 200, 1000]));
    }

    #[test]
    fn next_start_follows_the_previous_start_not_the_end() {
        let t0 = Instant::now();
        assert_eq!(next_start(t0, ms(1000), t0 + ms(300)), t0 + ms(1000));
        assert_eq!(next_start(t0, ms(1000), t0 + ms(1700)), t0 + ms(1700));
    }

    #[test]
    fn default_host_headers() {
        let v4: IpAddr = "10.0.0.11".parse().unwrap();
        let v6: IpAddr = "fd00::11".parse().unwrap();
        assert_eq!(default_host(v4, 80, CheckKind::Http), "10.0.0.11");
        assert_eq!(default_host(v4, 8080, CheckKind::Http), "10.0.0.11:8080");
        assert_eq!(default_host(v4, 443, CheckKind::Http), "10.0.0.11:443");
        assert_eq!(default_host(v4, 443, CheckKind::Https), "10.0.0.11");
        assert_eq!(default_host(v4, 80, CheckKind::Https), "10.0.0.11:80");
        assert_eq!(default_host(v6, 80, CheckKind::Http), "[fd00::11]");
        assert_eq!(default_host(v6, 8080, CheckKind::Http), "[fd00::11]:8080");
        assert_eq!(default_host(v6, 443, CheckKind::Https), "[fd00::11]");
    }

    fn service(health: &str, backend: &str) -> ServiceConfig {
        let text = format!(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"s\"\nvip = \"{}\"\nport = 80\n\
             [service.health]\n{health}\n[[service.backend]]\naddress = \"{backend}\"\n",
            if backend.contains(':') {
                "fd00::100"
            } else {
                "10.0.0.100"
            }
        );
        let mut c = crate::config::Config::parse(&text).unwrap();
        c.services.remove(0)
    }

    fn probe_for(health: &str, backend: &str) -> Probe {
        let s = service(health, backend);
        Probe::new(&s, &s.backends[0])
    }

    #[test]
    fn probes_take_host_sni_source_and_scope_from_the_config() {
        let p = probe_for("check = \"http\"", "fd00::11");
        assert_eq!((p.host.as_str(), p.sni.clone()), ("[fd00::11]", None));
        let p = probe_for("check = \"https\"\nport = 8443", "10.0.0.11");
        assert_eq!(p.host, "10.0.0.11:8443");
        assert_eq!(p.sni, None, "no server name for an IP address");
        let p = probe_for(
            "check = \"https\"\nhost = \"www.example:8443\"",
            "10.0.0.11",
        );
        assert_eq!(p.host, "www.example:8443");
        assert_eq!(p.sni, Some("www.example".try_into().unwrap()), "from host");
        let p = probe_for(
            "check = \"tls\"\nhost = \"www.example\"\nsni = \"api.example\"\nsource = \"10.0.0.2\"",
            "10.0.0.11",
        );
        assert_eq!(p.sni, Some("api.example".try_into().unwrap()));
        assert_eq!(p.source, Some("10.0.0.2".parse().unwrap()));
        let p = probe_for("interface = \"lo\"", "fe80::11");
        assert_eq!(p.interface.as_deref(), Some("lo"));
        match p.scoped_target().unwrap() {
            SocketAddr::V6(t) => assert_eq!(t.scope_id(), crate::netdev::ifindex("lo").unwrap()),
            other => panic!("{other}"),
        }
        // A global address keeps no scope.
        let p = probe_for("interface = \"lo\"", "fd00::11");
        assert_eq!(p.scoped_target().unwrap(), p.target);
    }

    #[test]
    fn local_errors_are_told_apart_from_the_backends() {
        use std::io::Error;
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
            libc::EADDRINUSE,
        ] {
            assert!(is_local_io(&Error::from_raw_os_error(errno)), "{errno}");
            let e = classify(
                "connect",
                Error::from_raw_os_error(errno),
                CheckError::Connect,
            );
            assert!(e.is_local(), "{e}");
            assert_eq!(counts::<()>(&Err(e)), None);
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
            libc::EPIPE,
        ] {
            assert!(!is_local_io(&Error::from_raw_os_error(errno)), "{errno}");
            let e = classify("read", Error::from_raw_os_error(errno), CheckError::Read);
            assert!(!e.is_local(), "{e}");
            assert_eq!(counts::<()>(&Err(e)), Some(false));
        }
        assert!(!is_local_io(&Error::other("no errno")));
        assert_eq!(counts::<()>(&Err(CheckError::Status(503))), Some(false));
        assert_eq!(counts(&Ok(())), Some(true));
        let e = classify(
            "socket",
            Error::from_raw_os_error(libc::EMFILE),
            CheckError::Connect,
        );
        assert!(
            e.to_string()
                .starts_with("local error, not counted (socket: "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_source_address_that_is_not_ours_is_a_local_error() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = probe_of(l.local_addr().unwrap());
        p.kind = CheckKind::Tcp;
        p.source = Some("127.0.0.1".parse().unwrap());
        assert!(check(&p).await.is_ok(), "bound to a local source");
        // TEST-NET-1: not an address of this host.
        p.source = Some("192.0.2.1".parse().unwrap());
        let err = check(&p).await.unwrap_err();
        assert!(err.is_local(), "{err:?}");
        assert!(err.to_string().contains("bind source"), "{err}");
        // A link-local target whose interface does not exist: local too.
        let mut p = probe_of("[fe80::1]:80".parse().unwrap());
        p.interface = Some("nosuch0".into());
        assert!(check(&p).await.unwrap_err().is_local());
    }

    #[tokio::test]
    async fn https_probe_sends_sni_and_host_over_tls() {
        use tokio::net::TcpListener;
        let cert = rcgen::generate_simple_self_signed(vec!["www.example".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Answers 200 only to server name "www.example" with Host "www.example:8443",
        // and tells what it saw.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let start =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), s)
                        .await
                        .unwrap();
                let sni = start.client_hello().server_name().map(str::to_owned);
                let Ok(mut tls) = start.into_stream(config.clone()).await else {
                    continue;
                };
                let mut buf = vec![0u8; 1024];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let host = req
                    .lines()
                    .find_map(|l| l.strip_prefix("Host: "))
                    .map(str::to_owned);
                let ok = sni.as_deref() == Some("www.example")
                    && host.as_deref() == Some("www.example:8443");
                seen2.lock().unwrap().push((sni, host));
                let code = if ok { 200 } else { 421 };
                let _ = tls
                    .write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let mut p = probe_of(addr);
        p.kind = CheckKind::Https;
        p.host = "www.example:8443".into();
        p.sni = Some("www.example".try_into().unwrap());
        check(&p).await.unwrap();
        p.sni = None;
        let err = check(&p).await.unwrap_err();
        assert!(matches!(err, CheckError::Status(421)), "{err:?}");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (Some("www.example".into()), Some("www.example:8443".into())),
                (None, Some("www.example:8443".into()))
            ]
        );
    }

    #[test]
    fn mark_down_takes_an_up_backend_down_at_once_and_rise_brings_it_back() {
        let mut s = HealthState::default();
        assert_eq!(s.observe(true, 2, 3), Some(true));
        // One failed check of three needed is under way: the refusal still decides at once.
        assert_eq!(s.observe(false, 2, 3), None);
        assert!(s.mark_down(), "up -> down");
        assert!(!s.is_up() && !s.in_transition());
        assert!(!s.mark_down(), "already down: no change");
        assert_eq!(s.observe(true, 2, 3), None, "1 of rise 2");
        assert_eq!(s.observe(true, 2, 3), Some(true), "back after rise");
    }

    #[test]
    fn first_result_decides_then_rise_and_fall() {
        let mut h = HealthState::default();
        assert_eq!(h.observe(true, 2, 3), Some(true));
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(
            h.observe(true, 2, 3),
            None,
            "a success resets the fall streak"
        );
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(
            h.observe(false, 2, 3),
            Some(false),
            "third consecutive failure"
        );
        assert!(!h.is_up());
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(
            h.observe(true, 2, 3),
            Some(true),
            "second consecutive success"
        );
        let mut d = HealthState::default();
        assert_eq!(d.observe(false, 2, 3), Some(false));
        assert_eq!(d.observe(true, 1, 1), Some(true), "rise 1 flips at once");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\nX: y"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_millis(1000);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..1000 {
            let d = jittered(i, seed).as_millis();
            assert!((900..1100).contains(&d), "{d}");
            seen.insert(d);
        }
        assert!(seen.len() > 50, "spread out: {}", seen.len());
    }

    #[tokio::test]
    async fn tls_probe_needs_a_tls_server() {
        use std::sync::Arc;
        use tokio::net::TcpListener;
        let cert = rcgen::generate_simple_self_signed(vec!["backend".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tls_addr, plain_addr) = (tls.local_addr().unwrap(), plain.local_addr().unwrap());
        tokio::spawn(async move {
            let (s, _) = tls.accept().await.unwrap();
            let _ = acceptor.accept(s).await;
        });
        tokio::spawn(async move {
            let (mut s, _) = plain.accept().await.unwrap();
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
        });
        let probe = |target| Probe {
            kind: CheckKind::Tls,
            ..probe_of(target)
        };
        assert!(check(&probe(tls_addr)).await.is_ok());
        let err = check(&probe(plain_addr)).await.unwrap_err();
        assert!(matches!(err, CheckError::Tls(_)), "{err:?}");
        assert!(err.to_string().starts_with("TLS handshake: "), "{err}");
    }

    #[tokio::test]
    async fn probes_report_refused_status_and_success() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.0 {code} X\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let mut p = probe_of(addr);
        assert!(check(&p).await.is_ok());
        let err = check(&p).await.unwrap_err();
        assert!(matches!(err, CheckError::Status(503)), "{err:?}");
        assert_eq!(err.to_string(), "status 503");
        // Nothing listens there any more.
        p.kind = CheckKind::Tcp;
        let err = check(&p).await.unwrap_err();
        assert!(matches!(err, CheckError::Refused), "{err:?}");
        assert_eq!(err.to_string(), "connection refused");
    }

    /// A MySQL packet: length, sequence id, payload.
    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    /// A fake MySQL server on loopback. Connection n writes `script[n].0` raw, then for each
    /// of `script[n].1` reads one packet and writes that answer raw, then reads until the
    /// client closes (a script whose greeting ends in [`CLOSE`] closes its side first). Returns its address and, per connection, the packets it received
    /// (payloads, in order).
    async fn fake_mysql(
        script: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    ) -> (SocketAddr, Arc<Mutex<Vec<Vec<Vec<u8>>>>>) {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            for (greeting, answers) in script {
                let (mut s, _) = l.accept().await.unwrap();
                let mut got = Vec::new();
                let close = greeting.ends_with(CLOSE);
                let greeting = greeting.strip_suffix(CLOSE).unwrap_or(&greeting);
                let _ = s.write_all(greeting).await;
                if close {
                    let _ = s.shutdown().await;
                }
                for answer in answers {
                    match mysql::read_packet(&mut s).await {
                        Ok((_, p)) => got.push(p),
                        Err(_) => break,
                    }
                    let _ = s.write_all(&answer).await;
                }
                while let Ok((_, p)) = mysql::read_packet(&mut s).await {
                    got.push(p);
                }
                seen2.lock().unwrap().push(got);
            }
        });
        (addr, seen)
    }

    /// Ends a fake server's greeting: close after it.
    const CLOSE: &[u8] = b"<close>";

    fn mysql_probe(target: SocketAddr, user: Option<&str>) -> Probe {
        Probe {
            kind: CheckKind::Mysql,
            mysql_user: user.map(str::to_owned),
            timeout: Duration::from_millis(500),
            ..probe_of(target)
        }
    }

    const GREETING: &[u8] = b"\x0a5.5.5-10.11.19-MariaDB\x00\x05\x00\x00\x00abcdefgh\x00\xfe\xf7\
        \x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00ijklmnopqrst\x00\
        mysql_native_password\x00";

    #[tokio::test]
    async fn mysql_check_reads_the_greeting_and_logs_in_then_quits() {
        let ok = pkt(2, b"\x00\x00\x00\x02\x00\x00\x00");
        let (addr, seen) = fake_mysql(vec![
            // Greeting only: nothing is sent.
            (pkt(0, GREETING), vec![]),
            // Login accepted.
            (pkt(0, GREETING), vec![ok.clone()]),
            // Login refused.
            (
                pkt(0, GREETING),
                vec![pkt(
                    2,
                    b"\xff\x15\x04#28000Access denied for user 'nobody'@'10.0.0.2'",
                )],
            ),
            // Authentication switch to the native plugin: completed with the empty password.
            (
                pkt(0, GREETING),
                vec![
                    pkt(2, b"\xfemysql_native_password\x00abcdefghijklmnopqrst\x00"),
                    pkt(4, b"\x00\x00\x00\x02\x00\x00\x00"),
                ],
            ),
            // Authentication switch to a plugin that needs a password: down, saying so.
            (pkt(0, GREETING), vec![pkt(2, b"\xfeclient_ed25519\x00abc")]),
        ])
        .await;
        check(&mysql_probe(addr, None)).await.unwrap();
        let user = Some("haproxy_check");
        check(&mysql_probe(addr, user)).await.unwrap();
        let e = check(&mysql_probe(addr, Some("nobody"))).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "MySQL error 1045: Access denied for user 'nobody'@'10.0.0.2'"
        );
        check(&mysql_probe(addr, user)).await.unwrap();
        let e = check(&mysql_probe(addr, user))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("MySQL: the server asks for authentication plugin \"client_ed25519\""),
            "{e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen[0],
            Vec::<Vec<u8>>::new(),
            "greeting only: nothing sent"
        );
        // The login, then COM_QUIT.
        assert_eq!(seen[1].len(), 2, "{:?}", seen[1]);
        assert!(seen[1][0][32..].starts_with(b"haproxy_check\x00\x00"));
        assert_eq!(seen[1][1], [0x01], "COM_QUIT");
        assert_eq!(seen[2].len(), 1, "no COM_QUIT after a refused login");
        assert_eq!(
            seen[3].len(),
            3,
            "login, empty answer to the switch, COM_QUIT"
        );
        assert!(seen[3][1].is_empty());
        assert_eq!(seen[3][2], [0x01]);
        assert_eq!(seen[4].len(), 1, "no answer to a switch it cannot complete");
    }

    #[tokio::test]
    async fn mysql_check_fails_on_error_packets_garbage_truncation_and_silence() {
        let blocked = b"\xffi\x04Host '10.111.0.2' is blocked because of many connection \
            errors; unblock with 'mariadb-admin flush-hosts'";
        let (addr, _) = fake_mysql(vec![
            (pkt(0, blocked), vec![]),
            (pkt(0, b"\xff\x10\x04Too many connections"), vec![]),
            (b"HTTP/1.0 400 Bad Request\r\n\r\n".to_vec(), vec![]),
            // A header announcing 100 bytes, 10 sent, then the end.
            ([&pkt(0, GREETING)[..14], CLOSE].concat(), vec![]),
            // A length no greeting has.
            (b"\xff\xff\xff\x00".to_vec(), vec![]),
            // Nothing at all: the check times out.
            (Vec::new(), vec![]),
            // A greeting, then silence after the login.
            (pkt(0, GREETING), vec![Vec::new()]),
        ])
        .await;
        let p = mysql_probe(addr, None);
        let e = check(&p).await.unwrap_err();
        assert!(matches!(e, CheckError::Mysql { code: 1129, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "MySQL error 1129: Host '10.111.0.2' is blocked because of many connection errors; \
             unblock with 'mariadb-admin flush-hosts'"
        );
        assert_eq!(
            check(&p).await.unwrap_err().to_string(),
            "MySQL error 1040: Too many connections"
        );
        let e = check(&p).await.unwrap_err().to_string();
        // "HTTP": a 4-byte header of length 0x505448, more than a check reads.
        assert!(e.contains("more than the 16384 a check reads"), "{e}");
        let e = check(&p).await.unwrap_err().to_string();
        assert_eq!(e, "MySQL: connection closed in the middle of a packet");
        let e = check(&p).await.unwrap_err().to_string();
        assert!(e.starts_with("MySQL: packet of 16777215 bytes"), "{e}");
        let e = check(&p).await.unwrap_err();
        assert!(matches!(e, CheckError::Timeout(_)), "{e:?}");
        let e = check(&mysql_probe(addr, Some("haproxy_check")))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "timeout after 500 ms");
    }

    /// A directory for scripts, removed on drop.
    struct Scripts(std::path::PathBuf);

    impl Scripts {
        fn new(tag: &str) -> Scripts {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "foobar-lb-health-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scripts(dir)
        }

        /// An executable `/bin/sh` script named `name` holding `body`.
        fn script(&self, name: &str, body: &str) -> String {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for Scripts {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn external_probe(command: &[&str], timeout_ms: u64) -> Probe {
        Probe {
            kind: CheckKind::External,
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            ..probe_of("127.0.0.1:9".parse().unwrap())
        }
    }

    /// Whether process `pid` is gone (or a zombie: dead, waiting for its new parent).
    fn dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(st) => st
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    fn wait_dead(pid: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if dead(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test]
    async fn external_check_passes_on_exit_0_and_fails_with_the_first_line_of_output() {
        let s = Scripts::new("exit");
        let ok = s.script("ok", "exit 0");
        assert!(check(&external_probe(&[&ok], 2000)).await.is_ok());
        let fail = s.script(
            "fail",
            "echo 'to stdout'\necho '' >&2\necho \"read_only is $1\" >&2\necho more >&2\nexit 3",
        );
        let e = check(&external_probe(&[&fail, "ON"], 2000))
            .await
            .unwrap_err();
        assert!(!e.is_local());
        assert_eq!(
            e.to_string(),
            "command exited with status 3: read_only is ON"
        );
        let quiet = s.script("quiet", "echo 'only stdout'\nexit 1");
        assert_eq!(
            check(&external_probe(&[&quiet], 2000))
                .await
                .unwrap_err()
                .to_string(),
            "command exited with status 1: only stdout"
        );
        let silent = s.script("silent", "kill -9 $$");
        assert_eq!(
            check(&external_probe(&[&silent], 2000))
                .await
                .unwrap_err()
                .to_string(),
            "command killed by signal 9"
        );
        // Megabytes of output: read and dropped; one bounded line in the reason.
        let chatty = s.script(
            "chatty",
            "head -c 3000000 /dev/zero | tr '\\0' x\nhead -c 3000000 /dev/zero | tr '\\0' y >&2\nexit 1",
        );
        let e = check(&external_probe(&[&chatty], 5000))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("command exited with status 1: {}...", "y".repeat(200))
        );
        // A program that cannot be started: a failure naming it, not a local error.
        let e = check(&external_probe(&["/nonexistent/check"], 2000))
            .await
            .unwrap_err();
        assert!(!e.is_local(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot run /nonexistent/check: No such file or directory (os error 2)"
        );
    }

    #[tokio::test]
    async fn external_check_gets_the_backend_in_its_environment_and_path_only() {
        let s = Scripts::new("env");
        let out = s.0.join("env.out");
        let prog = s.script("env", &format!("env | sort > {}", out.display()));
        std::env::set_var("FOOBAR_LB_TEST_SECRET", "not for the check");
        let svc = service(
            &format!("check = \"external\"\ncommand = [\"{prog}\"]\nport = 3307"),
            "10.0.0.11",
        );
        let p = Probe::new(&svc, &svc.backends[0]);
        check(&p).await.unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        let vars: Vec<&str> = env
            .lines()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .collect();
        let path = format!("PATH={}", std::env::var("PATH").unwrap());
        assert_eq!(
            vars,
            [
                "FOOBAR_LB_BACKEND=10.0.0.11",
                "FOOBAR_LB_BACKEND_ADDR=10.0.0.11",
                "FOOBAR_LB_BACKEND_PORT=3307",
                "FOOBAR_LB_SERVICE=s",
                "FOOBAR_LB_VIP=10.0.0.100",
                "FOOBAR_LB_VIP_PORT=80",
                path.as_str(),
            ],
            "{env}"
        );
    }

    #[tokio::test]
    async fn external_check_timeout_kills_the_process_group() {
        let s = Scripts::new("timeout");
        let pids = s.0.join("pids");
        let prog = s.script(
            "slow",
            &format!("sleep 30 &\necho $$ $! > {}\nwait", pids.display()),
        );
        let start = Instant::now();
        let e = check(&external_probe(&[&prog], 300)).await.unwrap_err();
        assert!(matches!(e, CheckError::CommandTimeout(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "command timed out after 300 ms (process group killed)"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let text = std::fs::read_to_string(&pids).unwrap();
        let (shell, sleep) = text.trim().split_once(' ').unwrap();
        assert!(wait_dead(shell), "the command {shell} still runs");
        assert!(wait_dead(sleep), "its child sleep {sleep} still runs");
        // A check dropped while it runs (its backend removed) kills the group too.
        let _ = std::fs::remove_file(&pids);
        let probe = external_probe(&[&prog], 10_000);
        let task = tokio::spawn(async move { check(&probe).await });
        let deadline = Instant::now() + Duration::from_secs(3);
        while !pids.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let _ = task.await;
        let text = std::fs::read_to_string(&pids).unwrap();
        let (shell, sleep) = text.trim().split_once(' ').unwrap();
        assert!(wait_dead(shell) && wait_dead(sleep), "{shell} {sleep}");
    }

    #[test]
    fn check_errors_read_as_before() {
        assert_eq!(
            CheckError::Timeout(Duration::from_millis(1000)).to_string(),
            "timeout after 1000 ms"
        );
        assert_eq!(CheckError::BadResponse.to_string(), "bad HTTP response");
        let io = std::io::Error::other("boom");
        assert_eq!(CheckError::Connect(io).to_string(), "connect: boom");
    }
}
