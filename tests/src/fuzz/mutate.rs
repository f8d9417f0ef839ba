//! Mutations of a seed frame: truncation at each layer boundary and at random points, bit
//! flips, field rewrites (lengths, checksums, flags, offsets, protocol numbers, ports,
//! addresses, EtherTypes, VLAN ids, extension-header lengths and kinds, the packet an ICMP
//! error quotes), inserted and appended bytes;
//! after some of them the IPv4 header checksum is made right again, so the mutated header
//! reaches the checks behind it.

use super::{rng::Rng, seeds::Layout};

/// The shortest frame BPF_PROG_TEST_RUN accepts (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// Frames stay well within one page (BPF_PROG_TEST_RUN's limit for XDP).
pub const MAX_FRAME: usize = 1600;

/// Applies 1 to 3 mutations; returns their names.
pub fn mutate(rng: &mut Rng, f: &mut Vec<u8>, l: &Layout) -> Vec<&'static str> {
    let n = rng.range(1, 3);
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(one(rng, f, l));
    }
    if rng.chance(60) {
        fix_ipv4_checksum(f, l);
    }
    f.truncate(MAX_FRAME);
    names
}

fn one(rng: &mut Rng, f: &mut Vec<u8>, l: &Layout) -> &'static str {
    match rng.below(100) {
        0..=14 => {
            // At a layer boundary (or just around it).
            let mut cuts = vec![12, 14, 16, 18];
            if let Some((l3, v6)) = l.l3 {
                cuts.extend([l3, l3 + 1, l3 + 12, l3 + 20, l3 + l.l3_len]);
                if v6 {
                    cuts.extend([l3 + 24, l3 + 39, l3 + 40]);
                }
            }
            for &e in &l.exts {
                cuts.extend([e, e + 1, e + 2, e + 8]);
            }
            if let Some((q, v6)) = l.quoted {
                let ports = q + if v6 { 40 } else { 20 };
                cuts.extend([q, q + 1, q + 12, q + 20, ports, ports + 2, ports + 4]);
            }
            if let Some((l4, _)) = l.l4 {
                cuts.extend([
                    l4 + 2,
                    l4 + 4,
                    l4 + 7,
                    l4 + 8,
                    l4 + 13,
                    l4 + 14,
                    l4 + 19,
                    l4 + 20,
                ]);
            }
            let at = *rng.pick(&cuts);
            f.truncate(at.max(MIN_FRAME));
            "truncate-layer"
        }
        15..=19 => {
            let at = rng.range(MIN_FRAME, f.len().max(MIN_FRAME));
            f.truncate(at);
            "truncate"
        }
        20..=39 => {
            // Bit flips, mostly in the headers.
            let span = if rng.chance(80) {
                f.len().min(96)
            } else {
                f.len()
            };
            let k = rng.range(1, 3);
            for _ in 0..k {
                let i = rng.below(span);
                f[i] ^= 1 << rng.below(8);
            }
            "bit-flip"
        }
        40..=89 => field(rng, f, l),
        90..=94 => {
            let n = rng.range(1, 64);
            let tail = rng.bytes(n);
            f.extend(tail);
            "append"
        }
        _ => {
            let at = rng.range(MIN_FRAME, f.len());
            let n = rng.range(1, 8);
            let ins = rng.bytes(n);
            f.splice(at..at, ins);
            "insert"
        }
    }
}

/// Interesting values for a field of `bits` bits near `old`.
fn value(rng: &mut Rng, old: u32, bits: u32) -> u32 {
    let max = if bits == 32 {
        u32::MAX
    } else {
        (1 << bits) - 1
    };
    let v = match rng.below(8) {
        0 => 0,
        1 => max,
        2 => old.wrapping_add(1),
        3 => old.wrapping_sub(1),
        4 => old.wrapping_add(rng.range(2, 64) as u32),
        5 => old.wrapping_sub(rng.range(2, 64) as u32),
        6 => 1 << rng.below(bits as usize),
        _ => rng.next_u64() as u32,
    };
    v & max
}

fn put(f: &mut [u8], at: usize, bytes: usize, v: u32) {
    if at + bytes <= f.len() {
        let b = v.to_be_bytes();
        f[at..at + bytes].copy_from_slice(&b[4 - bytes..]);
    }
}

fn get(f: &[u8], at: usize, bytes: usize) -> u32 {
    if at + bytes > f.len() {
        return 0;
    }
    f[at..at + bytes]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | b as u32)
}

/// Rewrites one header field, picked from (name, offset, width in bytes) of the layout.
fn field(rng: &mut Rng, f: &mut [u8], l: &Layout) -> &'static str {
    let mut fields: Vec<(&'static str, usize, usize)> =
        vec![("ether-type", l.ether_type, 2), ("dst-mac", 5, 1)];
    for &t in &l.tags {
        fields.push(("vlan-tci", t, 2));
        fields.push(("vlan-type", t + 2, 2));
    }
    if let Some((l3, v6)) = l.l3 {
        if v6 {
            fields.extend([
                ("ip6-version", l3, 1),
                ("ip6-payload-len", l3 + 4, 2),
                ("ip6-next", l3 + 6, 1),
                ("ip6-src", l3 + 8 + rng.below(16), 1),
                ("ip6-dst", l3 + 24 + rng.below(16), 1),
            ]);
        } else {
            fields.extend([
                ("ip4-version-ihl", l3, 1),
                ("ip4-tot-len", l3 + 2, 2),
                ("ip4-frag", l3 + 6, 2),
                ("ip4-proto", l3 + 9, 1),
                ("ip4-checksum", l3 + 10, 2),
                ("ip4-src", l3 + 12 + rng.below(4), 1),
                ("ip4-dst", l3 + 16 + rng.below(4), 1),
            ]);
            if l.l3_len > 20 {
                fields.push(("ip4-option", l3 + 20 + rng.below(l.l3_len - 20), 1));
            }
        }
    }
    for &e in &l.exts {
        fields.push(("ext-next", e, 1));
        fields.push(("ext-len", e + 1, 1));
    }
    if let Some((l4, proto)) = l.l4 {
        fields.extend([("sport", l4, 2), ("dport", l4 + 2, 2)]);
        match proto {
            6 => fields.extend([("tcp-doff", l4 + 12, 1), ("tcp-flags", l4 + 13, 1)]),
            17 => fields.extend([("udp-len", l4 + 4, 2), ("udp-checksum", l4 + 6, 2)]),
            _ => fields.extend([("icmp-type", l4, 1), ("icmp-code", l4 + 1, 1)]),
        }
    }
    if let Some((q, v6)) = l.quoted {
        let (src, dst, proto, ports) = if v6 {
            (q + 8, q + 24, q + 6, q + 40)
        } else {
            (q + 12, q + 16, q + 9, q + 20)
        };
        let n = if v6 { 16 } else { 4 };
        fields.extend([
            ("quoted-version", q, 1),
            ("quoted-src", src + rng.below(n), 1),
            ("quoted-dst", dst + rng.below(n), 1),
            ("quoted-proto", proto, 1),
            ("quoted-sport", ports, 2),
            ("quoted-dport", ports + 2, 2),
        ]);
    }
    let &(name, at, bytes) = rng.pick(&fields);
    let old = get(f, at, bytes);
    let random = rng.next_u64() as u32;
    let new = match name {
        // Protocol numbers and EtherTypes worth meeting.
        "ether-type" | "vlan-type" => *rng.pick(&[
            0x0800,
            0x86dd,
            0x8100,
            0x88a8,
            0x0806,
            0x9100,
            old ^ 1,
            random & 0xffff,
        ]),
        "ip4-proto" | "ip6-next" | "ext-next" | "quoted-proto" => *rng.pick(&[
            6,
            17,
            1,
            58,
            0,
            43,
            44,
            60,
            51,
            59,
            135,
            139,
            253,
            random & 0xff,
        ]),
        // VLANs the interface balances (0, 42, 100) and others.
        "vlan-tci" => (old & 0xf000) | *rng.pick(&[0, 42, 100, 7, 4095, random & 0xfff]),
        "icmp-type" => *rng.pick(&[3, 1, 2, 0, 8, 11, 128, 135, random & 0xff]),
        "quoted-version" => (*rng.pick(&[4u32, 6, 4, 6, 0]) << 4) | rng.below(16) as u32,
        "ip4-version-ihl" => (*rng.pick(&[4u32, 4, 4, 6, 5, 0]) << 4) | rng.below(16) as u32,
        "ip6-version" => (*rng.pick(&[6u32, 6, 4, 0]) << 4) | (old & 0x0f),
        "tcp-doff" => ((rng.below(16) as u32) << 4) | (old & 0x0f),
        "tcp-flags" => rng.byte() as u32,
        "dst-mac" => *rng.pick(&[0xaa, 0x77, old ^ 1]),
        _ => value(rng, old, bytes as u32 * 8),
    };
    put(f, at, bytes, new);
    name
}

/// Recomputes the IPv4 header checksum, if the header is whole.
pub fn fix_ipv4_checksum(f: &mut [u8], l: &Layout) {
    let Some((l3, false)) = l.l3 else {
        return;
    };
    if l3 + 20 > f.len() || f[l3] >> 4 != 4 {
        return;
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    if ihl < 20 || l3 + ihl > f.len() {
        return;
    }
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let sum = crate::packet::checksum(&f[l3..l3 + ihl], 0);
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}
