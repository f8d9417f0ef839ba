//! Health checking: the rise/fall state machine (pure) and the TCP / HTTP probes.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::config::CheckKind;

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
}

/// What one probe checks.
#[derive(Debug, Clone)]
pub struct Probe {
    pub kind: CheckKind,
    pub target: SocketAddr,
    /// Host header for HTTP checks.
    pub host: String,
    pub path: String,
    pub status: (u16, u16),
    pub timeout: Duration,
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
}

/// Runs one check: `Ok(latency)` or why it failed.
pub async fn check(p: &Probe) -> Result<Duration, CheckError> {
    let start = Instant::now();
    match tokio::time::timeout(p.timeout, run(p)).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(CheckError::Timeout(p.timeout)),
    }
}

async fn run(p: &Probe) -> Result<(), CheckError> {
    let mut stream = TcpStream::connect(p.target)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => CheckError::Refused,
            _ => CheckError::Connect(e),
        })?;
    if p.kind == CheckKind::Tls {
        let name = rustls::pki_types::ServerName::IpAddress(p.target.ip().into());
        tls::connector()
            .connect(name, stream)
            .await
            .map_err(CheckError::Tls)?;
        return Ok(());
    }
    if p.kind != CheckKind::Http {
        return Ok(());
    }
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: foobar-lb-health\r\nConnection: close\r\n\r\n",
        p.path, p.host
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(CheckError::Send)?;
    // The status line fits in the first bytes; read at most 1 KiB.
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(CheckError::Read)?;
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
    use super::*;

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
            target,
            host: "www".into(),
            path: "/".into(),
            status: (200, 399),
            timeout: Duration::from_secs(2),
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
        let mut p = Probe {
            kind: CheckKind::Http,
            target: addr,
            host: "www".into(),
            path: "/".into(),
            status: (200, 399),
            timeout: Duration::from_secs(2),
        };
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
