//! Schedulers: how a service's active backends are laid out in the slots the data plane picks
//! from for a new flow (`foobar-lb-ebpf/src/select.rs` indexes them; it never needs to know
//! which scheduler built them). A new scheduler is a variant here plus its slot builder.

use foobar_lb_common::{BackendSet, MAX_SLOTS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Weighted round robin: the data plane walks the slots with one shared atomic cursor.
    #[default]
    RoundRobin,
}

impl Scheduler {
    /// The slots for `backends`, given as (backend id, weight) in a stable order.
    pub fn slots(self, backends: &[(u32, u32)]) -> BackendSet {
        match self {
            Scheduler::RoundRobin => weighted_round_robin(backends),
        }
    }
}

/// Weight w gives w slots when the weights fit; otherwise each backend's share of the slots is
/// apportioned (at least one each, every share within one slot of its ideal). The slots are
/// then interleaved by smooth weighted round-robin (as nginx does) so a heavy backend does not
/// take its turns in a burst.
fn weighted_round_robin(backends: &[(u32, u32)]) -> BackendSet {
    let mut set = BackendSet::EMPTY;
    let counts = apportion(backends, MAX_SLOTS);
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

    #[test]
    fn weighted_slots_are_proportional_and_interleaved() {
        let rr = Scheduler::RoundRobin;
        let set = rr.slots(&[(1, 3), (2, 1)]);
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
        let set = Scheduler::RoundRobin.slots(backends);
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
        let set = Scheduler::RoundRobin.slots(&b);
        assert_eq!(set.len as usize, MAX_SLOTS);
        // Two equal heavy backends split evenly.
        let set = Scheduler::RoundRobin.slots(&[(1, 256), (2, 256)]);
        let s = shares(&set);
        assert_eq!((s[&1], s[&2]), (256, 256));
    }
}
