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

/// Weight w gives w slots, spread out by smooth weighted round-robin (as nginx does) so a heavy
/// backend does not take its turns in a burst.
fn weighted_round_robin(backends: &[(u32, u32)]) -> BackendSet {
    let mut set = BackendSet::EMPTY;
    let total: u64 = backends.iter().map(|&(_, w)| w as u64).sum();
    // Scale weights down if they do not fit; every backend keeps at least one slot.
    let scale = |w: u32| -> i64 {
        if total as usize <= MAX_SLOTS {
            w as i64
        } else {
            ((w as u64 * MAX_SLOTS as u64 / total).max(1)) as i64
        }
    };
    let weights: Vec<i64> = backends.iter().map(|&(_, w)| scale(w)).collect();
    let n: i64 = weights.iter().sum::<i64>().min(MAX_SLOTS as i64);
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; backends.len()];
    for slot in 0..n as usize {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..backends.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("n > 0 implies a backend");
        current[best] -= sum;
        set.slots[slot] = backends[best].0;
    }
    set.len = n as u32;
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_slots_are_proportional_and_interleaved() {
        let rr = Scheduler::RoundRobin;
        let set = rr.slots(&[(1, 3), (2, 1)]);
        assert_eq!(&set.slots[..set.len as usize], &[1, 1, 2, 1]);
        let set = rr.slots(&[(1, 1000), (2, 1000)]);
        assert_eq!(set.len as usize, MAX_SLOTS);
        let ones = set.slots.iter().filter(|&&s| s == 1).count();
        assert_eq!(ones, MAX_SLOTS / 2);
        assert_eq!(rr.slots(&[]).len, 0);
    }
}
