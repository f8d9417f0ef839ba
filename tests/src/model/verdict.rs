//! The sequence a frame goes through, as README states it: not IP; not balanceable (dropped
//! for a VIP in a frame the interface balances, else the firewall on what it shows); not for
//! a VIP (rules only); a VIP in a frame for another MAC or VLAN (firewall, then passed as
//! `pass_other_host` / `pass_other_vlan`); VIP sanity; other protocols (firewall, martians,
//! ICMP errors of known flows, neighbour discovery, VIP policy); TCP/UDP (firewall, flow
//! table, FIN/RST without a flow, martians, service, backends).

use std::cell::Cell;

use foobar_lb_common::verdict;

use super::{
    checks,
    decode::{self, FlowKey, Packet, Parsed, Tags, PROTO_TCP},
    known_bugs::Quirks,
    Model,
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
    /// A packet of a known flow; `fin` / `rst` if it carries them (the flow entry keeps
    /// them); `rechecked` if it met the firewall again (a change since the flow was last
    /// checked), which records the current generation in the flow.
    Known {
        key: FlowKey,
        fin: bool,
        rst: bool,
        rechecked: bool,
    },
    /// An ICMP error quoting the known flow `key`, sent to its backend (the flow entry is
    /// left as it was).
    IcmpError {
        key: FlowKey,
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

fn judge_frame(m: &Model, f: &[u8], _quirks: Quirks, hit: &Cell<Option<usize>>) -> Expected {
    let st = &m.state;
    let fw = &st.firewall;
    let to_us = f.len() >= 6 && f[0..6] == st.iface_mac;
    // Whether the interface balances this frame: its own MAC, untagged or in a VLAN listed
    // for it (never double-tagged); else the verdict a VIP packet in it is passed with.
    let receiver = |tags: Tags| {
        if !to_us {
            return Err(verdict::PASS_OTHER_HOST);
        }
        match tags {
            Tags::None => Ok(()),
            Tags::One(vid) if st.vlans.contains(&vid) => Ok(()),
            _ => Err(verdict::PASS_OTHER_VLAN),
        }
    };
    let (p, balance) = match decode::parse(f) {
        Parsed::NotIp => return Expected::pass(verdict::PASS, "not-ip"),
        Parsed::Suspect(s) => {
            // No 5-tuple to balance: dropped (counted with its reason) when it is for a VIP
            // in a frame the interface balances. Anything else goes to the kernel, which may
            // reassemble it, so it meets the rules on what it shows (and the block list if for
            // a VIP); a VIP packet is passed as `pass_other_host` / `pass_other_vlan`.
            let vip = st.is_vip(s.key.dst);
            let pass_as = match receiver(s.tags) {
                Ok(()) if vip => return Expected::drop(s.reason, "suspect"),
                Err(other) if vip => other,
                _ => verdict::PASS,
            };
            hit.set(fw.first_match(&s.key, s.whole));
            return match fw.judge(&s.key, s.whole, vip) {
                Ok(()) => Expected::pass(pass_as, "suspect"),
                Err(v) => Expected::drop(v, "suspect"),
            };
        }
        Parsed::Flow(p) => (p, true),
        Parsed::Other(p) => (p, false),
    };
    let class = class_of(&p);
    let k = &p.key;
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
    if !vip {
        let r = if collides { filter(k) } else { rules_only(k) };
        return or(r, Expected::pass(verdict::PASS, class));
    }
    if let Err(other) = receiver(p.tags) {
        return or(filter(k), Expected::pass(other, class));
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
        if let Err(v) = filter(k).and_then(|()| source_ok(k)) {
            return Expected::drop(v, class);
        }
        // An ICMP error quoting a connection in the flow table goes to its backend.
        if let Some(key) = decode::icmp_error_flow(f, &p) {
            if let Some((_, b)) = m.serving(&key) {
                return Expected {
                    action: Action::Tx,
                    verdict: verdict::TX,
                    allowed: b.mac.into_iter().collect(),
                    effect: Effect::IcmpError { key },
                    class,
                    rule_hit: None,
                };
            }
        }
        if decode::is_nd(f, &p) {
            // IPv6's ARP: never the VIP policy's to drop.
            return Expected::pass(verdict::PASS, class);
        }
        return or(vip_policy(k), Expected::pass(verdict::PASS, class));
    }
    // TCP SYNs meet the firewall first; other packets of a flow once per firewall generation.
    if p.syn() {
        if let Err(v) = filter(k) {
            return Expected::drop(v, class);
        }
    }
    if let Some((flow, b)) = m.serving(k) {
        // A SYN on a closed connection's tuple (FIN or RST seen) opens a new one, scheduled
        // anew.
        let reopened = p.syn() && flow.closing();
        if !reopened {
            // A SYN met the firewall above already (and leaves the flow's generation as it
            // was, as the program does). With no stage configured at all the firewall is
            // skipped (the flow keeps its generation).
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
                    fin: p.tcp_flags & 0x01 != 0,
                    rst: p.tcp_flags & 0x04 != 0,
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
    let allowed = st.services[service].new_flow_macs(k);
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
