//! Backend selection: the flow table first, then the service's slots (picked by the
//! round-robin cursor, or by the flow's hash for Maglev services).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use foobar_lb_common::{
    flow_hash, owner_service, prefix_mask, take_token, verdict, Backend, Bucket, FlowKey,
    FlowValue, RateKey, ServiceInfo, BACKEND_ACTIVE, BACKEND_DRAINING, FAMILY_V6, MAX_SLOTS,
    SVC_MAGLEV, SVC_NAT,
};

use crate::{
    maps::{BACKENDS, BACKEND_SETS, FLOWS, FLOW_CLOCK, RATE_BUCKETS, RR_CURSORS},
    stats, sync,
};

/// The flow's backend, if the flow is in the table and its backend still serves (active or
/// draining). Also returns the flow entry, whose firewall generation the caller may refresh.
/// The backend is the map value itself: a copy cost every established packet eight loads and
/// eight stack stores, and guarded against nothing (userspace rewrites an entry in place).
#[inline(always)]
pub fn established(key: &FlowKey) -> Option<(u32, &'static Backend, *mut FlowValue)> {
    let flow = FLOWS.get_ptr_mut(key)?;
    let (id, owner) = unsafe { ((*flow).backend_id, (*flow).owner) };
    let b = BACKENDS.get(id)?;
    // Down, gone, or the id given to another backend since (its owner word changed): the
    // caller schedules the flow anew.
    (b.owner == owner && (b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING))
        .then_some((id, b, flow))
}

/// The flow clock now, in `FlowValue::seen` units, as the controller keeps it (see
/// `foobar_lb_common::flow_time`).
#[inline(always)]
pub fn flow_now() -> u32 {
    FLOW_CLOCK.get(0).copied().unwrap_or(0)
}

/// A backend for a new flow (or one whose backend went down): rate limit, then the next one in
/// round-robin order, remembered in the flow table with the firewall generation `gen`.
#[inline(always)]
pub fn new_flow(svc: &ServiceInfo, key: &FlowKey, gen: u32) -> Result<(u32, Backend), u32> {
    if svc.rate_per_sec != 0 && !rate_ok(svc, key) {
        return Err(verdict::DROP_RATE_LIMIT);
    }
    schedule(svc, key, gen)
}

/// Token bucket per (service, source) for new flows. Buckets live in an LRU map, so a flood of
/// sources evicts old buckets instead of exhausting memory. Concurrent updates from two CPUs
/// for one source may lose a token's worth of accounting: a limit, not a ledger.
#[inline(always)]
fn rate_ok(svc: &ServiceInfo, key: &FlowKey) -> bool {
    let mut src = key.src;
    if key.family == FAMILY_V6 {
        // One bucket per prefix: a host usually holds a whole /64.
        let len = match svc.flags & 0xff {
            0 => 64,
            l => l.min(128) as u8,
        };
        for (w, m) in src.iter_mut().zip(prefix_mask(len, true)) {
            *w &= m;
        }
    }
    let rk = RateKey {
        src,
        service_id: svc.id,
        family: key.family,
        _pad: [0; 3],
    };
    let now = unsafe { bpf_ktime_get_ns() };
    match RATE_BUCKETS.get_ptr_mut(rk) {
        Some(b) => {
            let (next, ok) = take_token(unsafe { *b }, now, svc.rate_per_sec, svc.burst);
            unsafe { *b = next };
            ok
        }
        None => {
            let full = Bucket {
                milli_tokens: svc.burst as u64 * 1000,
                last_ns: now,
            };
            let (next, ok) = take_token(full, now, svc.rate_per_sec, svc.burst);
            let _ = RATE_BUCKETS.insert(rk, next, 0);
            ok
        }
    }
}

#[inline(always)]
fn schedule(svc: &ServiceInfo, key: &FlowKey, gen: u32) -> Result<(u32, Backend), u32> {
    let service_id = svc.id;
    let set = unsafe { BACKEND_SETS.get(service_id) }.ok_or(verdict::DROP_NO_BACKEND)?;
    let len = set.len as u64;
    if len == 0 || len > MAX_SLOTS as u64 {
        return Err(verdict::DROP_NO_BACKEND);
    }
    let n = if svc.flags & SVC_MAGLEV != 0 {
        // Maglev: the slot follows from the 5-tuple alone, the same on every balancer.
        flow_hash(key) as u64
    } else {
        let cursor = RR_CURSORS.get_ptr_mut(service_id).ok_or(verdict::ABORTED)?;
        // One atomic fetch-add shared by all CPUs: M new flows over N slots give each M/N +/- 1.
        unsafe { fetch_add(cursor, 1) }
    };
    // `len <= MAX_SLOTS`, so this never fails, but it proves the bound to the verifier;
    // black_box keeps LLVM from deleting it as redundant.
    let slot = core::hint::black_box(n % len) as usize;
    if slot >= MAX_SLOTS {
        return Err(verdict::ABORTED);
    }
    let id = set.slots[slot];
    let backend = match BACKENDS.get(id) {
        Some(b) if id != 0 && owner_service(b.owner) == service_id && b.state == BACKEND_ACTIVE => {
            *b
        }
        _ => return Err(verdict::DROP_BAD_SLOT),
    };
    // BPF_ANY: a concurrent insert of the same flow on another CPU is harmless. NAT services
    // track their connections in their own tables (`nat::open`), never in the LRU.
    if svc.flags & SVC_NAT == 0 {
        let _ = FLOWS.insert(
            key,
            FlowValue {
                backend_id: id,
                fw_gen: gen,
                seen: flow_now(),
                owner: backend.owner,
            },
            0,
        );
        sync::flow_created(key, id, backend.owner);
    }
    stats::count_new_flow(service_id, id);
    Ok((id, backend))
}

/// Atomic fetch-and-add on a map value shared by all CPUs.
///
/// The BPF target has no compare-and-swap, so `core::sync::atomic` offers no `fetch_add`; the
/// instruction itself (BPF_ATOMIC | BPF_FETCH, cpu v3) is exact and lock-free, so emit it.
///
/// # Safety
/// `ptr` must point into a map value, 8-byte aligned.
#[inline(always)]
unsafe fn fetch_add(ptr: *mut u64, val: u64) -> u64 {
    let mut v = val;
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) ptr,
            v = inout(reg) v,
            options(nostack),
        );
    }
    v
}
