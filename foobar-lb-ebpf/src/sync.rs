//! Flow-state sync: each flow-table entry the program creates is announced on a ring buffer
//! for the controller to stream to its peers (README "Redundancy"). Off unless the controller
//! set `SYNC_ENABLED` at load time; a full ring loses the event (counted), never the packet.

use foobar_lb_common::{FlowEvent, FlowKey, SYNC_STAT_RING_FULL, SYNC_STAT_SENT};

use crate::maps::{FLOW_EVENTS, SYNC_STATS};

/// `bpf_ringbuf_output` flag: do not wake the reader up.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Set to 1 by the controller at load time when `[sync]` is configured. `.rodata`: the
/// verifier knows its value, so with 0 it never even walks [`emit`]'s path.
#[no_mangle]
static SYNC_ENABLED: u32 = 0;

/// Announces a new flow-table entry (key -> backend `id` with owner word `owner`).
#[inline(always)]
pub fn flow_created(key: &FlowKey, id: u32, owner: u32) {
    // SAFETY: a plain read of a global; volatile so the compiler keeps the load the loader
    // patched instead of folding the initial 0.
    if unsafe { core::ptr::read_volatile(&SYNC_ENABLED) } == 0 {
        return;
    }
    let event = FlowEvent {
        key: *key,
        backend_id: id,
        owner,
    };
    // No wakeup: notifying the reader costs ~5 us per event (measured: a new flow took 6 us
    // instead of 0.6), so the controller polls the ring on a short timer instead.
    let stat = match FLOW_EVENTS.output::<FlowEvent>(&event, BPF_RB_NO_WAKEUP) {
        Ok(()) => SYNC_STAT_SENT,
        Err(_) => SYNC_STAT_RING_FULL,
    };
    if let Some(c) = SYNC_STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += 1 };
    }
}
