//! Internet checksum helpers (RFC 1071) with incremental updates (RFC 1624), shared by the XDP
//! program's rewrites and host-side tests. Pure functions on `u16` words: no packet access, so
//! they are unit-tested here against a full recomputation.
//!
//! Words are 16-bit values in network byte order read as native `u16`s (as they sit in the
//! packet); the one's-complement sum is byte-order independent, so the results can be stored
//! back without swapping.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`:
/// RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, which (unlike eqn. 2) never yields -0 for a
/// non-zero sum.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// As [`replace16`] for a 32-bit field (an IPv4 address), as two words.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = !check as u32
        + !(old as u16) as u32
        + !((old >> 16) as u16) as u32
        + (new as u16) as u32
        + (new >> 16);
    !fold(sum)
}

/// As [`replace32`] for an address of `words` 32-bit words (1 for IPv4, 4 for IPv6).
#[inline(always)]
pub fn replace_addr(check: u16, old: &[u32; 4], new: &[u32; 4], words: usize) -> u16 {
    let mut c = check;
    let mut i = 0;
    while i < words && i < 4 {
        c = replace32(c, old[i], new[i]);
        i += 1;
    }
    c
}

/// The change of one 16-bit word from `old` to `new`, as a one's-complement addend
/// (`~m + m'`): sums of such changes (a few dozen at most) are applied at once by [`apply`].
#[inline(always)]
pub fn delta16(old: u16, new: u16) -> u32 {
    !old as u32 + new as u32
}

/// As [`delta16`] for a 32-bit field (two words).
#[inline(always)]
pub fn delta32(old: u32, new: u32) -> u32 {
    !(old as u16) as u32 + !((old >> 16) as u16) as u32 + (new as u16) as u32 + (new >> 16)
}

/// The checksum after the changes summed in `delta` ([`delta16`], [`delta32`]): RFC 1624
/// eqn. 3 for several words, `HC' = ~(~HC + sum(~m + m'))`.
#[inline(always)]
pub fn apply(check: u16, delta: u32) -> u16 {
    !fold(!check as u32 + fold(delta) as u32)
}

/// The pseudo-header's sum (RFC 9293 3.1, RFC 768, RFC 8200 8.1) of a TCP or UDP segment of
/// `len` bytes from `src` to `dst` (`words`: 1 for IPv4, 4 for IPv6), neither folded nor
/// inverted. Folded, it is what a sender with checksum offload leaves in the checksum field
/// (the kernel's `CHECKSUM_PARTIAL`: `~csum_tcpudp_magic(.., 0)`) for the last transmitter to
/// add the segment to.
#[inline(always)]
pub fn pseudo(src: &[u32; 4], dst: &[u32; 4], words: usize, proto: u8, len: u32) -> u32 {
    let mut sum = (proto as u16).to_be() as u32
        + (len as u16).to_be() as u32
        + ((len >> 16) as u16).to_be() as u32;
    let mut i = 0;
    while i < words && i < 4 {
        sum += (src[i] as u16) as u32 + (src[i] >> 16) + (dst[i] as u16) as u32 + (dst[i] >> 16);
        i += 1;
    }
    sum
}

/// What the checksum field of a forwarded TCP/UDP segment must become when it arrived holding
/// exactly its pseudo-header's sum, i.e. looked partial. `pseudo` is the sent segment's
/// [`pseudo`] sum, `field` what the field holds now, `sum` the sent segment's bytes (field
/// included) summed, or `None` where they were not (too long to sum in the data plane).
///
/// - The segment sums to a valid full checksum: it was one (a full checksum equals the
///   pseudo-header's sum once in 65,536, and the rewrite updated it correctly): `None`,
///   leave it.
/// - Otherwise it was partial. `keep_partial` (the frame stays the kernel's skb, generic XDP:
///   its `CHECKSUM_PARTIAL` state travels on and whoever transmits it last completes it):
///   the sent pseudo-header's sum, folded, as the sender would have left it. Else (native
///   XDP: the frame reaches its receiver with no checksum state and is verified there): the
///   full checksum, computed from the sum (a UDP checksum of 0 sent as 0xffff).
pub fn complete(
    pseudo: u32,
    field: u16,
    sum: Option<u32>,
    keep_partial: bool,
    udp: bool,
) -> Option<u16> {
    if let Some(sum) = sum {
        if fold(pseudo + fold(sum) as u32) == 0xffff {
            return None;
        }
    }
    if keep_partial {
        return Some(fold(pseudo));
    }
    let sum = sum?;
    // The segment's sum without the field (adding its complement subtracts it).
    let full = !fold(pseudo + fold(sum) as u32 + !field as u32);
    Some(if udp && full == 0 { 0xffff } else { full })
}

/// One's-complement sum of `data` (an odd trailing byte padded with zero), not inverted.
pub fn sum_bytes(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The full checksum of `data` (with its checksum field zeroed), as stored in the header.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the tests need varied headers, not cryptographic ones.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 32) as u32
        }
    }

    fn word(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn put_word(b: &mut [u8], at: usize, w: u16) {
        b[at..at + 2].copy_from_slice(&w.to_ne_bytes());
    }

    /// A 20-byte IPv4 header with a valid checksum at bytes 10..12.
    fn header(rng: &mut Lcg) -> [u8; 20] {
        let mut h = [0u8; 20];
        for b in h.iter_mut() {
            *b = rng.next() as u8;
        }
        put_word(&mut h, 10, 0);
        let c = checksum(&h);
        put_word(&mut h, 10, c);
        h
    }

    #[test]
    fn known_ipv4_header() {
        // RFC 1071 style example: 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h).to_ne_bytes(), [0xb8, 0x61]);
        h[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(checksum(&h), 0, "a header with its checksum sums to zero");
    }

    #[test]
    fn incremental_16_bit_updates_match_full_recomputation() {
        let mut rng = Lcg(1);
        for _ in 0..20_000 {
            let mut h = header(&mut rng);
            // Any word but the checksum itself, to any value (0x0000 and 0xffff included).
            let at = [0, 2, 4, 6, 8, 12, 14, 16, 18][rng.next() as usize % 9];
            let new = match rng.next() % 4 {
                0 => 0,
                1 => 0xffff,
                _ => rng.next() as u16,
            };
            let old = word(&h, at);
            let inc = replace16(word(&h, 10), old, new);
            put_word(&mut h, at, new);
            put_word(&mut h, 10, 0);
            let full = checksum(&h);
            assert_eq!(inc, full, "word {at}: {old:#06x} -> {new:#06x}");
        }
    }

    #[test]
    fn incremental_address_updates_match_full_recomputation() {
        let mut rng = Lcg(2);
        for _ in 0..20_000 {
            let mut h = header(&mut rng);
            let which = if rng.next() & 1 == 0 { 12 } else { 16 };
            let old = u32::from_ne_bytes(h[which..which + 4].try_into().unwrap());
            let new = rng.next();
            let inc = replace32(word(&h, 10), old, new);
            let inc_addr = replace_addr(word(&h, 10), &[old, 0, 0, 0], &[new, 0, 0, 0], 1);
            h[which..which + 4].copy_from_slice(&new.to_ne_bytes());
            put_word(&mut h, 10, 0);
            assert_eq!(inc, checksum(&h));
            assert_eq!(inc_addr, inc);
        }
    }

    #[test]
    fn ipv6_address_update_over_a_pseudo_header_sum() {
        // A UDP checksum covers the addresses through the pseudo-header: changing a 16-byte
        // address incrementally equals recomputing over the new bytes.
        let mut rng = Lcg(3);
        for _ in 0..2_000 {
            let mut data = [0u8; 48];
            for b in data.iter_mut() {
                *b = rng.next() as u8;
            }
            let before = checksum(&data);
            let old: [u32; 4] = core::array::from_fn(|i| {
                u32::from_ne_bytes(data[i * 4..i * 4 + 4].try_into().unwrap())
            });
            let new: [u32; 4] = core::array::from_fn(|_| rng.next());
            for (i, w) in new.iter().enumerate() {
                data[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            assert_eq!(replace_addr(before, &old, &new, 4), checksum(&data));
        }
    }

    /// An IPv4 or IPv6 TCP/UDP segment with a random payload: (pseudo-header bytes, segment
    /// bytes with a zero checksum field, offset of the field, src, dst, words).
    fn segment(
        rng: &mut Lcg,
        v6: bool,
        udp: bool,
    ) -> (Vec<u8>, Vec<u8>, usize, [u32; 4], [u32; 4], usize) {
        let words = if v6 { 4 } else { 1 };
        let mut src = [0u32; 4];
        let mut dst = [0u32; 4];
        for i in 0..words {
            src[i] = rng.next();
            dst[i] = rng.next();
        }
        let len = (if udp { 8 } else { 20 }) + rng.next() as usize % 1500;
        let mut seg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let at = if udp { 6 } else { 16 };
        put_word(&mut seg, at, 0);
        let proto = if udp { 17u8 } else { 6 };
        let mut ph = Vec::new();
        for w in src.iter().take(words) {
            ph.extend_from_slice(&w.to_ne_bytes());
        }
        for w in dst.iter().take(words) {
            ph.extend_from_slice(&w.to_ne_bytes());
        }
        if v6 {
            ph.extend_from_slice(&(len as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, proto]);
        } else {
            ph.extend_from_slice(&[0, proto]);
            ph.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (ph, seg, at, src, dst, words)
    }

    #[test]
    fn pseudo_header_sums_match_the_rfcs_byte_layouts() {
        let mut rng = Lcg(11);
        for i in 0..2_000 {
            let (v6, udp) = (i % 2 == 0, i % 3 == 0);
            let (ph, seg, _, src, dst, words) = segment(&mut rng, v6, udp);
            let proto = if udp { 17 } else { 6 };
            assert_eq!(
                fold(pseudo(&src, &dst, words, proto, seg.len() as u32)),
                fold(sum_bytes(&ph, 0)),
                "v6 {v6} udp {udp}"
            );
        }
    }

    #[test]
    fn a_partial_checksum_is_completed_or_kept_partial_and_a_full_one_left_alone() {
        let mut rng = Lcg(12);
        for i in 0..4_000 {
            let (v6, udp) = (i % 2 == 0, i % 3 == 0);
            let (ph, mut seg, at, src, dst, words) = segment(&mut rng, v6, udp);
            let proto = if udp { 17 } else { 6 };
            let p = pseudo(&src, &dst, words, proto, seg.len() as u32);
            let full = !fold(sum_bytes(&seg, sum_bytes(&ph, 0)));
            // Partial, as the sender left it: completed in native mode, kept in generic mode.
            put_word(&mut seg, at, fold(p));
            let s = sum_bytes(&seg, 0);
            let want = if udp && full == 0 { 0xffff } else { full };
            assert_eq!(complete(p, fold(p), Some(s), false, udp), Some(want));
            assert_eq!(complete(p, fold(p), Some(s), true, udp), Some(fold(p)));
            assert_eq!(complete(p, fold(p), None, true, udp), Some(fold(p)));
            assert_eq!(complete(p, fold(p), None, false, udp), None);
            // A full checksum (whatever its value) stays as it is in either mode.
            put_word(&mut seg, at, full);
            let s = sum_bytes(&seg, 0);
            assert_eq!(complete(p, full, Some(s), false, udp), None);
            assert_eq!(complete(p, full, Some(s), true, udp), None);
        }
    }

    #[test]
    fn odd_length_sums_pad_with_zero() {
        assert_eq!(sum_bytes(&[0x12], 0), u16::from_ne_bytes([0x12, 0]) as u32);
        assert_eq!(checksum(&[0xff, 0xff]), 0);
    }

    #[test]
    fn summed_deltas_match_full_recomputation() {
        let mut rng = Lcg(7);
        for _ in 0..20_000 {
            let mut data = [0u8; 40];
            for b in data.iter_mut() {
                *b = rng.next() as u8;
            }
            put_word(&mut data, 10, 0);
            let c = checksum(&data);
            put_word(&mut data, 10, c);
            // Change two 32-bit words and one 16-bit word (never the checksum's).
            let mut delta = 0;
            for at in [12, 24] {
                let old = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                let new = rng.next();
                data[at..at + 4].copy_from_slice(&new.to_ne_bytes());
                delta += delta32(old, new);
            }
            let (old, new) = (word(&data, 30), rng.next() as u16);
            put_word(&mut data, 30, new);
            delta += delta16(old, new);
            let updated = apply(word(&data, 10), delta);
            put_word(&mut data, 10, 0);
            // One's complement has two zeros: compare as sums (0 and 0xffff are equal).
            let full = checksum(&data);
            assert!(
                updated == full || (updated ^ full == 0xffff && (full == 0 || full == 0xffff)),
                "{updated:04x} vs {full:04x}"
            );
        }
    }
}
