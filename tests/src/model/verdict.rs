//! The sequence a frame goes through, as README states it: not IP or not parseable; not for a
//! VIP (rules only); a VIP in a frame for another MAC (firewall, then passed as
//! `pass_other_host`); VIP sanity; other protocols (firewall, martians, neighbour discovery,
//! VIP policy); TCP/UDP (firewall, flow table, FIN/RST without a flow, martians, service,
//! backends).

use std::cell::Cell;

use foobar_lb_common::verdict;

use super::{
    checks,
    decode::{self, FlowKey, Packet, Parsed, PROTO_TCP},
    known_bugs::Quirks,
    pending, Model,
};
use crate::packet::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    Tx,
}

impl Action {
    /// The XDP return code.
    pub fn xdp(self) -> u32 {
        match self {
            Action::Pass => crate::harness::XDP_PASS,
            Action::Drop => crate::harness::XDP_DROP,
            Action::Tx => crate::harness::XDP_TX,
        }
    }
}

/// What a forwarded frame does to the flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A new flow of this service: its backend is the one the program picks.
    NewFlow {
        key: FlowKey,
        service: usize,
    },
    /// A packet of a known flow; `closes` if it is a FIN or RST; `rechecked` if it met the
    /// firewall again (a change since the flow was last checked), which records the current
    /// generation in the flow.
    Known {
        key: FlowKey,
        closes: bool,
        rechecked: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub action: Action,
    /// The verdict counter that moves (exactly one).
    pub verdict: u32,
    /// For `Tx`: the destination MACs allowed.
    pub allowed: Vec<Mac>,
    pub effect: Effect,
    /// What the frame was, for summaries: "v4/tcp", "v6/other", "suspect", "not-ip".
    pub class: &'static str,
    /// The firewall rule (position) that matched, if the rules were evaluated and one did:
    /// its counter counts the frame.
    pub rule_hit: Option<usize>,
}

impl Expected {
    fn pass(verdict: u32, class: &'static str) -> Expected {
        Expected {
            action: Action::Pass,
            verdict,
            allowed: Vec::new(),
            effect: Effect::None,
            class,
            rule_hit: None,
        }
    }

    fn drop(verdict: u32, class: &'static str) -> Expected {
        Expected {
            action: Action::Drop,
            ..Expected::pass(verdict, class)
        }
    }
}

fn class_of(p: &Packet) -> &'static str {
    match (p.key.dst.is_ipv4(), p.key.proto) {
        (true, 6) => "v4/tcp",
        (true, 17) => "v4/udp",
        (true, 1) => "v4/icmp",
        (true, _) => "v4/other",
        (false, 6) => "v6/tcp",
        (false, 17) => "v6/udp",
        (false, 58) => "v6/icmp",
        (false, _) => "v6/other",
    }
}

pub fn judge(m: &Model, f: &[u8], quirks: Quirks) -> Expected {
    let hit = Cell::new(None);
    let mut e = judge_frame(m, f, quirks, &hit);
    e.rule_hit = hit.get();
    e
}

fn judge_frame(m: &Model, f: &[u8], quirks: Quirks, hit: &Cell<Option<usize>>) -> Expected {
    let st = &m.state;
    let to_us = f.len() >= 6 && f[0..6] == st.iface_mac;
    let (p, balance) = match decode::parse(f) {
        Parsed::NotIp => return Expected::pass(verdict::PASS, "not-ip"),
        Parsed::Suspect { dst, reason } => {
            // No 5-tuple to judge: dropped (counted with its reason) only when it was sent
            // to this interface for a VIP; a VIP packet in a frame for another MAC is passed
            // as `pass_other_host`; anything else is the kernel's. None meets the firewall
            // today (see `pending::SUSPECT_FRAMES_MEET_RULES`).
            const _: () = assert!(
                !pending::SUSPECT_FRAMES_MEET_RULES,
                "model the rules for unparseable frames here (firewall::Rule::matches with \
                 ports_known = false) before turning this on"
            );
            return match (st.is_vip(dst), to_us) {
                (true, true) => Expected::drop(reason, "suspect"),
                (true, false) if !quirks.suspect_other_host_counted_pass => {
                    Expected::pass(verdict::PASS_OTHER_HOST, "suspect")
                }
                _ => Expected::pass(verdict::PASS, "suspect"),
            };
        }
        Parsed::Flow(p) => (p, true),
        Parsed::Other(p) => (p, false),
    };
    let class = class_of(&p);
    let k = &p.key;
    let fw = &st.firewall;
    // Every evaluation of the rules goes through these (at most one per frame).
    let filter = |k: &FlowKey| {
        hit.set(fw.first_match(k, true));
        fw.filter(k)
    };
    let rules_only = |k: &FlowKey| {
        hit.set(fw.first_match(k, true));
        fw.rules_only(k)
    };
    let or = |r: Result<(), u32>, e: Expected| match r {
        Ok(()) => e,
        Err(v) => Expected::drop(v, class),
    };
    let vip = st.is_vip(k.dst);
    // The prefilter cannot tell this address from a VIP: README documents that it then meets
    // the block list too, and nothing else changes.
    let collides = !vip && st.prefilter(k.dst);
    if !(vip || quirks.prefilter_collision_is_vip && collides) {
        let r = if collides { filter(k) } else { rules_only(k) };
        return or(r, Expected::pass(verdict::PASS, class));
    }
    if !to_us {
        return or(filter(k), Expected::pass(verdict::PASS_OTHER_HOST, class));
    }
    if let Some(vid) = p.vlan {
        if !pending::vlan_balanced(vid) {
            return Expected::pass(verdict::PASS, class);
        }
    }
    // Sanity of VIP traffic.
    if k.dst.is_ipv4() {
        if let Err(v) = checks::ipv4_header(f, p.l3_off) {
            return Expected::drop(v, class);
        }
    }
    if k.proto == PROTO_TCP && !checks::tcp_flags_valid(p.tcp_flags) {
        return Expected::drop(verdict::DROP_BAD_TCP_FLAGS, class);
    }
    let source_ok = |k: &FlowKey| {
        if checks::martian(k.src) || st.is_vip(k.src) {
            Err(verdict::DROP_MARTIAN)
        } else {
            Ok(())
        }
    };
    let vip_policy = |k: &FlowKey| {
        if fw.vip_policy_drop && st.is_vip(k.dst) {
            Err(verdict::DROP_VIP_POLICY)
        } else {
            Ok(())
        }
    };
    if !balance {
        let r = filter(k).and_then(|()| source_ok(k));
        if r.is_ok() && decode::is_nd(f, &p) {
            // IPv6's ARP: never the VIP policy's to drop.
            return Expected::pass(verdict::PASS, class);
        }
        return or(
            r.and_then(|()| vip_policy(k)),
            Expected::pass(verdict::PASS, class),
        );
    }
    // TCP SYNs meet the firewall first; other packets of a flow once per firewall generation.
    if p.syn() {
        if let Err(v) = filter(k) {
            return Expected::drop(v, class);
        }
    }
    if let Some(flow) = m.flows.get(k) {
        let svc = &st.services[flow.service];
        let b = &svc.backends[flow.backend];
        // Its backend still serves (active or draining) and is the one it was given: not
        // down, not removed since.
        let serves = !b.removed
            && b.incarnation == flow.incarnation
            && matches!(
                b.state,
                foobar_lb::desired::BackendState::Active
                    | foobar_lb::desired::BackendState::Draining
            );
        // A SYN on a closed connection's tuple opens a new one, scheduled anew.
        let reopened = p.syn() && flow.closing;
        if serves && !reopened {
            // A SYN met the firewall above already (and leaves the flow's generation as it
            // was, as the program does).
            // With no stage configured at all the firewall is skipped (the flow keeps its
            // generation).
            let rechecked = fw.any() && !p.syn() && flow.fw_gen != m.fw_gen;
            if rechecked {
                if let Err(v) = filter(k) {
                    return Expected::drop(v, class);
                }
            }
            return Expected {
                action: Action::Tx,
                verdict: verdict::TX,
                allowed: b.mac.into_iter().collect(),
                effect: Effect::Known {
                    key: *k,
                    closes: p.fin(),
                    rechecked,
                },
                class,
                rule_hit: None,
            };
        }
    }
    if !p.syn() {
        if let Err(v) = filter(k) {
            return Expected::drop(v, class);
        }
    }
    if p.fin() {
        return Expected::drop(verdict::DROP_NO_FLOW, class);
    }
    if let Err(v) = source_ok(k) {
        return Expected::drop(v, class);
    }
    let Some(service) = st.service(k) else {
        return or(vip_policy(k), Expected::pass(verdict::PASS, class));
    };
    let allowed = st.services[service].new_flow_macs();
    if allowed.is_empty() {
        return Expected::drop(verdict::DROP_NO_BACKEND, class);
    }
    Expected {
        action: Action::Tx,
        verdict: verdict::TX,
        allowed,
        effect: Effect::NewFlow { key: *k, service },
        class,
        rule_hit: None,
    }
}
