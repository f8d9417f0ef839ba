//! The sync protocol on the wire: a mutual challenge-response over fresh nonces with the shared
//! key, then frames each authenticated by HMAC-SHA256 under a per-direction session key and a
//! sequence number (a frame cannot be forged, altered, replayed or reordered).
//!
//! Handshake (fixed sizes): the dialer sends `MAGIC, nonce_c`; the listener answers
//! `MAGIC, nonce_s, HMAC(key, "server" | nonce_c | nonce_s)`; the dialer checks it and answers
//! `HMAC(key, "client" | nonce_c | nonce_s)`. Neither side sends a flow before the other has
//! proven the key. Frames: `len: u32 BE | kind: u8 | payload | tag: 32 bytes`, `len` counting
//! everything after itself, `tag = HMAC(session, seq: u64 BE | kind | payload)`.
//! The stream is authenticated, not encrypted: the link between nodes should be a private one.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

/// The protocol's version is its last byte: version 2 added the NAT entries ([`Frame::Nat`]).
/// A peer of another version is refused at the handshake with [`WireError::Version`] (both
/// nodes of a pair must run one version; an upgrade restarts them in turn).
const MAGIC: &[u8; 8] = b"FLBSYNC2";
/// The part of [`MAGIC`] every version shares.
const MAGIC_FAMILY: &[u8; 7] = b"FLBSYNC";
const NONCE: usize = 32;
const TAG: usize = 32;
/// Bytes of a process's [`instance_id`].
pub const ID: usize = 16;
/// Largest frame accepted (a batch of entries is at most [`MAX_BATCH`] of them).
const MAX_FRAME: usize = 1 << 20;
/// Entries per `Flows` frame.
pub const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("sync connection I/O")]
    Io(#[from] std::io::Error),
    #[error("the peer does not speak the foobar-lb sync protocol")]
    BadMagic,
    #[error(
        "the peer speaks version {theirs} of the sync protocol, this node version {ours}: \
         run one foobar-lb version on both nodes"
    )]
    Version { ours: char, theirs: char },
    #[error("authentication failed: the peer does not hold the same sync key")]
    AuthFailed,
    #[error("a frame failed authentication (tampered or out of sequence)")]
    BadTag,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("cannot draw a nonce")]
    Random(#[source] getrandom::Error),
    #[error(
        "the connection reached this node itself (a peer address that is its own, or a relay)"
    )]
    SelfPeer,
}

impl WireError {
    /// Whether this is the peer failing to prove the key (counted as an auth failure).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            WireError::AuthFailed | WireError::BadTag | WireError::BadMagic
        )
    }
}

/// A flow in node-independent form: its 5-tuple (which names the service: VIP, port,
/// protocol) and the backend by address and port, never by a node's local id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    pub family: u8,
    pub proto: u8,
    /// `FLOW_FIN` / `FLOW_RST` as the sender's table has them, shifted down to bits 0 and 1.
    pub closing: u8,
    /// Addresses as the data plane stores them: bytes in packet order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports as the packet carries them (network order bytes).
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub backend: [u8; 16],
    pub backend_port: [u8; 2],
}

const ENTRY: usize = 3 + 16 * 3 + 2 * 3;

/// Reads an entry's fixed-size fields in order, so no decoder spells out offsets. The frame
/// decoder checked the length before: a short slice is a bug here, not bad input.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("the frame's length was checked")
    }
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, self.proto, self.closing]);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.sport);
        out.extend_from_slice(&self.dport);
        out.extend_from_slice(&self.backend);
        out.extend_from_slice(&self.backend_port);
    }

    fn decode(b: &[u8]) -> Entry {
        let mut f = Fields(b);
        let [family, proto, closing] = f.take();
        Entry {
            family,
            proto,
            closing,
            src: f.take(),
            dst: f.take(),
            sport: f.take(),
            dport: f.take(),
            backend: f.take(),
            backend_port: f.take(),
        }
    }
}

/// A NAT or full-NAT connection in node-independent form: the client's 5-tuple (which names
/// the service), the backend by address and port, the SNAT address and port (full NAT), the
/// client's next-hop MAC and both directions' state. What is a node's own view (backend ids,
/// interfaces, the backend's next hop) is not sent: the receiver finds its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatEntry {
    pub family: u8,
    pub proto: u8,
    /// `NAT_ENTRY_*` bits.
    pub flags: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub backend: [u8; 16],
    pub backend_port: [u8; 2],
    /// Full NAT: the source address and port the backend sees; zero for NAT.
    pub snat: [u8; 16],
    pub snat_port: [u8; 2],
    /// The source MAC of the client's first frame (the client or its router): the replies'
    /// next hop. Both nodes of a pair share the clients' segment (the VIP moves on it), so
    /// it is the same from either.
    pub client_mac: [u8; 6],
    /// Flow-time units (2^30 ns) since the connection's last packet either way, as the
    /// sender saw it: the receiver's entries age from there, so its sweeper expires them
    /// when the sender's does, not earlier (they are re-sent while the connection is alive).
    pub idle: u32,
}

/// [`NatEntry::flags`]: a full-NAT connection.
pub const NAT_ENTRY_FULL: u8 = 1;
/// [`NatEntry::flags`]: the backend has answered.
pub const NAT_ENTRY_REPLIED: u8 = 1 << 1;
/// [`NatEntry::flags`]: FIN / RST seen from the client...
pub const NAT_ENTRY_CLIENT_FIN: u8 = 1 << 2;
pub const NAT_ENTRY_CLIENT_RST: u8 = 1 << 3;
/// ...and from the backend.
pub const NAT_ENTRY_BACKEND_FIN: u8 = 1 << 4;
pub const NAT_ENTRY_BACKEND_RST: u8 = 1 << 5;

const NAT_ENTRY: usize = 3 + 16 * 4 + 2 * 4 + 6 + 4;

impl NatEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, self.proto, self.flags]);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.sport);
        out.extend_from_slice(&self.dport);
        out.extend_from_slice(&self.backend);
        out.extend_from_slice(&self.backend_port);
        out.extend_from_slice(&self.snat);
        out.extend_from_slice(&self.snat_port);
        out.extend_from_slice(&self.client_mac);
        out.extend_from_slice(&self.idle.to_be_bytes());
    }

    fn decode(b: &[u8]) -> NatEntry {
        let mut f = Fields(b);
        let [family, proto, flags] = f.take();
        NatEntry {
            family,
            proto,
            flags,
            src: f.take(),
            dst: f.take(),
            sport: f.take(),
            dport: f.take(),
            backend: f.take(),
            backend_port: f.take(),
            snat: f.take(),
            snat_port: f.take(),
            client_mac: f.take(),
            idle: u32::from_be_bytes(f.take()),
        }
    }
}

/// What flows over a sync connection, listener to dialer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// New flows (live) or part of the table (bulk); `sent_ms`: the sender's wall clock (ms
    /// since the epoch) when it read them, for the lag metric.
    Flows { sent_ms: u64, entries: Vec<Entry> },
    /// New NAT connections (live) or part of the NAT table (bulk), as `Flows`.
    Nat {
        sent_ms: u64,
        entries: Vec<NatEntry>,
    },
    /// The bulk dump is complete: `count` entries (flows and NAT connections) were sent.
    BulkDone { count: u64 },
    /// Nothing new: the connection is alive.
    Ping,
}

const KIND_FLOWS: u8 = 1;
const KIND_BULK_DONE: u8 = 2;
const KIND_PING: u8 = 3;
const KIND_NAT: u8 = 4;

impl Frame {
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Flows { sent_ms, entries } => {
                let mut p = Vec::with_capacity(8 + entries.len() * ENTRY);
                p.extend_from_slice(&sent_ms.to_be_bytes());
                for e in entries {
                    e.encode(&mut p);
                }
                (KIND_FLOWS, p)
            }
            Frame::Nat { sent_ms, entries } => {
                let mut p = Vec::with_capacity(8 + entries.len() * NAT_ENTRY);
                p.extend_from_slice(&sent_ms.to_be_bytes());
                for e in entries {
                    e.encode(&mut p);
                }
                (KIND_NAT, p)
            }
            Frame::BulkDone { count } => (KIND_BULK_DONE, count.to_be_bytes().to_vec()),
            Frame::Ping => (KIND_PING, Vec::new()),
        }
    }

    fn decode(kind: u8, p: &[u8]) -> Result<Frame, WireError> {
        let u64_at = |p: &[u8]| -> Result<u64, WireError> {
            let b: [u8; 8] = p
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or(WireError::Malformed("short payload"))?;
            Ok(u64::from_be_bytes(b))
        };
        match kind {
            KIND_FLOWS => {
                let sent_ms = u64_at(p)?;
                let rest = &p[8..];
                if !rest.len().is_multiple_of(ENTRY) || rest.len() / ENTRY > MAX_BATCH {
                    return Err(WireError::Malformed("flow batch of a bad length"));
                }
                let entries = rest.chunks_exact(ENTRY).map(Entry::decode).collect();
                Ok(Frame::Flows { sent_ms, entries })
            }
            KIND_NAT => {
                let sent_ms = u64_at(p)?;
                let rest = &p[8..];
                if !rest.len().is_multiple_of(NAT_ENTRY) || rest.len() / NAT_ENTRY > MAX_BATCH {
                    return Err(WireError::Malformed("NAT batch of a bad length"));
                }
                let entries = rest.chunks_exact(NAT_ENTRY).map(NatEntry::decode).collect();
                Ok(Frame::Nat { sent_ms, entries })
            }
            KIND_BULK_DONE if p.len() == 8 => Ok(Frame::BulkDone { count: u64_at(p)? }),
            KIND_PING if p.is_empty() => Ok(Frame::Ping),
            _ => Err(WireError::Malformed("unknown frame kind or length")),
        }
    }
}

/// [`MAGIC`], or which error its absence is: another version of this protocol, or another one.
fn check_magic(got: &[u8]) -> Result<(), WireError> {
    if got == MAGIC {
        Ok(())
    } else if got[..7] == MAGIC_FAMILY[..] {
        Err(WireError::Version {
            ours: MAGIC[7] as char,
            theirs: got[7] as char,
        })
    } else {
        Err(WireError::BadMagic)
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m
}

fn tag(key: &[u8], parts: &[&[u8]]) -> [u8; TAG] {
    mac(key, parts).finalize().into_bytes().into()
}

/// Constant-time check of `got` against the tag of `parts`.
fn verify(key: &[u8], parts: &[&[u8]], got: &[u8]) -> bool {
    mac(key, parts).verify_slice(got).is_ok()
}

fn nonce() -> Result<[u8; NONCE], WireError> {
    let mut n = [0u8; NONCE];
    getrandom::getrandom(&mut n).map_err(WireError::Random)?;
    Ok(n)
}

/// This process's random id, sent (authenticated) in both directions of every handshake: a
/// node that meets its own id, because a peer address is one of its own or someone relayed its
/// hello back to its own listener, refuses to sync with itself (its start-up gate would open
/// on its own dump).
pub fn instance_id() -> &'static [u8; ID] {
    static ID_CELL: std::sync::OnceLock<[u8; ID]> = std::sync::OnceLock::new();
    ID_CELL.get_or_init(|| {
        let mut id = [0u8; ID];
        // Without randomness every nonce fails too, and no handshake completes.
        let _ = getrandom::getrandom(&mut id);
        id
    })
}

/// The session key of one direction, from the shared key and both nonces.
fn session(key: &[u8], dir: &[u8], nc: &[u8], ns: &[u8]) -> [u8; TAG] {
    tag(key, &[b"session ", dir, nc, ns])
}

/// The dialer's side of the handshake: returns the reader of the listener's frames.
pub async fn dial_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
    me: &[u8; ID],
) -> Result<FrameReader, WireError> {
    let nc = nonce()?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&nc);
    hello.extend_from_slice(me);
    s.write_all(&hello).await?;
    let mut answer = [0u8; 8 + NONCE + ID + TAG];
    s.read_exact(&mut answer).await?;
    check_magic(&answer[..8])?;
    let ns = &answer[8..8 + NONCE];
    let them = &answer[8 + NONCE..8 + NONCE + ID];
    if !verify(
        key,
        &[b"server", &nc, ns, me, them],
        &answer[8 + NONCE + ID..],
    ) {
        return Err(WireError::AuthFailed);
    }
    if them == me {
        return Err(WireError::SelfPeer);
    }
    s.write_all(&tag(key, &[b"client", &nc, ns, me, them]))
        .await?;
    Ok(FrameReader {
        key: session(key, b"to-dialer", &nc, ns),
        seq: 0,
    })
}

/// The listener's side of the handshake: returns the writer of its frames. Nothing but the
/// challenge leaves before the dialer proved the key.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
    me: &[u8; ID],
) -> Result<FrameWriter, WireError> {
    let mut hello = [0u8; 8 + NONCE + ID];
    s.read_exact(&mut hello).await?;
    check_magic(&hello[..8])?;
    let nc = &hello[8..8 + NONCE];
    let them = &hello[8 + NONCE..];
    if them == me {
        return Err(WireError::SelfPeer);
    }
    let ns = nonce()?;
    let mut answer = MAGIC.to_vec();
    answer.extend_from_slice(&ns);
    answer.extend_from_slice(me);
    answer.extend_from_slice(&tag(key, &[b"server", nc, &ns, them, me]));
    s.write_all(&answer).await?;
    let mut proof = [0u8; TAG];
    // A dialer that found our answer wrong (another key) hangs up here.
    s.read_exact(&mut proof).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::AuthFailed,
        _ => WireError::Io(e),
    })?;
    if !verify(key, &[b"client", nc, &ns, them, me], &proof) {
        return Err(WireError::AuthFailed);
    }
    Ok(FrameWriter {
        key: session(key, b"to-dialer", nc, &ns),
        seq: 0,
    })
}

/// Writes authenticated frames (the listener's side).
pub struct FrameWriter {
    key: [u8; TAG],
    seq: u64,
}

impl FrameWriter {
    /// The frame's bytes, tag included (advances the sequence).
    pub fn seal(&mut self, frame: &Frame) -> Vec<u8> {
        let (kind, payload) = frame.encode();
        let t = tag(&self.key, &[&self.seq.to_be_bytes(), &[kind], &payload]);
        self.seq += 1;
        let len = (1 + payload.len() + TAG) as u32;
        let mut out = Vec::with_capacity(4 + len as usize);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&t);
        out
    }

    pub async fn send<S: AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        frame: &Frame,
    ) -> Result<(), WireError> {
        let bytes = self.seal(frame);
        s.write_all(&bytes).await?;
        Ok(())
    }
}

/// Reads and checks authenticated frames (the dialer's side).
pub struct FrameReader {
    key: [u8; TAG],
    seq: u64,
}

impl FrameReader {
    /// The next frame; any frame whose tag does not verify ends the connection.
    pub async fn recv<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Result<Frame, WireError> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if !(1 + TAG..=MAX_FRAME).contains(&len) {
            return Err(WireError::Malformed("frame length out of range"));
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        self.open(&buf)
    }

    /// Checks and decodes one frame's bytes after its length.
    pub fn open(&mut self, buf: &[u8]) -> Result<Frame, WireError> {
        let (body, t) = buf.split_at(buf.len() - TAG);
        let (kind, payload) = (body[0], &body[1..]);
        if !verify(&self.key, &[&self.seq.to_be_bytes(), &[kind], payload], t) {
            return Err(WireError::BadTag);
        }
        self.seq += 1;
        Frame::decode(kind, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const LISTENER: [u8; ID] = [1; ID];
    const DIALER: [u8; ID] = [2; ID];

    fn entry(n: u8) -> Entry {
        Entry {
            family: 4,
            proto: 6,
            closing: 0,
            src: [n; 16],
            dst: [2; 16],
            sport: [0x30, n],
            dport: [0, 80],
            backend: [3; 16],
            backend_port: [0, 0],
        }
    }

    /// A full-NAT entry with every field distinct, so a field decoded from the wrong offset shows.
    fn nat_entry(n: u8) -> NatEntry {
        NatEntry {
            family: 4,
            proto: 6,
            flags: NAT_ENTRY_FULL | NAT_ENTRY_REPLIED | NAT_ENTRY_BACKEND_FIN,
            src: [n; 16],
            dst: [2; 16],
            sport: [0x30, n],
            dport: [0, 80],
            backend: [3; 16],
            backend_port: [0x1f, 0x90],
            snat: [4; 16],
            snat_port: [0xc3, n],
            client_mac: [0x02, 0, 0, 0, 5, n],
            idle: 0x0102_0300 | n as u32,
        }
    }

    /// A connected pair after the handshake: (listener's writer, dialer's reader).
    async fn pair(dial_key: &[u8]) -> Result<(FrameWriter, FrameReader), WireError> {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (w, r) = tokio::join!(
            accept_handshake(&mut a, KEY, &LISTENER),
            dial_handshake(&mut b, dial_key, &DIALER)
        );
        Ok((w?, r?))
    }

    #[tokio::test]
    async fn frames_round_trip_after_the_handshake() {
        let (mut w, mut r) = pair(KEY).await.unwrap();
        let frames = [
            Frame::Flows {
                sent_ms: 1234,
                entries: vec![entry(1), entry(2)],
            },
            Frame::Nat {
                sent_ms: 1235,
                entries: vec![nat_entry(1), nat_entry(2)],
            },
            Frame::BulkDone { count: 4 },
            Frame::Ping,
        ];
        for f in &frames {
            let bytes = w.seal(f);
            assert_eq!(&r.open(&bytes[4..]).unwrap(), f);
        }
    }

    #[test]
    fn a_nat_entry_keeps_every_field_at_its_offset() {
        let e = nat_entry(9);
        let mut b = Vec::new();
        e.encode(&mut b);
        assert_eq!(b.len(), NAT_ENTRY);
        assert_eq!(NatEntry::decode(&b), e);
        // The idle time last (big-endian), the MAC before it, the SNAT port before that.
        assert_eq!(&b[NAT_ENTRY - 4..], &[1, 2, 3, 9]);
        assert_eq!(&b[NAT_ENTRY - 10..NAT_ENTRY - 4], &[0x02, 0, 0, 0, 5, 9]);
        assert_eq!(&b[NAT_ENTRY - 12..NAT_ENTRY - 10], &[0xc3, 9]);
    }

    /// A node of the previous version (DSR flows only) meets this one: both sides say it is a
    /// version mismatch, neither takes it for a wrong key.
    #[tokio::test]
    async fn a_peer_of_another_protocol_version_is_refused_as_such() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let old = async {
            let mut hello = b"FLBSYNC1".to_vec();
            hello.extend_from_slice(&[0; NONCE + ID]);
            b.write_all(&hello).await.unwrap();
            drop(b);
        };
        let (w, ()) = tokio::join!(accept_handshake(&mut a, KEY, &LISTENER), old);
        match w {
            Err(
                e @ WireError::Version {
                    ours: '2',
                    theirs: '1',
                },
            ) => assert!(!e.is_auth()),
            other => panic!("listener: {:?}", other.err()),
        }
        assert!(matches!(check_magic(b"NOTSYNC2"), Err(WireError::BadMagic)));
        assert!(check_magic(MAGIC).is_ok());
    }

    #[tokio::test]
    async fn a_wrong_key_fails_both_sides_of_the_handshake() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let wrong = b"another key of thirty-two bytes!";
        let (w, r) = tokio::join!(accept_handshake(&mut a, KEY, &LISTENER), async {
            let r = dial_handshake(&mut b, wrong, &DIALER).await;
            drop(b);
            r
        });
        assert!(
            matches!(r, Err(WireError::AuthFailed)),
            "dialer: {:?}",
            r.err()
        );
        // The dialer hung up without proving anything: the listener refuses it too.
        assert!(
            matches!(w, Err(WireError::AuthFailed)),
            "listener: {:?}",
            w.err()
        );
    }

    /// A node's hello reaching its own listener (a peer address of its own, or a relay of its
    /// hello back to it): refused, so its start-up gate cannot open on its own dump.
    #[tokio::test]
    async fn a_node_never_completes_a_handshake_with_itself() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let listener = async {
            let w = accept_handshake(&mut a, KEY, &DIALER).await;
            // Hang up, as the daemon does on an error, so the dialer's read ends.
            drop(a);
            w
        };
        let (w, r) = tokio::join!(listener, async {
            let r = dial_handshake(&mut b, KEY, &DIALER).await;
            drop(b);
            r
        });
        assert!(
            matches!(w, Err(WireError::SelfPeer)),
            "listener: {:?}",
            w.err()
        );
        assert!(r.is_err(), "the dialer completed a handshake with itself");
        // Two processes have two ids.
        assert_ne!(instance_id(), &[0; ID]);
    }

    #[tokio::test]
    async fn a_tampered_replayed_or_forged_frame_is_rejected() {
        let (mut w, mut r) = pair(KEY).await.unwrap();
        let f = Frame::Flows {
            sent_ms: 1,
            entries: vec![entry(7)],
        };
        let good = w.seal(&f);
        // One bit of the backend address flipped.
        let mut bad = good.clone();
        bad[4 + 1 + 8 + 40] ^= 1;
        assert!(matches!(r.open(&bad[4..]), Err(WireError::BadTag)));
        assert_eq!(r.open(&good[4..]).unwrap(), f);
        // The same frame again (a replay) is out of sequence.
        assert!(matches!(r.open(&good[4..]), Err(WireError::BadTag)));
        // A frame tagged with the shared key itself (not the session's) is refused.
        let mut forger = FrameWriter {
            key: KEY[..32].try_into().unwrap(),
            seq: 1,
        };
        assert!(matches!(
            r.open(&forger.seal(&f)[4..]),
            Err(WireError::BadTag)
        ));
    }

    #[tokio::test]
    async fn the_reader_refuses_oversized_and_malformed_frames() {
        let (w, mut r) = pair(KEY).await.unwrap();
        let mut huge = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 64]);
        let mut s = &huge[..];
        assert!(matches!(r.recv(&mut s).await, Err(WireError::Malformed(_))));
        // A Flows payload cut mid-entry, correctly tagged: refused by the decoder.
        let (kind, mut payload) = Frame::Flows {
            sent_ms: 0,
            entries: vec![entry(1)],
        }
        .encode();
        payload.pop();
        let t = tag(&w.key, &[&w.seq.to_be_bytes(), &[kind], &payload]);
        let mut buf = vec![kind];
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(&t);
        assert!(matches!(r.open(&buf), Err(WireError::Malformed(_))));
        // The same for a NAT batch cut mid-entry.
        let (kind, mut payload) = Frame::Nat {
            sent_ms: 0,
            entries: vec![nat_entry(1)],
        }
        .encode();
        payload.pop();
        assert!(matches!(
            Frame::decode(kind, &payload),
            Err(WireError::Malformed(_))
        ));
    }
}
