//! Firewall stage, run before any balancing work: ordered rules (first match wins), then the
//! source block list. Each stage costs one flag test when it has nothing configured.
//!
//! Rules apply to every IP packet; the block list and the VIP policy guard the VIP addresses.
//! An established flow is checked once per firewall generation (its first packet, and its
//! next packet after any firewall change), so steady-state traffic skips the stage.

use foobar_lb_common::{
    verdict, vip_filter_bit, Addr, BlockKey4, BlockKey6, FlowKey, Rule, ACTION_DROP, FAMILY_V4,
    FW_HAS_BLOCKLIST, FW_HAS_RULES, FW_HAS_VIP_POLICY, FW_IDX_BLOCKLIST_SLOT, FW_IDX_FLAGS,
    FW_IDX_GEN, MAX_PREFIX_LENS, MAX_RULES, PROTO_ICMP_ANY, VIP_FILTER_WORDS, VIP_POLICY_DROP,
};

use crate::{
    maps::{
        BLOCKLIST4, BLOCKLIST6, BLOCK_LENS, FW_FLAGS, FW_RULES, RULE_STATS, VIP_FILTER, VIP_POLICY,
    },
    parse::PROTO_UNKNOWN,
    stats,
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// The firewall's control words (flags, live block-list buffer, generation), read once per
/// packet. The value may be read while userspace rewrites it in place; userspace publishes the
/// flags and buffer before the generation that covers them (`fw_word_writes`), so whatever
/// mix a packet reads, a new generation comes with the new flags and buffer.
#[derive(Clone, Copy)]
pub struct State {
    pub flags: u32,
    pub slot: u32,
    pub gen: u32,
}

#[inline(always)]
pub fn state() -> State {
    match FW_FLAGS.get(0) {
        Some(w) => State {
            flags: w[FW_IDX_FLAGS as usize],
            slot: w[FW_IDX_BLOCKLIST_SLOT as usize] & 1,
            gen: w[FW_IDX_GEN as usize],
        },
        None => State {
            flags: 0,
            slot: 0,
            gen: 0,
        },
    }
}

/// Rules only, for traffic not addressed to a VIP.
#[inline(always)]
pub fn filter_rules(fw: State, key: &FlowKey, bytes: u64) -> Result<(), u32> {
    if fw.flags & FW_HAS_RULES != 0 && rules::<false>(key, bytes) == Some(ACTION_DROP) {
        return Err(verdict::DROP_FW_RULE);
    }
    Ok(())
}

/// Rules, then the block list. `Err(reason)` if the packet must be dropped. `key` carries zero
/// ports for non-TCP/UDP.
#[inline(always)]
pub fn filter(fw: State, key: &FlowKey, bytes: u64) -> Result<(), u32> {
    if fw.flags & FW_HAS_RULES != 0 {
        if let Some(action) = rules::<false>(key, bytes) {
            return if action == ACTION_DROP {
                Err(verdict::DROP_FW_RULE)
            } else {
                // An allow rule is authoritative: it also overrides the block list.
                Ok(())
            };
        }
    }
    if fw.flags & FW_HAS_BLOCKLIST != 0 && blocked(fw.slot, key) {
        return Err(verdict::DROP_BLOCKLIST);
    }
    Ok(())
}

/// The check for an unbalanceable packet (main.rs): rules as [`filter_rules`] when `whole`
/// (its protocol and ports are real); else for a packet whose ports are unknown (a later
/// fragment, an L4 header out of reach), and maybe its protocol too (`parse::PROTO_UNKNOWN`).
/// Such a packet cannot prove it is not what a rule on ports or protocol describes, so a
/// `drop` rule that needs either matches it, and an `allow` rule matches it only on fields it
/// has (addresses, and a protocol it is known to carry): no fragmentation or header chain
/// slips past a drop rule, and an allow rule on addresses still admits it. Then the block list
/// if `blocklist` (the packet is for a VIP).
#[inline(always)]
pub fn filter_suspect(
    fw: State,
    key: &FlowKey,
    whole: bool,
    blocklist: bool,
    bytes: u64,
) -> Result<(), u32> {
    if fw.flags & FW_HAS_RULES != 0 {
        let action = if whole {
            rules::<false>(key, bytes)
        } else {
            rules::<true>(key, bytes)
        };
        match action {
            Some(ACTION_DROP) => return Err(verdict::DROP_FW_RULE),
            Some(_) => return Ok(()),
            None => {}
        }
    }
    if blocklist && fw.flags & FW_HAS_BLOCKLIST != 0 && blocked(fw.slot, key) {
        return Err(verdict::DROP_BLOCKLIST);
    }
    Ok(())
}

/// The action of the first matching rule, if any; counts the match. `OPAQUE`: the packet's
/// ports are unknown ([`matches_opaque`]).
#[inline(always)]
fn rules<const OPAQUE: bool>(key: &FlowKey, bytes: u64) -> Option<u8> {
    let set = unsafe { FW_RULES.get(0u32) }?;
    let len = set.len as usize;
    let dport = u16::from_be(key.dport);
    for i in 0..MAX_RULES {
        if i >= len {
            break;
        }
        let r = &set.rules[i];
        let hit = if OPAQUE {
            matches_opaque(r, key)
        } else {
            matches(r, key, dport)
        };
        if hit {
            stats::bump(RULE_STATS.get_ptr_mut(i as u32), bytes);
            return Some(r.action);
        }
    }
    None
}

#[inline(always)]
fn prefix_match(addr: &Addr, net: &Addr, mask: &Addr) -> bool {
    ((addr[0] ^ net[0]) & mask[0])
        | ((addr[1] ^ net[1]) & mask[1])
        | ((addr[2] ^ net[2]) & mask[2])
        | ((addr[3] ^ net[3]) & mask[3])
        == 0
}

#[inline(always)]
fn matches(r: &Rule, key: &FlowKey, dport: u16) -> bool {
    if r.family != 0 && r.family != key.family {
        return false;
    }
    let proto_ok = match r.proto {
        0 => true,
        PROTO_ICMP_ANY => key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6,
        p => p == key.proto,
    };
    proto_ok
        && dport >= r.port_lo
        && dport <= r.port_hi
        && prefix_match(&key.src, &r.src, &r.src_mask)
        && prefix_match(&key.dst, &r.dst, &r.dst_mask)
}

/// [`matches`] for a packet with unknown ports (see [`filter_suspect`]).
#[inline(always)]
fn matches_opaque(r: &Rule, key: &FlowKey) -> bool {
    if (r.family != 0 && r.family != key.family)
        || !prefix_match(&key.src, &r.src, &r.src_mask)
        || !prefix_match(&key.dst, &r.dst, &r.dst_mask)
    {
        return false;
    }
    if r.proto == 0 {
        // A rule on addresses alone (rules name ports only with a protocol).
        return true;
    }
    let known = key.proto != PROTO_UNKNOWN;
    let proto_ok = match r.proto {
        PROTO_ICMP_ANY => key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6,
        p => p == key.proto,
    };
    if known && !proto_ok {
        return false;
    }
    // Exactly matched only with a known protocol and no port range; otherwise it may be what
    // the rule describes, which is enough to drop it and not enough to allow it.
    (known && r.port_lo == 0 && r.port_hi == u16::MAX) || r.action == ACTION_DROP
}

/// Whether the source is in the live block list: one hash lookup per distinct prefix length
/// (longest first), whatever the number of prefixes.
#[inline(always)]
fn blocked(slot: u32, key: &FlowKey) -> bool {
    let Some(lens) = BLOCK_LENS.get(slot) else {
        return false;
    };
    if key.family == FAMILY_V4 {
        for p in lens.v4.iter().take((lens.n4 as usize).min(MAX_PREFIX_LENS)) {
            let k = BlockKey4 {
                addr: key.src[0] & p.mask[0],
                len: p.len,
                slot: slot as u8,
                _pad: [0; 2],
            };
            if unsafe { BLOCKLIST4.get(k) }.is_some() {
                return true;
            }
        }
    } else {
        for p in lens.v6.iter().take((lens.n6 as usize).min(MAX_PREFIX_LENS)) {
            let k = BlockKey6 {
                addr: [
                    key.src[0] & p.mask[0],
                    key.src[1] & p.mask[1],
                    key.src[2] & p.mask[2],
                    key.src[3] & p.mask[3],
                ],
                len: p.len,
                slot: slot as u8,
                _pad: [0; 2],
            };
            if unsafe { BLOCKLIST6.get(k) }.is_some() {
                return true;
            }
        }
    }
    false
}

/// Whether `dst` may be a VIP: a clear filter bit proves it is not.
#[inline(always)]
pub fn maybe_vip(dst: &Addr, family: u8) -> bool {
    let bit = vip_filter_bit(dst, family) as usize;
    match VIP_FILTER.get(0) {
        Some(f) => f[(bit >> 6) & (VIP_FILTER_WORDS - 1)] & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// For traffic to a VIP address that matched no service: drop it if the ingress interface's
/// policy says so. Only called when `FW_HAS_VIP_POLICY` is set and the address is a VIP.
#[inline(always)]
pub fn vip_policy_drops(fw: State, ifindex: u32) -> bool {
    fw.flags & FW_HAS_VIP_POLICY != 0
        && unsafe { VIP_POLICY.get(ifindex) }.is_some_and(|&p| p == VIP_POLICY_DROP)
}
