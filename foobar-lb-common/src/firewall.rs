//! Firewall map layouts: ordered rules, source block lists, per-interface VIP policy,
//! per-source rate limits for new flows.

use crate::Addr;

pub const MAP_FW_FLAGS: &str = "FW_FLAGS";
pub const MAP_FW_RULES: &str = "FW_RULES";
pub const MAP_RULE_STATS: &str = "RULE_STATS";
pub const MAP_BLOCK_V4_A: &str = "BLOCK_V4_A";
pub const MAP_BLOCK_V4_B: &str = "BLOCK_V4_B";
pub const MAP_BLOCK_V6_A: &str = "BLOCK_V6_A";
pub const MAP_BLOCK_V6_B: &str = "BLOCK_V6_B";
pub const MAP_VIP_POLICY: &str = "VIP_POLICY";
pub const MAP_RATE_BUCKETS: &str = "RATE_BUCKETS";

/// Ordered rules evaluated per packet (first match wins).
pub const MAX_RULES: usize = 32;
/// Capacity of each block-list trie (per family, per buffer).
pub const MAX_BLOCKED: u32 = 262_144;
/// Sources tracked by the rate limiter (LRU: an attack cannot exhaust memory).
pub const MAX_RATE_SOURCES: u32 = 65_536;

/// Indexes of [`MAP_FW_FLAGS`] (an array of u32: each read is one aligned word).
pub const FW_IDX_FLAGS: u32 = 0;
/// Which block-list buffer is live: 0 = `_A` maps, 1 = `_B` maps.
pub const FW_IDX_BLOCKLIST_SLOT: u32 = 1;
pub const FW_FLAGS_LEN: u32 = 2;

/// Bits of the flags word: a stage whose bit is clear costs nothing per packet.
pub const FW_HAS_RULES: u32 = 1;
pub const FW_HAS_BLOCKLIST: u32 = 2;
pub const FW_HAS_VIP_POLICY: u32 = 4;

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

/// Values of [`MAP_VIP_POLICY`] (keyed by ingress ifindex): what happens to traffic for a VIP
/// address that matches no service.
pub const VIP_POLICY_ALLOW: u32 = 0;
pub const VIP_POLICY_DROP: u32 = 1;

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
    let refill = if elapsed >= full_after_ns {
        cap
    } else {
        elapsed * rate_per_sec as u64 / 1_000_000
    };
    let tokens = core::cmp::min(cap, b.milli_tokens + refill);
    if tokens >= 1000 {
        (
            Bucket {
                milli_tokens: tokens - 1000,
                last_ns: now_ns,
            },
            true,
        )
    } else {
        (
            Bucket {
                milli_tokens: tokens,
                last_ns: now_ns,
            },
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
