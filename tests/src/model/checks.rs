//! Checks every packet to a VIP must pass (README "Packet handling", issue 9's L3/L4 sanity):
//! IPv4 header checksum and source-route options, TCP flag combinations, martian sources.

use std::net::IpAddr;

use foobar_lb_common::verdict;

/// Most IPv4 options the program walks (NOPs count); a header with more is malformed.
pub const MAX_IPV4_OPTIONS: usize = 4;

/// The IPv4 header at `l3` (whole in the frame: the parser checked): options first (a
/// source route, or options the walk cannot finish), then the header checksum.
pub fn ipv4_header(f: &[u8], l3: usize) -> Result<(), u32> {
    let ihl = (f[l3] & 0x0f) as usize * 4;
    if ihl > 20 {
        source_route(f, l3 + 20, ihl - 20)?;
    }
    if crate::packet::checksum(&f[l3..l3 + ihl], 0) != 0 {
        return Err(verdict::DROP_BAD_CHECKSUM);
    }
    Ok(())
}

/// Walks the options for LSRR (131) / SSRR (137). Each step reads (kind, length) as a pair, so
/// a step at the frame's last byte is malformed.
fn source_route(f: &[u8], off: usize, len: usize) -> Result<(), u32> {
    let mut at = 0;
    for _ in 0..MAX_IPV4_OPTIONS {
        if at >= len {
            return Ok(());
        }
        if off + at + 2 > f.len() {
            return Err(verdict::DROP_MALFORMED);
        }
        let (kind, olen) = (f[off + at], f[off + at + 1]);
        match kind {
            0 => return Ok(()),
            1 => at += 1,
            0x83 | 0x89 => return Err(verdict::DROP_SOURCE_ROUTE),
            _ if olen < 2 => return Err(verdict::DROP_MALFORMED),
            _ => at += olen as usize,
        }
    }
    if at == len {
        Ok(())
    } else {
        Err(verdict::DROP_MALFORMED)
    }
}

/// Flag combinations Linux conntrack accepts in some state (PSH, ECE, CWR ignored).
pub fn tcp_flags_valid(flags: u8) -> bool {
    const SYN: u8 = 0x02;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    const URG: u8 = 0x20;
    let f = flags & (FIN | SYN | RST | ACK | URG);
    [
        SYN,
        SYN | URG,
        SYN | ACK,
        RST,
        RST | ACK,
        FIN | ACK,
        FIN | ACK | URG,
        ACK,
        ACK | URG,
    ]
    .contains(&f)
}

/// Sources no client has: IPv4 0/8, 127/8, 224/4, 240/4 (with 255.255.255.255); IPv6 ::,
/// ::1, ff00::/8, ::ffff:0:0/96.
pub fn martian(src: IpAddr) -> bool {
    match src {
        IpAddr::V4(a) => {
            let o = a.octets()[0];
            o == 0 || o == 127 || o >= 224
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.to_ipv4_mapped().is_some()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_conntrack_judges_them() {
        for ok in [0x02, 0xc2, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x30] {
            assert!(tcp_flags_valid(ok), "{ok:#x}");
        }
        for bad in [0x00, 0x01, 0x03, 0x06, 0x05, 0x29, 0x3f, 0x13, 0x08] {
            assert!(!tcp_flags_valid(bad), "{bad:#x}");
        }
    }

    #[test]
    fn martians() {
        for m in [
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(martian(m.parse().unwrap()), "{m}");
        }
        for ok in [
            "10.0.0.1",
            "223.255.255.255",
            "fd00::1",
            "::2",
            "2001:db8::1",
        ] {
            assert!(!martian(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn options_walk() {
        let hdr = |opts: &[u8]| {
            let mut f = vec![0u8; 14];
            f.push(0x45 + (opts.len() / 4) as u8);
            f.extend([0u8; 19]);
            f.extend(opts);
            f.extend([0u8; 20]);
            f
        };
        let walk = |opts: &[u8]| source_route(&hdr(opts), 34, opts.len());
        assert_eq!(walk(&[1, 1, 1, 68, 5, 5, 0, 0]), Ok(()));
        assert_eq!(walk(&[7, 7, 4, 0, 0, 0, 0, 0]), Ok(()));
        assert_eq!(
            walk(&[1, 0x89, 6, 4, 10, 0, 0, 1]),
            Err(verdict::DROP_SOURCE_ROUTE)
        );
        assert_eq!(walk(&[68, 1, 0, 0]), Err(verdict::DROP_MALFORMED));
        // Eight NOPs: more options than the walk takes.
        assert_eq!(walk(&[1; 8]), Err(verdict::DROP_MALFORMED));
        assert_eq!(walk(&[1; 4]), Ok(()));
    }
}
