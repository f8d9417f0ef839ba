//! Schedulers: how a service's active backends are laid out in the slots the data plane picks
//! from for a new flow (`foobar-lb-ebpf/src/select.rs` indexes them; it never needs to know
//! which scheduler built them). A new scheduler is a variant here plus its slot builder.

use std::net::IpAddr;

use foobar_lb_common::{BackendSet, MAX_SLOTS, RR_SLOTS, SVC_MAGLEV};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Weighted round robin: the data plane walks the slots with one shared atomic cursor.
    #[default]
    RoundRobin,
    /// Weighted Maglev consistent hashing over a table of `table_size` (a prime) slots: the
    /// data plane picks slot `flow_hash % table_size`, so every balancer with the same backends
    /// sends a 5-tuple to the same one, and a change of backends moves few flows.
    Maglev { table_size: u32 },
}

/// A backend as a scheduler sees it: its id, weight, and address (its identity: Maglev places
/// a backend by its address, so the table does not depend on ids or listing order).
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub id: u32,
    pub weight: u32,
    pub addr: IpAddr,
}

impl Scheduler {
    /// The slots for `members`.
    pub fn slots(self, members: &[Member]) -> Box<BackendSet> {
        match self {
            Scheduler::RoundRobin => weighted_round_robin(members),
            Scheduler::Maglev { table_size } => maglev(members, table_size as usize),
        }
    }

    /// The `ServiceInfo::flags` bits that tell the data plane how to pick a slot.
    pub fn flags(self) -> u32 {
        match self {
            Scheduler::RoundRobin => 0,
            Scheduler::Maglev { .. } => SVC_MAGLEV,
        }
    }
}

/// An empty set on the heap (it is 256 KiB: not for the stack).
fn empty_set() -> Box<BackendSet> {
    Box::new(BackendSet::EMPTY)
}

/// Maglev table population (Eisenbud et al., NSDI 2016), weighted: each backend walks its own
/// permutation of the table (offset and skip from two hashes of its address) and takes the
/// next free slot on its turn; a backend of weight w takes w turns for every `max weight`
/// rounds. Members are ordered by address first, so the table depends only on the set.
fn maglev(members: &[Member], m: usize) -> Box<BackendSet> {
    let mut set = empty_set();
    if members.is_empty() || m == 0 || m > MAX_SLOTS {
        return set;
    }
    let mut order: Vec<&Member> = members.iter().collect();
    order.sort_by_key(|b| (b.addr, b.id));
    let perm: Vec<(usize, usize)> = order
        .iter()
        .map(|b| {
            let offset = (fnv1a(&b.addr, 0x5a) % m as u64) as usize;
            let skip = (fnv1a(&b.addr, 0xa5) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let wmax = order
        .iter()
        .map(|b| b.weight.max(1) as u64)
        .max()
        .unwrap_or(1);
    const EMPTY: u32 = u32::MAX;
    let table = &mut set.slots[..m];
    table.fill(EMPTY);
    let mut next = vec![0usize; order.len()];
    let mut filled = 0;
    let mut round: u64 = 0;
    while filled < m {
        for (i, b) in order.iter().enumerate() {
            let w = b.weight.max(1) as u64;
            // Turns in proportion to weight: this round counts for b if it crosses a multiple.
            if (round + 1) * w / wmax == round * w / wmax {
                continue;
            }
            let (offset, skip) = perm[i];
            loop {
                let c = (offset + next[i] * skip) % m;
                next[i] += 1;
                if table[c] == EMPTY {
                    table[c] = b.id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
        round += 1;
    }
    set.len = m as u32;
    set
}

/// FNV-1a (64-bit) of an address and a seed byte: stable across builds and machines, which a
/// table every balancer must compute alike needs (std's hashers promise neither).
fn fnv1a(addr: &IpAddr, seed: u8) -> u64 {
    let bytes: Vec<u8> = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(seed).chain(bytes) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Weight w gives w slots when the weights fit; otherwise each backend's share of the slots is
/// apportioned (at least one each, every share within one slot of its ideal). The slots are
/// then interleaved by smooth weighted round-robin (as nginx does) so a heavy backend does not
/// take its turns in a burst.
fn weighted_round_robin(members: &[Member]) -> Box<BackendSet> {
    let backends: Vec<(u32, u32)> = members.iter().map(|m| (m.id, m.weight)).collect();
    let backends = &backends[..];
    let mut set = empty_set();
    let counts = apportion(backends, RR_SLOTS);
    let n: usize = counts.iter().sum();
    let weights: Vec<i64> = counts.iter().map(|&c| c as i64).collect();
    let sum = n as i64;
    let mut current = vec![0i64; backends.len()];
    for slot in set.slots.iter_mut().take(n) {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..backends.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("n > 0 implies a backend");
        current[best] -= sum;
        *slot = backends[best].0;
    }
    set.len = n as u32;
    set
}

/// Slots per backend: the weights themselves when they fit in `slots`, else a largest-remainder
/// apportionment of `slots` with a floor of one slot per backend.
fn apportion(backends: &[(u32, u32)], slots: usize) -> Vec<usize> {
    let weights: Vec<u64> = backends.iter().map(|&(_, w)| w.max(1) as u64).collect();
    let total: u64 = weights.iter().sum();
    if total <= slots as u64 {
        return weights.iter().map(|&w| w as usize).collect();
    }
    // Ideal shares in units of 1/total slot, to stay in integers.
    let ideal: Vec<u64> = weights.iter().map(|&w| w * slots as u64).collect();
    let mut counts: Vec<usize> = ideal
        .iter()
        .map(|&q| ((q / total) as usize).max(1))
        .collect();
    let mut assigned: usize = counts.iter().sum();
    // Too few: the largest remainders get one more (each at most once).
    let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(ideal[i] % total));
    for &i in &by_remainder {
        if assigned >= slots {
            break;
        }
        if (counts[i] as u64) * total <= ideal[i] {
            counts[i] += 1;
            assigned += 1;
        }
    }
    // Too many (the floor of one slot lifted tiny shares): take from whoever is furthest above
    // its ideal, never below one.
    while assigned > slots {
        let i = (0..counts.len())
            .filter(|&i| counts[i] > 1)
            .max_by_key(|&i| counts[i] as u64 * total - ideal[i].min(counts[i] as u64 * total))
            .expect("more slots than backends");
        counts[i] -= 1;
        assigned -= 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members from (id, weight), each with an address of its own.
    fn members(backends: &[(u32, u32)]) -> Vec<Member> {
        backends
            .iter()
            .map(|&(id, weight)| Member {
                id,
                weight,
                addr: IpAddr::from([10, 1, (id >> 8) as u8, id as u8]),
            })
            .collect()
    }

    #[test]
    fn weighted_slots_are_proportional_and_interleaved() {
        let rr = Scheduler::RoundRobin;
        let set = rr.slots(&members(&[(1, 3), (2, 1)]));
        assert_eq!(&set.slots[..set.len as usize], &[1, 1, 2, 1]);
        assert_eq!(rr.slots(&[]).len, 0);
    }

    /// Slots per id in a built set.
    fn shares(set: &BackendSet) -> std::collections::HashMap<u32, usize> {
        let mut m = std::collections::HashMap::new();
        for &id in &set.slots[..set.len as usize] {
            *m.entry(id).or_default() += 1;
        }
        m
    }

    /// Every backend gets a slot, and each share is within one slot of its ideal.
    fn assert_fair(backends: &[(u32, u32)]) {
        let set = Scheduler::RoundRobin.slots(&members(backends));
        let n = set.len as f64;
        let total: f64 = backends.iter().map(|&(_, w)| w as f64).sum();
        let got = shares(&set);
        for &(id, w) in backends {
            let have = got.get(&id).copied().unwrap_or(0);
            assert!(have >= 1, "backend {id} (weight {w}) has no slot");
            let ideal = w as f64 * n / total;
            assert!(
                (have as f64 - ideal).abs() < 1.0 + 1e-9,
                "backend {id}: {have} slots, ideal {ideal:.2}"
            );
        }
    }

    #[test]
    fn every_backend_gets_its_share_whatever_the_weights() {
        // 200 of weight 1 and one of weight 100: with 256 slots, 20 of them got none.
        let mut b: Vec<(u32, u32)> = (1..=200).map(|id| (id, 1)).collect();
        b.push((201, 100));
        assert_fair(&b);
        // A full service at the highest weights, one tiny backend among them.
        let mut b: Vec<(u32, u32)> = (1..=255).map(|id| (id, 256)).collect();
        b.push((256, 1));
        assert_fair(&b);
        // Mixed weights that do not fit: apportioned.
        let b: Vec<(u32, u32)> = (1..=256).map(|id| (id, 1 + (id * 37) % 256)).collect();
        assert_fair(&b);
        let set = Scheduler::RoundRobin.slots(&members(&b));
        assert_eq!(set.len as usize, RR_SLOTS);
        // Two equal heavy backends split evenly.
        let set = Scheduler::RoundRobin.slots(&members(&[(1, 256), (2, 256)]));
        let s = shares(&set);
        assert_eq!((s[&1], s[&2]), (256, 256));
    }

    const M: u32 = 65537;

    fn maglev_shares(ms: &[Member], size: u32) -> std::collections::HashMap<u32, usize> {
        shares(&Scheduler::Maglev { table_size: size }.slots(ms))
    }

    #[test]
    fn maglev_fills_the_table_evenly_whatever_the_order() {
        let ms = members(&(1..=1000).map(|id| (id, 1)).collect::<Vec<_>>());
        let set = Scheduler::Maglev { table_size: M }.slots(&ms);
        assert_eq!(set.len, M);
        let got = shares(&set);
        assert_eq!(got.len(), 1000);
        // Equal weights: every backend takes one slot per round, so shares differ by <= 1.
        let (lo, hi) = (got.values().min().unwrap(), got.values().max().unwrap());
        assert!(hi - lo <= 1, "shares {lo}..{hi}");
        // The same set listed in another order (and under other ids) gives the same backends.
        let mut rev = ms.clone();
        rev.reverse();
        let again = Scheduler::Maglev { table_size: M }.slots(&rev);
        assert_eq!(set.slots[..M as usize], again.slots[..M as usize]);
    }

    #[test]
    fn maglev_weights_are_proportional() {
        let ms = members(&[(1, 1), (2, 2), (3, 4)]);
        let got = maglev_shares(&ms, 65537);
        let total = 65537.0;
        for (id, w) in [(1u32, 1.0), (2, 2.0), (3, 4.0)] {
            let share = got[&id] as f64 / total;
            assert!((share - w / 7.0).abs() < 0.01, "backend {id}: {share:.4}");
        }
    }

    /// The share of table slots, among those not held by the removed backend, that change
    /// backend when one of `n` is removed.
    pub fn disruption(n: u32, size: u32) -> f64 {
        let ms = members(&(1..=n).map(|id| (id, 1)).collect::<Vec<_>>());
        let before = Scheduler::Maglev { table_size: size }.slots(&ms);
        let after = Scheduler::Maglev { table_size: size }.slots(&ms[1..]);
        let (mut kept, mut moved) = (0u32, 0u32);
        for (a, b) in before.slots[..size as usize]
            .iter()
            .zip(&after.slots[..size as usize])
        {
            if *a == ms[0].id {
                continue;
            }
            kept += 1;
            if a != b {
                moved += 1;
            }
        }
        moved as f64 / kept as f64
    }

    #[test]
    fn removing_one_of_1000_backends_moves_few_other_flows() {
        let d = disruption(1000, M);
        println!(
            "maglev: {:.2}% of other slots moved when 1 of 1000 left",
            d * 100.0
        );
        // The theoretical minimum is 0; Maglev trades a little disruption for balance.
        assert!(d < 0.02, "{:.2}% moved", d * 100.0);
    }
}
