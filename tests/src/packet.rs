//! Packets built field by field, with valid checksums, and a decoder for readable diffs.

use std::net::IpAddr;

pub type Mac = [u8; 6];

pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Any other protocol number with a raw payload.
    Other {
        proto: u8,
    },
}

/// A frame description. Defaults: client -> LB MACs, IPv4 TTL 64, no VLAN, no options.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub vlan: Option<u16>,
    /// An 802.1ad service tag before `vlan` (double tagging, QinQ).
    pub outer_vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (padded to 4 bytes by the caller).
    pub ip_options: Vec<u8>,
    /// IPv4 flags + fragment offset field.
    pub frag: u16,
    /// IPv6 extension headers between the fixed header and the L4 header, in order: (type,
    /// the header's bytes after its next-header byte). `build` chains the next-header fields.
    pub v6_ext: Vec<(u8, Vec<u8>)>,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// UDP over IPv4 sent without a checksum (the field zero, as RFC 768 allows).
    pub udp_no_checksum: bool,
    /// The TCP/UDP checksum field holds only the pseudo-header's sum, as a sender with
    /// checksum offload hands the frame on (the kernel's CHECKSUM_PARTIAL).
    pub partial_checksum: bool,
}

impl Pkt {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Pkt {
        Pkt::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn new(src: &str, dst: &str, l4: L4) -> Pkt {
        Pkt {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            vlan: None,
            outer_vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ip_options: Vec::new(),
            frag: 0,
            v6_ext: Vec::new(),
            l4,
            payload: b"hello foobar".to_vec(),
            udp_no_checksum: false,
            partial_checksum: false,
        }
    }

    /// With a partial checksum (see [`Pkt::partial_checksum`]).
    pub fn partial(mut self) -> Pkt {
        self.partial_checksum = true;
        self
    }

    pub fn vlan(mut self, id: u16) -> Pkt {
        self.vlan = Some(id);
        self
    }

    /// Double tagging: an 802.1ad service tag `outer`, then an 802.1Q tag `inner`.
    pub fn qinq(mut self, outer: u16, inner: u16) -> Pkt {
        self.outer_vlan = Some(outer);
        self.vlan = Some(inner);
        self
    }

    pub fn options(mut self, opts: &[u8]) -> Pkt {
        assert_eq!(opts.len() % 4, 0);
        self.ip_options = opts.to_vec();
        self
    }

    pub fn frag(mut self, field: u16) -> Pkt {
        self.frag = field;
        self
    }

    /// Appends an 8-byte IPv6 options header (`kind` 0 hop-by-hop or 60 destination options)
    /// holding one PadN option.
    pub fn v6_opts(mut self, kind: u8) -> Pkt {
        self.v6_ext.push((kind, vec![0, 1, 4, 0, 0, 0, 0]));
        self
    }

    /// Appends an IPv6 fragment header: `offset_flags` is the 16-bit field (offset in 8-byte
    /// units << 3, M flag in bit 0), identification 0x0badcafe.
    pub fn v6_frag(mut self, offset_flags: u16) -> Pkt {
        let [hi, lo] = offset_flags.to_be_bytes();
        self.v6_ext
            .push((44, vec![0, hi, lo, 0x0b, 0xad, 0xca, 0xfe]));
        self
    }

    /// An ICMP error (ICMPv6 when the addresses are IPv6) from `src` to `dst`: `kind`, `code`,
    /// the 4-byte field after the checksum (`rest`: the next-hop MTU of IPv4 "fragmentation
    /// needed" in its low 16 bits, the MTU of ICMPv6 "packet too big"), then the quoted packet
    /// `quoted` (an IP packet, from its IP header), with a valid checksum.
    pub fn icmp_error(src: &str, dst: &str, kind: u8, code: u8, rest: u32, quoted: &[u8]) -> Pkt {
        let mut p = Pkt::new(src, dst, L4::Other { proto: 1 });
        let mut msg = vec![kind, code, 0, 0];
        msg.extend(rest.to_be_bytes());
        msg.extend(quoted);
        let sum = match (p.src, p.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => checksum(&msg, 0),
            (s, d) => {
                p.l4 = L4::Other { proto: 58 };
                checksum(&msg, pseudo_sum(s, d, 58, msg.len()))
            }
        };
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        p.payload = msg;
        p
    }

    /// An ICMP error (ICMPv6 for IPv6 addresses) of `kind` (type, code) from `src` to `dst`
    /// quoting `quoted`'s IP packet (untagged), cut to its first `cut` bytes if given (an IP
    /// header and 8 bytes of L4 header is the least a router quotes). Built with full
    /// checksums by the tests' own code, so an expected frame checks the program's incremental
    /// updates of all four (outer IPv4, ICMP, quoted IPv4 header, quoted TCP/UDP).
    pub fn icmp_error_quoting(
        src: &str,
        dst: &str,
        kind: (u8, u8),
        rest: u32,
        quoted: &Pkt,
        cut: Option<usize>,
    ) -> Pkt {
        let ip = quoted.build()[14..].to_vec();
        let ip = &ip[..cut.unwrap_or(ip.len()).min(ip.len())];
        Pkt::icmp_error(src, dst, kind.0, kind.1, rest, ip)
    }

    /// A large TCP data segment (1400 bytes, ACK): what a path-MTU error quotes.
    pub fn tcp_data(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        let mut p = Pkt::tcp(src, sport, dst, dport, TCP_ACK);
        p.payload = vec![0x5a; 1400];
        p
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let mut b = Vec::new();
        let proto = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(1000u32.to_be_bytes()); // seq
                b.extend(0u32.to_be_bytes()); // ack
                b.push(5 << 4); // data offset
                b.push(flags);
                b.extend(64240u16.to_be_bytes()); // window
                b.extend([0, 0, 0, 0]); // checksum, urgent
                6
            }
            L4::Udp { sport, dport } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend([0, 0]);
                17
            }
            L4::Other { proto } => proto,
        };
        b.extend(&self.payload);
        if proto == 6 || (proto == 17 && !self.udp_no_checksum) {
            let sum = if self.partial_checksum {
                // The pseudo-header's sum, folded and not inverted.
                !checksum(&[], pseudo_sum(self.src, self.dst, proto, b.len()))
            } else {
                l4_checksum(self.src, self.dst, proto, &b)
            };
            let at = if proto == 6 { 16 } else { 6 };
            b[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        (proto, b)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        if let Some(id) = self.outer_vlan {
            f.extend(0x88a8u16.to_be_bytes());
            f.extend(id.to_be_bytes());
        }
        if let Some(id) = self.vlan {
            f.extend(0x8100u16.to_be_bytes());
            f.extend(id.to_be_bytes());
        }
        let (proto, l4) = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend(0x0800u16.to_be_bytes());
                let ihl = 5 + self.ip_options.len() / 4;
                let mut h = vec![(4 << 4) | ihl as u8, 0];
                h.extend(((ihl * 4 + l4.len()) as u16).to_be_bytes());
                h.extend(0x1234u16.to_be_bytes());
                h.extend(self.frag.to_be_bytes());
                h.extend([64, proto, 0, 0]);
                h.extend(s.octets());
                h.extend(d.octets());
                h.extend(&self.ip_options);
                let sum = checksum(&h, 0);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend(h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend(0x86ddu16.to_be_bytes());
                f.extend([0x60, 0, 0, 0]);
                let ext_len: usize = self.v6_ext.iter().map(|(_, b)| 1 + b.len()).sum();
                f.extend(((ext_len + l4.len()) as u16).to_be_bytes());
                let first = self.v6_ext.first().map_or(proto, |(k, _)| *k);
                f.extend([first, 64]);
                f.extend(s.octets());
                f.extend(d.octets());
                for (i, (_, body)) in self.v6_ext.iter().enumerate() {
                    f.push(self.v6_ext.get(i + 1).map_or(proto, |(k, _)| *k));
                    f.extend(body);
                }
            }
            _ => panic!("mixed address families"),
        }
        f.extend(l4);
        f
    }
}

/// The TCP or UDP source port of an untagged IPv4 (no options) or IPv6 frame: what a full-NAT
/// fixture reads back of the port the program allocated.
pub fn sport_of(frame: &[u8]) -> u16 {
    let l4 = if u16::from_be_bytes([frame[12], frame[13]]) == 0x0800 {
        14 + 20
    } else {
        14 + 40
    };
    u16::from_be_bytes([frame[l4], frame[l4 + 1]])
}

/// Internet checksum of `data`, starting from a partial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
        }
        _ => panic!("mixed address families"),
    }
    p.extend([0, proto]);
    p.extend((len as u32).to_be_bytes());
    p.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum()
}

fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    checksum(seg, pseudo_sum(src, dst, proto, seg.len()))
}

/// A frame taken apart, for assertions and readable failure output.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub eth_dst: String,
    pub eth_src: String,
    pub vlan: Option<u16>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub ports: Option<(u16, u16)>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: Option<u8>,
    /// IP protocol (IPv6: the header after the options, routing and fragment headers).
    pub proto: Option<u8>,
    /// IPv4 total length or IPv6 payload length.
    pub ip_len: Option<u16>,
    /// TCP flags byte.
    pub tcp_flags: Option<u8>,
    /// The bytes after the L4 header (or after IP for other protocols).
    pub payload: Vec<u8>,
    /// IPv4 header checksum and TCP/UDP checksum both verify.
    pub checksums_ok: bool,
    /// The TCP/UDP checksum field holds the pseudo-header's sum (folded, not inverted): a
    /// partial checksum (see [`Pkt::partial_checksum`]).
    pub partial_checksum: bool,
    pub len: usize,
}

impl Decoded {
    /// `field: got != want` for every field that differs, for failure messages.
    pub fn diff(&self, want: &Decoded) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($f:ident),*) => {$(
                if self.$f != want.$f {
                    out.push(format!("  {}: got {:?}, want {:?}", stringify!($f), self.$f, want.$f));
                }
            )*};
        }
        cmp!(
            eth_dst,
            eth_src,
            vlan,
            src,
            dst,
            ports,
            ttl,
            proto,
            ip_len,
            tcp_flags,
            payload,
            checksums_ok,
            partial_checksum,
            len
        );
        if out.is_empty() {
            out.push(
                "  (decoded fields equal: the difference is in bytes the decoder does not name)"
                    .into(),
            );
        }
        out
    }
}

pub fn mac_str(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Decodes a frame built by [`Pkt::build`] (or rewritten from one).
pub fn decode(f: &[u8]) -> Decoded {
    let mut d = Decoded {
        eth_dst: mac_str(&f[0..6]),
        eth_src: mac_str(&f[6..12]),
        vlan: None,
        src: None,
        dst: None,
        ports: None,
        ttl: None,
        proto: None,
        ip_len: None,
        tcp_flags: None,
        payload: Vec::new(),
        checksums_ok: false,
        partial_checksum: false,
        len: f.len(),
    };
    // Truncated frames decode as far as they go.
    if f.len() < 14 {
        return d;
    }
    let mut off = 12;
    let mut et = u16::from_be_bytes([f[off], f[off + 1]]);
    if et == 0x88a8 && f.len() >= off + 6 {
        off += 4;
        et = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    if et == 0x8100 {
        if f.len() < off + 6 {
            return d;
        }
        d.vlan = Some(u16::from_be_bytes([f[off + 2], f[off + 3]]));
        off += 4;
        et = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    off += 2;
    let (src, dst, proto, l4) = match et {
        0x0800 if f.len() >= off + 20 && f.len() >= off + (f[off] & 0xf) as usize * 4 => {
            let ihl = (f[off] & 0xf) as usize * 4;
            let ip_ok = checksum(&f[off..off + ihl], 0) == 0;
            let s: [u8; 4] = f[off + 12..off + 16].try_into().unwrap();
            let t: [u8; 4] = f[off + 16..off + 20].try_into().unwrap();
            d.checksums_ok = ip_ok;
            d.ttl = Some(f[off + 8]);
            d.ip_len = Some(u16::from_be_bytes([f[off + 2], f[off + 3]]));
            (
                IpAddr::from(s),
                IpAddr::from(t),
                f[off + 9],
                &f[off + ihl..],
            )
        }
        0x86dd if f.len() >= off + 40 => {
            let s: [u8; 16] = f[off + 8..off + 24].try_into().unwrap();
            let t: [u8; 16] = f[off + 24..off + 40].try_into().unwrap();
            d.checksums_ok = true;
            d.ttl = Some(f[off + 7]);
            d.ip_len = Some(u16::from_be_bytes([f[off + 4], f[off + 5]]));
            // Skip extension headers (options, routing, fragment) to the L4 header.
            let (mut next, mut at) = (f[off + 6], off + 40);
            while matches!(next, 0 | 43 | 44 | 60) && f.len() >= at + 8 {
                let len = if next == 44 {
                    8
                } else {
                    (f[at + 1] as usize + 1) * 8
                };
                next = f[at];
                at = (at + len).min(f.len());
            }
            (IpAddr::from(s), IpAddr::from(t), next, &f[at..])
        }
        _ => return d,
    };
    d.src = Some(src);
    d.dst = Some(dst);
    d.proto = Some(proto);
    d.payload = l4.to_vec();
    if proto == 6 && l4.len() >= 20 {
        d.tcp_flags = Some(l4[13]);
        let data_off = ((l4[12] >> 4) as usize * 4).min(l4.len());
        d.payload = l4[data_off..].to_vec();
    } else if proto == 17 && l4.len() >= 8 {
        d.payload = l4[8..].to_vec();
    }
    if (proto == 6 || proto == 17) && l4.len() >= 8 {
        d.ports = Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ));
        // IPv4 UDP without a checksum (zero) is valid; IPv6 UDP must carry one.
        let none = proto == 17 && src.is_ipv4() && l4[6] == 0 && l4[7] == 0;
        let pseudo = pseudo_sum(src, dst, proto, l4.len());
        let at = if proto == 6 { 16 } else { 6 };
        d.partial_checksum = l4.len() >= at + 2
            && u16::from_be_bytes([l4[at], l4[at + 1]]) == !checksum(&[], pseudo);
        d.checksums_ok &= none || checksum(l4, pseudo) == 0;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_verify() {
        for p in [
            Pkt::tcp("10.0.0.1", 1000, "10.0.0.100", 80, TCP_SYN),
            Pkt::udp("10.0.0.1", 1000, "10.0.0.100", 53).vlan(7),
            Pkt::udp("10.0.0.1", 1000, "10.0.0.100", 53).qinq(100, 7),
            Pkt::tcp("fd00::1", 1000, "fd00::100", 80, TCP_ACK),
            Pkt::tcp("fd00::1", 1000, "fd00::100", 80, TCP_ACK)
                .v6_opts(0)
                .v6_frag(1)
                .v6_opts(60),
            Pkt::tcp("10.0.0.1", 1000, "10.0.0.100", 80, TCP_SYN).options(&[1, 1, 1, 0]),
        ] {
            let d = decode(&p.build());
            assert!(d.checksums_ok, "{d:?}");
            assert_eq!(d.src, Some(p.src));
            assert_eq!(d.vlan, p.vlan);
        }
        // A flipped bit is caught.
        let mut f = Pkt::udp("10.0.0.1", 1000, "10.0.0.100", 53).build();
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(!decode(&f).checksums_ok);
    }
}
