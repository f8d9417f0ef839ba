//! Firewall stage, run before any balancing work: ordered rules (first match wins), then the
//! source block list. Each stage costs one flag test when it has nothing configured.

use aya_ebpf::maps::lpm_trie::Key;
use foobar_lb_common::{
    verdict, Addr, FlowKey, Rule, ACTION_DROP, FAMILY_V4, FAMILY_V6, FW_HAS_BLOCKLIST,
    FW_HAS_RULES, FW_HAS_VIP_POLICY, FW_IDX_BLOCKLIST_SLOT, FW_IDX_FLAGS, MAX_RULES,
    PROTO_ICMP_ANY, VIP_POLICY_DROP,
};

use crate::maps::{
    BLOCK_V4_A, BLOCK_V4_B, BLOCK_V6_A, BLOCK_V6_B, FW_FLAGS, FW_RULES, RULE_STATS, VIP_POLICY,
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

#[inline(always)]
pub fn flags() -> u32 {
    FW_FLAGS.get(FW_IDX_FLAGS).copied().unwrap_or(0)
}

/// `Err(reason)` if the packet must be dropped. `key` carries zero ports for non-TCP/UDP.
#[inline(always)]
pub fn filter(flags: u32, key: &FlowKey, bytes: u64) -> Result<(), u32> {
    if flags & FW_HAS_RULES != 0 {
        if let Some(action) = rules(key, bytes) {
            return if action == ACTION_DROP {
                Err(verdict::DROP_FW_RULE)
            } else {
                // An allow rule is authoritative: it also overrides the block list.
                Ok(())
            };
        }
    }
    if flags & FW_HAS_BLOCKLIST != 0 && blocked(key) {
        return Err(verdict::DROP_BLOCKLIST);
    }
    Ok(())
}

/// The action of the first matching rule, if any; counts the match.
#[inline(always)]
fn rules(key: &FlowKey, bytes: u64) -> Option<u8> {
    let set = unsafe { FW_RULES.get(0u32) }?;
    let len = set.len as usize;
    let dport = u16::from_be(key.dport);
    for i in 0..MAX_RULES {
        if i >= len {
            break;
        }
        let r = &set.rules[i];
        if matches(r, key, dport) {
            if let Some(c) = RULE_STATS.get_ptr_mut(i as u32) {
                unsafe {
                    (*c).packets += 1;
                    (*c).bytes += bytes;
                }
            }
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

/// Longest-prefix match of the source in the live block-list buffer.
#[inline(always)]
fn blocked(key: &FlowKey) -> bool {
    let slot_b = FW_FLAGS.get(FW_IDX_BLOCKLIST_SLOT).copied().unwrap_or(0) != 0;
    if key.family == FAMILY_V4 {
        let k = Key::new(32, key.src[0].to_ne_bytes());
        let list = if slot_b { &BLOCK_V4_B } else { &BLOCK_V4_A };
        list.get(&k).is_some()
    } else if key.family == FAMILY_V6 {
        let s = &key.src;
        let mut data = [0u8; 16];
        data[0..4].copy_from_slice(&s[0].to_ne_bytes());
        data[4..8].copy_from_slice(&s[1].to_ne_bytes());
        data[8..12].copy_from_slice(&s[2].to_ne_bytes());
        data[12..16].copy_from_slice(&s[3].to_ne_bytes());
        let k = Key::new(128, data);
        let list = if slot_b { &BLOCK_V6_B } else { &BLOCK_V6_A };
        list.get(&k).is_some()
    } else {
        false
    }
}

/// For traffic to a VIP address that matched no service: drop it if the ingress interface's
/// policy says so. Only called when `FW_HAS_VIP_POLICY` is set and the address is a VIP.
#[inline(always)]
pub fn vip_policy_drops(flags: u32, ifindex: u32) -> bool {
    flags & FW_HAS_VIP_POLICY != 0
        && unsafe { VIP_POLICY.get(ifindex) }.is_some_and(|&p| p == VIP_POLICY_DROP)
}
