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

    /// Changes the firewall control words (the daemon is their only writer).
    fn update_fw_words(&mut self, f: impl FnOnce(&mut FwWords)) -> Result<(), DataplaneError> {
        let mut w = self.fw_words()?;
        let before = w;
        f(&mut w);
        if w != before {
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

    /// Replaces the whole rule list in one map update, then switches rule evaluation on or off.
    pub fn set_rules(&mut self, set: &RuleSet) -> Result<(), DataplaneError> {
        if set.len > 0 {
            self.hash::<u32, RuleSet>(MAP_FW_RULES)?
                .insert(0, set, 0)
                .map_err(map_err(MAP_FW_RULES))?;
        }
        self.set_fw_flag(FW_HAS_RULES, set.len > 0)?;
        self.bump_fw_generation()
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
