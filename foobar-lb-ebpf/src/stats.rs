//! Per-CPU counters: no atomics needed, userspace sums the CPUs.

use foobar_lb_common::Counters;

use crate::maps::{BACKEND_STATS, SERVICE_STATS, VERDICT_STATS};

#[inline(always)]
pub fn count_verdict(reason: u32) {
    if let Some(c) = VERDICT_STATS.get_ptr_mut(reason) {
        unsafe { *c += 1 };
    }
}

/// Adds one packet of `bytes` to a counter slot (service, backend or firewall rule).
#[inline(always)]
pub fn bump(c: Option<*mut Counters>, bytes: u64) {
    if let Some(c) = c {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_forward(service_id: u32, backend_id: u32, bytes: u64) {
    bump(SERVICE_STATS.get_ptr_mut(service_id), bytes);
    bump(BACKEND_STATS.get_ptr_mut(backend_id), bytes);
}

#[inline(always)]
pub fn count_new_flow(service_id: u32, backend_id: u32) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service_id) {
        unsafe { (*c).new_flows += 1 };
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        unsafe { (*c).new_flows += 1 };
    }
}
