//! The firewall as README's "Firewall" section states it: ordered rules (first match wins;
//! `allow` also skips the block list), the source block list for VIP traffic, the VIP policy
//! for VIP traffic matching no service, and the VIP prefilter's one-way error.

use std::net::IpAddr;

use foobar_lb::firewall::{Action, RuleConfig, RuleProtocol};
use foobar_lb_common::{verdict, FAMILY_V4, FAMILY_V6};
use ipnet::IpNet;

use super::decode::{FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// One rule, read from its configuration text (not from the controller's compiled form).
#[derive(Debug, Clone)]
pub struct Rule {
    pub drop: bool,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub protocol: RuleProtocol,
    pub ports: (u16, u16),
}

fn prefix(text: &str) -> Option<IpNet> {
    if text == "any" {
        return None;
    }
    Some(
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .expect("valid prefix"),
    )
}

impl Rule {
    pub fn from_config(r: &RuleConfig) -> Rule {
        let ports = match r.port.as_str() {
            "any" => (0, u16::MAX),
            p => match p.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (p.parse().unwrap(), p.parse().unwrap()),
            },
        };
        Rule {
            drop: r.action == Action::Drop,
            src: prefix(&r.source),
            dst: prefix(&r.destination),
            protocol: r.protocol,
            ports,
        }
    }

    /// Whether the rule matches. `ports_known` is false where the packet's ports cannot be
    /// read (see `pending::SUSPECT_FRAMES_MEET_RULES`): a port condition then counts as met.
    pub fn matches(&self, k: &FlowKey, ports_known: bool) -> bool {
        let in_net = |net: &Option<IpNet>, a: IpAddr| net.is_none_or(|n| n.contains(&a));
        // A prefix of one family makes the rule that family's only.
        let family_ok = [self.src, self.dst]
            .iter()
            .flatten()
            .all(|n| n.addr().is_ipv4() == k.dst.is_ipv4());
        let proto_ok = match self.protocol {
            RuleProtocol::Any => true,
            RuleProtocol::Tcp => k.proto == PROTO_TCP,
            RuleProtocol::Udp => k.proto == PROTO_UDP,
            // Either ICMP, whatever the family (as the data plane compares protocol numbers).
            RuleProtocol::Icmp => k.proto == PROTO_ICMP || k.proto == PROTO_ICMPV6,
        };
        let port_ok = !ports_known || (self.ports.0..=self.ports.1).contains(&k.dport);
        family_ok && proto_ok && port_ok && in_net(&self.src, k.src) && in_net(&self.dst, k.dst)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Firewall {
    pub rules: Vec<Rule>,
    pub blocklist: Vec<IpNet>,
    /// The VIP policy of the receiving interface is `drop`.
    pub vip_policy_drop: bool,
}

/// What the rules say about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleVerdict {
    Allow,
    Drop,
    NoMatch,
}

impl Firewall {
    /// Whether any stage is configured (rules, block list, a VIP policy of drop).
    pub fn any(&self) -> bool {
        !self.rules.is_empty() || !self.blocklist.is_empty() || self.vip_policy_drop
    }

    /// Position of the first rule that matches (its counter counts the packet).
    pub fn first_match(&self, k: &FlowKey, ports_known: bool) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(k, ports_known))
    }

    pub fn rules(&self, k: &FlowKey, ports_known: bool) -> RuleVerdict {
        match self.first_match(k, ports_known).map(|i| &self.rules[i]) {
            Some(r) if r.drop => RuleVerdict::Drop,
            Some(_) => RuleVerdict::Allow,
            None => RuleVerdict::NoMatch,
        }
    }

    /// Rules only (traffic not for a VIP).
    pub fn rules_only(&self, k: &FlowKey) -> Result<(), u32> {
        match self.rules(k, true) {
            RuleVerdict::Drop => Err(verdict::DROP_FW_RULE),
            _ => Ok(()),
        }
    }

    /// Rules, then the block list (an allow rule skips the block list).
    pub fn filter(&self, k: &FlowKey) -> Result<(), u32> {
        match self.rules(k, true) {
            RuleVerdict::Drop => Err(verdict::DROP_FW_RULE),
            RuleVerdict::Allow => Ok(()),
            RuleVerdict::NoMatch if self.blocked(k.src) => Err(verdict::DROP_BLOCKLIST),
            RuleVerdict::NoMatch => Ok(()),
        }
    }

    pub fn blocked(&self, src: IpAddr) -> bool {
        self.blocklist.iter().any(|n| n.contains(&src))
    }
}

/// The program's word layout of an address (wire-order words), for the prefilter's hash.
pub fn words(a: IpAddr) -> ([u32; 4], u8) {
    match a {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The VIP prefilter's bit for an address (`foobar_lb_common::vip_filter_bit`): two addresses
/// with the same bit cannot be told apart by the prefilter.
pub fn filter_bit(a: IpAddr) -> u32 {
    let (w, family) = words(a);
    foobar_lb_common::vip_filter_bit(&w, family)
}
