//! Firewall map layouts: ordered rules, source block lists, per-interface VIP policy,
//! per-source rate limits for new flows.

use crate::Addr;

pub const MAP_FW_FLAGS: &str = "FW_FLAGS";
pub const MAP_FW_RULES: &str = "FW_RULES";
pub const MAP_RULE_STATS: &str = "RULE_STATS";
pub const MAP_BLOCKLIST4: &str = "BLOCKLIST4";
pub const MAP_BLOCKLIST6: &str = "BLOCKLIST6";
pub const MAP_BLOCK_LENS: &str = "BLOCK_LENS";
pub const MAP_VIP_POLICY: &str = "VIP_POLICY";
pub const MAP_RATE_BUCKETS: &str = "RATE_BUCKETS";

/// Ordered rules evaluated per packet (first match wins).
pub const MAX_RULES: usize = 32;
/// Prefixes a block list may hold (IPv4 and IPv6 together). The map holds twice as many:
/// the live list and the one being loaded.
pub const MAX_BLOCKED: u32 = 262_144;
/// Distinct prefix lengths per family a block list may use: the per-packet cost is one hash
/// lookup per distinct length, whatever the number of prefixes.
pub const MAX_PREFIX_LENS: usize = 8;
/// Sources tracked by the rate limiter (LRU: an attack cannot exhaust memory).
pub const MAX_RATE_SOURCES: u32 = 65_536;

/// Word indexes of the single [`MAP_FW_FLAGS`] value (`[u32; FW_FLAGS_LEN]`): one lookup reads
/// them all, and each is one aligned word, so a concurrent update never tears a field.
pub const FW_IDX_FLAGS: u32 = 0;
/// Which block-list buffer is live (0 or 1): entries carry their buffer in their key's `slot`.
pub const FW_IDX_BLOCKLIST_SLOT: u32 = 1;
/// Firewall generation, bumped by every rule or block-list change. A flow remembers the
/// generation it was checked under; established flows skip the firewall until it changes.
/// Only firewall changes bump it, and a bump is written after the words it covers.
pub const FW_IDX_GEN: u32 = 2;
pub const FW_FLAGS_LEN: usize = 4;
pub type FwWords = [u32; FW_FLAGS_LEN];

/// Bits of the flags word: a stage whose bit is clear costs nothing per packet.
pub const FW_HAS_RULES: u32 = 1;
pub const FW_HAS_BLOCKLIST: u32 = 2;
pub const FW_HAS_VIP_POLICY: u32 = 4;
/// Not a firewall stage: some service forwards by NAT, so traffic not for a VIP may be a
/// backend's reply to translate (`MAP_NAT_SRC_FILTER`, then `MAP_NAT_REV`). Kept in this word
/// because every packet reads it already: without NAT services the reply check costs one bit
/// test.
pub const FW_HAS_NAT: u32 = 8;
/// Not a firewall stage: some service uses full NAT, so traffic to a SNAT address
/// (`MAP_SNAT_ADDRS`) that is no tracked reply is dropped inside the SNAT port range.
pub const FW_HAS_SNAT: u32 = 16;

pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_DROP: u8 = 2;

/// Rule protocol: 0 = any; 6 TCP, 17 UDP; [`PROTO_ICMP_ANY`] = ICMP or ICMPv6.
pub const PROTO_ICMP_ANY: u8 = 1;

/// One rule. Prefixes are stored with their masks, both as wire-order words, so matching is
/// `(addr ^ rule) & mask == 0` on four words, with no per-packet mask computation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub src: Addr,
    pub src_mask: Addr,
    pub dst: Addr,
    pub dst_mask: Addr,
    /// Destination port range, host byte order, inclusive; 0..=65535 for any.
    pub port_lo: u16,
    pub port_hi: u16,
    /// 0 = any family, else `FAMILY_V4` / `FAMILY_V6`.
    pub family: u8,
    pub proto: u8,
    pub action: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Rule>() == 72);

/// Value of [`MAP_FW_RULES`] (key 0): the whole rule list, replaced in one update.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub len: u32,
    pub _pad: u32,
    pub rules: [Rule; MAX_RULES],
}
const _: () = assert!(core::mem::size_of::<RuleSet>() == 8 + 72 * MAX_RULES);

impl RuleSet {
    pub const EMPTY: RuleSet = RuleSet {
        len: 0,
        _pad: 0,
        rules: [Rule {
            src: [0; 4],
            src_mask: [0; 4],
            dst: [0; 4],
            dst_mask: [0; 4],
            port_lo: 0,
            port_hi: 0,
            family: 0,
            proto: 0,
            action: 0,
            _pad: 0,
        }; MAX_RULES],
    };
}

/// Key of [`MAP_BLOCKLIST4`]: an IPv4 prefix (address masked to its length) in one buffer.
/// Kept to 8 bytes: the key is hashed on every lookup.
///
/// Both buffers share one map per family, so the program looks up a constant map (which the
/// verifier inlines) instead of choosing between two maps at run time (a real helper call).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BlockKey4 {
    /// Wire order.
    pub addr: u32,
    pub len: u8,
    /// Buffer 0 or 1 (see `FW_IDX_BLOCKLIST_SLOT`).
    pub slot: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<BlockKey4>() == 8);

/// Key of [`MAP_BLOCKLIST6`]: an IPv6 prefix in one buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BlockKey6 {
    pub addr: Addr,
    pub len: u8,
    pub slot: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<BlockKey6>() == 20);

/// The buffer a block-list key belongs to.
pub trait BufferSlot {
    fn slot(&self) -> u8;
}

impl BufferSlot for BlockKey4 {
    fn slot(&self) -> u8 {
        self.slot
    }
}

impl BufferSlot for BlockKey6 {
    fn slot(&self) -> u8 {
        self.slot
    }
}

/// One distinct prefix length of a block list, with its mask (wire-order words).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PrefixLen {
    pub mask: Addr,
    pub len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PrefixLen>() == 20);

/// Value of [`MAP_BLOCK_LENS`] (index = buffer): the prefix lengths present per family,
/// longest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PrefixLens {
    pub n4: u32,
    pub n6: u32,
    pub v4: [PrefixLen; MAX_PREFIX_LENS],
    pub v6: [PrefixLen; MAX_PREFIX_LENS],
}
const _: () = assert!(core::mem::size_of::<PrefixLens>() == 8 + 40 * MAX_PREFIX_LENS);

/// Mask of a `len`-bit prefix as wire-order words (`v6`: 128-bit, else 32-bit in word 0).
/// Inlined: the XDP program uses it too, and a BPF-to-BPF call costs more than the loop.
#[inline(always)]
pub fn prefix_mask(len: u8, v6: bool) -> Addr {
    let mut m = [0u32; 4];
    let words = if v6 { 4 } else { 1 };
    let mut left = len as u32;
    for w in m.iter_mut().take(words) {
        let bits = left.min(32);
        *w = if bits == 0 {
            0
        } else {
            (u32::MAX << (32 - bits)).to_be()
        };
        left -= bits;
    }
    m
}

/// Bit of the VIP prefilter for an address: `VIP_FILTER` has this bit set for every VIP, so a
/// clear bit proves a packet is not for a VIP with one array read and no hash lookup.
#[inline(always)]
pub fn vip_filter_bit(addr: &Addr, family: u8) -> u32 {
    let x = addr[0] ^ addr[1].rotate_left(7) ^ addr[2].rotate_left(13) ^ addr[3].rotate_left(19);
    (x ^ family as u32).wrapping_mul(0x9E37_79B1) >> (32 - VIP_FILTER_BITS_LOG2)
}

pub const MAP_VIP_FILTER: &str = "VIP_FILTER";
pub const VIP_FILTER_BITS_LOG2: u32 = 12;
/// The filter as u64 words (4096 bits).
pub const VIP_FILTER_WORDS: usize = 1 << (VIP_FILTER_BITS_LOG2 - 6);
pub type VipFilter = [u64; VIP_FILTER_WORDS];

/// Values of [`MAP_VIP_POLICY`] (keyed by ingress ifindex): what happens to traffic for a VIP
/// address that matches no service.
pub const VIP_POLICY_ALLOW: u32 = 0;
pub const VIP_POLICY_DROP: u32 = 1;
/// Interfaces [`MAP_VIP_POLICY`] can hold a policy for.
pub const MAX_VIP_POLICY_IFACES: u32 = 64;

/// Key of [`MAP_RATE_BUCKETS`]: one token bucket per (service, source address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RateKey {
    pub src: Addr,
    pub service_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RateKey>() == 24);

/// Value of [`MAP_RATE_BUCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Tokens x 1000 (one new flow costs 1000).
    pub milli_tokens: u64,
    /// bpf_ktime_get_ns() of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);

/// Token-bucket refill and spend, shared by the program and host tests. Returns the new bucket
/// and whether the flow may start.
#[inline(always)]
pub fn take_token(b: Bucket, now_ns: u64, rate_per_sec: u32, burst: u32) -> (Bucket, bool) {
    let cap = burst as u64 * 1000;
    let elapsed = now_ns.saturating_sub(b.last_ns);
    // Refill: rate tokens per second = rate milli-tokens per millisecond. Capping `elapsed`
    // first keeps the multiplication from overflowing.
    let full_after_ns = if rate_per_sec == 0 {
        u64::MAX
    } else {
        cap * 1_000_000 / rate_per_sec as u64
    };
    // Only the time actually turned into milli-tokens is consumed: the remainder carries to
    // the next try, so frequent tries at a low rate still refill (1/s tried every 500 us
    // refilled nothing when every try reset the clock).
    let (refill, mut last_ns) = if elapsed >= full_after_ns {
        (cap, now_ns)
    } else {
        let refill = elapsed * rate_per_sec as u64 / 1_000_000;
        (refill, b.last_ns + refill * 1_000_000 / rate_per_sec as u64)
    };
    let mut tokens = b.milli_tokens + refill;
    if tokens >= cap {
        // Full: time spent full earns nothing.
        tokens = cap;
        last_ns = now_ns;
    }
    if tokens >= 1000 {
        (
            Bucket {
                milli_tokens: tokens - 1000,
                last_ns,
            },
            true,
        )
    } else {
        (
            Bucket {
                milli_tokens: tokens,
                last_ns,
            },
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(24, false)[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(prefix_mask(0, false), [0; 4]);
        let m = prefix_mask(48, true);
        assert_eq!(m[0], u32::MAX);
        assert_eq!(m[1].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(&m[2..], &[0, 0]);
        assert_eq!(prefix_mask(128, true), [u32::MAX; 4]);
    }

    #[test]
    fn vip_filter_bits_are_in_range_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..256u32 {
            let b = vip_filter_bit(&[u32::from_ne_bytes([10, 0, 0, i as u8]), 0, 0, 0], 4);
            assert!(b < 1 << VIP_FILTER_BITS_LOG2);
            seen.insert(b);
        }
        assert!(seen.len() > 240, "{}", seen.len());
    }

    #[test]
    fn frequent_tries_at_a_low_rate_still_refill() {
        // 1 new flow per second, burst 1, a try every 500 us for 10 s: the first token plus
        // one per second.
        let mut b = Bucket {
            milli_tokens: 1000,
            last_ns: 0,
        };
        let mut allowed = 0;
        for i in 0..20_000u64 {
            let (nb, ok) = take_token(b, i * 500_000, 1, 1);
            b = nb;
            allowed += ok as u32;
        }
        assert!((10..=11).contains(&allowed), "{allowed} allowed in 10 s");
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let (rate, burst) = (10, 3);
        // A new source starts full.
        let mut b = Bucket {
            milli_tokens: burst as u64 * 1000,
            last_ns: 0,
        };
        let mut allowed = 0;
        for _ in 0..5 {
            let (nb, ok) = take_token(b, 0, rate, burst);
            b = nb;
            allowed += ok as u32;
        }
        assert_eq!(allowed, 3, "burst");
        // 100 ms at 10/s refills one token.
        let (b2, ok) = take_token(b, 100_000_000, rate, burst);
        assert!(ok);
        let (_, ok) = take_token(b2, 100_000_000, rate, burst);
        assert!(!ok);
        // A long pause refills to the cap only.
        let (b3, _) = take_token(b2, u64::MAX / 2, rate, burst);
        assert_eq!(b3.milli_tokens, 2000);
    }
}
