//! Firewall maps: control words, rules, double-buffered block lists, VIP prefilter and policy.

use aya::maps::{Array, HashMap, MapData};
use foobar_lb_common::{
    encode_addr, prefix_mask, vip_filter_bit, BlockKey4, BlockKey6, BufferSlot, Counters, FwWords,
    PrefixLen, PrefixLens, RuleSet, VipFilter, VipKey, FAMILY_V4, FAMILY_V6, FW_HAS_BLOCKLIST,
    FW_HAS_RULES, FW_IDX_BLOCKLIST_SLOT, FW_IDX_FLAGS, FW_IDX_GEN, MAP_BLOCKLIST4, MAP_BLOCKLIST6,
    MAP_BLOCK_LENS, MAP_FW_FLAGS, MAP_FW_RULES, MAP_RULE_STATS, MAP_VIPS, MAP_VIP_FILTER,
    MAP_VIP_POLICY, MAX_BLOCKED, MAX_PREFIX_LENS, VIP_FILTER_WORDS, VIP_POLICY_ALLOW,
    VIP_POLICY_DROP,
};

use super::{map_err, Dataplane, DataplaneError};

impl Dataplane {
    fn fw_words(&self) -> Result<FwWords, DataplaneError> {
        let map = self.map(MAP_FW_FLAGS)?;
        let arr: Array<&MapData, FwWords> = Array::try_from(map).map_err(map_err(MAP_FW_FLAGS))?;
        arr.get(&0, 0).map_err(map_err(MAP_FW_FLAGS))
    }

    /// The firewall generation the data plane runs under (see `FW_IDX_GEN`).
    pub fn fw_generation(&self) -> Result<u32, DataplaneError> {
        Ok(self.fw_words()?[FW_IDX_GEN as usize])
    }

    /// Changes the firewall control words (the daemon is their only writer), in the order
    /// [`fw_word_writes`] gives.
    fn update_fw_words(&mut self, f: impl FnOnce(&mut FwWords)) -> Result<(), DataplaneError> {
        let before = self.fw_words()?;
        let mut after = before;
        f(&mut after);
        for w in fw_word_writes(before, after) {
            self.array::<FwWords>(MAP_FW_FLAGS)?
                .set(0, w, 0)
                .map_err(map_err(MAP_FW_FLAGS))?;
        }
        Ok(())
    }

    /// Sets or clears one `FW_HAS_*` bit.
    pub fn set_fw_flag(&mut self, bit: u32, on: bool) -> Result<(), DataplaneError> {
        self.update_fw_words(|w| {
            let f = &mut w[FW_IDX_FLAGS as usize];
            *f = if on { *f | bit } else { *f & !bit };
        })
    }

    /// Replaces the whole rule list in one map update, then switches rule evaluation on or off
    /// and bumps the generation. The same list again changes nothing: the daemon writes the rules
    /// on every configuration change (a drain, a new service), and a needless bump would send
    /// every established flow through the firewall again.
    pub fn set_rules(&mut self, set: &RuleSet) -> Result<(), DataplaneError> {
        if self.rules_live(set)? {
            return Ok(());
        }
        if set.len > 0 {
            self.hash::<u32, RuleSet>(MAP_FW_RULES)?
                .insert(0, set, 0)
                .map_err(map_err(MAP_FW_RULES))?;
        }
        self.set_fw_flag(FW_HAS_RULES, set.len > 0)?;
        self.bump_fw_generation()
    }

    /// Whether `set` is what the data plane already evaluates (an empty list: rules are off).
    fn rules_live(&self, set: &RuleSet) -> Result<bool, DataplaneError> {
        let on = self.fw_words()?[FW_IDX_FLAGS as usize] & FW_HAS_RULES != 0;
        if set.len == 0 || !on {
            return Ok(set.len == 0 && !on);
        }
        let map = self.map(MAP_FW_RULES)?;
        let live: HashMap<&MapData, u32, RuleSet> =
            HashMap::try_from(map).map_err(map_err(MAP_FW_RULES))?;
        Ok(live.get(&0, 0).is_ok_and(|l| l == *set))
    }

    pub fn reset_rule_counters(&mut self) -> Result<(), DataplaneError> {
        for i in 0..foobar_lb_common::MAX_RULES as u32 {
            self.reset_counters(MAP_RULE_STATS, i)?;
        }
        Ok(())
    }

    /// Packets/bytes matched per rule index.
    pub fn rule_counters(&self, n: usize) -> Result<Vec<Counters>, DataplaneError> {
        (0..n as u32)
            .map(|i| self.counters(MAP_RULE_STATS, i))
            .collect()
    }

    /// Loads a block list atomically from the data plane's view: fills the idle buffer and its
    /// prefix-length table, then flips the live-buffer word and bumps the firewall generation
    /// (so established flows are checked against the new list). Logs progress for long lists.
    pub fn load_blocklist(&mut self, nets: &[ipnet::IpNet]) -> Result<(), DataplaneError> {
        let lens = prefix_lens(nets)?;
        if nets.len() > MAX_BLOCKED as usize {
            return Err(DataplaneError::BlocklistTooLong { len: nets.len() });
        }
        let live = self.fw_words()?[FW_IDX_BLOCKLIST_SLOT as usize];
        let idle = 1 - live.min(1);
        // Leftovers of an interrupted load in the idle buffer go first.
        self.clear_blocklist_slot(idle as u8)?;
        let slot = idle as u8;
        let v4 = nets.iter().filter_map(|n| match n {
            ipnet::IpNet::V4(n) => Some(BlockKey4 {
                addr: u32::from_ne_bytes(n.network().octets()),
                len: n.prefix_len(),
                slot,
                _pad: [0; 2],
            }),
            _ => None,
        });
        self.write_keys(MAP_BLOCKLIST4, v4, nets.len())?;
        let v6 = nets.iter().filter_map(|n| match n {
            ipnet::IpNet::V6(n) => Some(BlockKey6 {
                addr: encode_addr(n.network().into()).0,
                len: n.prefix_len(),
                slot,
                _pad: [0; 2],
            }),
            _ => None,
        });
        self.write_keys(MAP_BLOCKLIST6, v6, nets.len())?;
        self.array::<PrefixLens>(MAP_BLOCK_LENS)?
            .set(idle, lens, 0)
            .map_err(map_err(MAP_BLOCK_LENS))?;
        // One update: the live buffer, the stage flag and the generation change together.
        self.update_fw_words(|w| {
            w[FW_IDX_BLOCKLIST_SLOT as usize] = idle;
            let f = &mut w[FW_IDX_FLAGS as usize];
            *f = if nets.is_empty() {
                *f & !FW_HAS_BLOCKLIST
            } else {
                *f | FW_HAS_BLOCKLIST
            };
            w[FW_IDX_GEN as usize] = w[FW_IDX_GEN as usize].wrapping_add(1);
        })?;
        // A packet that read the old slot just before the flip finishes within microseconds
        // (XDP runs to completion under RCU); wait well past that, then free the old buffer.
        std::thread::sleep(std::time::Duration::from_millis(10));
        self.clear_blocklist_slot(live.min(1) as u8)
    }

    fn write_keys<K: aya::Pod>(
        &mut self,
        name: &'static str,
        keys: impl Iterator<Item = K>,
        total: usize,
    ) -> Result<(), DataplaneError> {
        let mut list = self.hash::<K, u32>(name)?;
        for (i, k) in keys.enumerate() {
            list.insert(k, 1, 0).map_err(map_err(name))?;
            if (i + 1) % 50_000 == 0 {
                log::info!("block list: {} of {total} prefixes written", i + 1);
            }
        }
        Ok(())
    }

    fn clear_blocklist_slot(&mut self, slot: u8) -> Result<(), DataplaneError> {
        self.clear_slot::<BlockKey4>(MAP_BLOCKLIST4, slot)?;
        self.clear_slot::<BlockKey6>(MAP_BLOCKLIST6, slot)
    }

    fn clear_slot<K: aya::Pod + BufferSlot>(
        &mut self,
        name: &'static str,
        slot: u8,
    ) -> Result<(), DataplaneError> {
        let mut list = self.hash::<K, u32>(name)?;
        let old: Vec<K> = list
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot() == slot)
            .collect();
        for k in &old {
            let _ = list.remove(k);
        }
        Ok(())
    }

    /// Makes every established flow pass the firewall again on its next packet.
    pub fn bump_fw_generation(&mut self) -> Result<(), DataplaneError> {
        self.update_fw_words(|w| w[FW_IDX_GEN as usize] = w[FW_IDX_GEN as usize].wrapping_add(1))
    }

    /// Rewrites the VIP prefilter from the VIP set in the maps (plus `adding`, written just
    /// before it shows up there).
    pub(super) fn write_vip_filter(
        &mut self,
        adding: Option<&VipKey>,
    ) -> Result<(), DataplaneError> {
        let vips: Vec<VipKey> = {
            let map = self.map(MAP_VIPS)?;
            let m: HashMap<&MapData, VipKey, u32> =
                HashMap::try_from(map).map_err(map_err(MAP_VIPS))?;
            m.keys().filter_map(Result::ok).collect()
        };
        let mut filter: VipFilter = [0; VIP_FILTER_WORDS];
        for v in vips.iter().chain(adding) {
            let bit = vip_filter_bit(&v.addr, v.family) as usize;
            filter[bit >> 6] |= 1 << (bit & 63);
        }
        self.array::<VipFilter>(MAP_VIP_FILTER)?
            .set(0, filter, 0)
            .map_err(map_err(MAP_VIP_FILTER))
    }

    /// Sets the policy for VIP traffic matching no service on interface `ifindex`.
    pub fn set_vip_policy(&mut self, ifindex: u32, drop: bool) -> Result<(), DataplaneError> {
        let policy = if drop {
            VIP_POLICY_DROP
        } else {
            VIP_POLICY_ALLOW
        };
        self.hash::<u32, u32>(MAP_VIP_POLICY)?
            .insert(ifindex, policy, 0)
            .map_err(map_err(MAP_VIP_POLICY))
    }
}

/// The writes that take the control words from `before` to `after`, in order.
///
/// An array value is updated in place (the kernel copies it with `memcpy`), so a packet may read
/// the words half-written. A change that bumps the generation is therefore published in two
/// writes: first the new flags and live buffer under the old generation, then the generation.
/// A packet that reads the new generation thus reads the new flags and buffer whatever the copy
/// order, and a flow is never recorded as checked under a generation whose rules and block list
/// it did not meet (a packet that read the old generation only gets its flow checked again).
pub fn fw_word_writes(before: FwWords, after: FwWords) -> Vec<FwWords> {
    let mut writes = Vec::new();
    let mut staged = after;
    staged[FW_IDX_GEN as usize] = before[FW_IDX_GEN as usize];
    if staged != before {
        writes.push(staged);
    }
    if after != staged {
        writes.push(after);
    }
    writes
}

/// The distinct prefix lengths of a list per family, longest first, with their masks.
fn prefix_lens(nets: &[ipnet::IpNet]) -> Result<PrefixLens, DataplaneError> {
    let mut out = PrefixLens::default();
    for (family, v6) in [(FAMILY_V4, false), (FAMILY_V6, true)] {
        let mut lens: Vec<u8> = nets
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .map(|n| n.prefix_len())
            .collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        if lens.len() > MAX_PREFIX_LENS {
            return Err(DataplaneError::TooManyPrefixLengths {
                family: if v6 { 6 } else { 4 },
                lens,
            });
        }
        let slots = if family == FAMILY_V4 {
            &mut out.v4
        } else {
            &mut out.v6
        };
        for (slot, len) in slots.iter_mut().zip(&lens) {
            *slot = PrefixLen {
                mask: prefix_mask(*len, v6),
                len: *len,
                _pad: [0; 3],
            };
        }
        if v6 {
            out.n6 = lens.len() as u32;
        } else {
            out.n4 = lens.len() as u32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use foobar_lb_common::FW_FLAGS_LEN;

    use super::*;

    const GEN: usize = FW_IDX_GEN as usize;

    /// Every intermediate state a packet may read carries either the old generation (its flow
    /// is checked again later) or the final flags and buffer.
    #[test]
    fn a_new_generation_is_never_published_before_the_words_it_covers() {
        let before: FwWords = [FW_HAS_RULES, 0, 7, 0];
        let cases: [FwWords; 4] = [
            [FW_HAS_RULES | FW_HAS_BLOCKLIST, 1, 8, 0], // block list loaded: all three change
            [FW_HAS_RULES, 0, 8, 0],                    // rules replaced: generation only
            [0, 0, 7, 0],                               // a stage switched off, no bump
            before,                                     // nothing
        ];
        for after in cases {
            let writes = fw_word_writes(before, after);
            if after == before {
                assert!(writes.is_empty());
                continue;
            }
            assert_eq!(writes.last(), Some(&after), "{after:?}");
            let mut seen = before;
            for w in &writes {
                // A write changes either the generation or the other words, never both.
                let gen_changed = w[GEN] != seen[GEN];
                let rest_changed = (0..FW_FLAGS_LEN).any(|i| i != GEN && w[i] != seen[i]);
                assert!(!(gen_changed && rest_changed), "{before:?} -> {w:?}");
                if w[GEN] != before[GEN] {
                    let mut final_rest = after;
                    final_rest[GEN] = w[GEN];
                    assert_eq!(*w, final_rest, "new generation with old words");
                }
                seen = *w;
            }
        }
    }
}
