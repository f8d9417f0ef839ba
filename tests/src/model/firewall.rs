//! The firewall as README's "Firewall" section states it: ordered rules (first match wins;
//! `allow` also skips the block list), the source block list for VIP traffic, the VIP policy
//! for VIP traffic matching no service, and the VIP prefilter's one-way error.

use std::net::IpAddr;

use foobar_lb::firewall::{Action, RuleConfig, RuleProtocol};
use foobar_lb_common::{verdict, FAMILY_V4, FAMILY_V6};
use ipnet::IpNet;

use super::decode::{FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PROTO_UNKNOWN};

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

    fn family_and_addresses_ok(&self, k: &FlowKey) -> bool {
        let in_net = |net: &Option<IpNet>, a: IpAddr| net.is_none_or(|n| n.contains(&a));
        // A prefix of one family makes the rule that family's only.
        let family_ok = [self.src, self.dst]
            .iter()
            .flatten()
            .all(|n| n.addr().is_ipv4() == k.dst.is_ipv4());
        family_ok && in_net(&self.src, k.src) && in_net(&self.dst, k.dst)
    }

    fn protocol_ok(&self, proto: u8) -> bool {
        match self.protocol {
            RuleProtocol::Any => true,
            RuleProtocol::Tcp => proto == PROTO_TCP,
            RuleProtocol::Udp => proto == PROTO_UDP,
            // Either ICMP, whatever the family (as the data plane compares protocol numbers).
            RuleProtocol::Icmp => proto == PROTO_ICMP || proto == PROTO_ICMPV6,
        }
    }

    /// Whether the rule matches a packet whose protocol and ports are known.
    pub fn matches(&self, k: &FlowKey) -> bool {
        self.family_and_addresses_ok(k)
            && self.protocol_ok(k.proto)
            && (self.ports.0..=self.ports.1).contains(&k.dport)
    }

    /// Whether the rule matches a packet whose ports are unknown, and maybe its protocol
    /// (`PROTO_UNKNOWN`): README "Packet handling": a `drop` rule on ports or protocol that the
    /// packet may fall under matches it; an `allow` rule only on fields it has (its addresses,
    /// a known protocol with no port range).
    pub fn matches_unknown_ports(&self, k: &FlowKey) -> bool {
        if !self.family_and_addresses_ok(k) {
            return false;
        }
        if self.protocol == RuleProtocol::Any {
            // Rules name ports only with a protocol: a rule on addresses alone.
            return true;
        }
        let known = k.proto != PROTO_UNKNOWN;
        if known && !self.protocol_ok(k.proto) {
            return false;
        }
        let all_ports = self.ports == (0, u16::MAX);
        (known && all_ports) || self.drop
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

    /// Position of the first rule that matches (its counter counts the packet); `whole`:
    /// the packet's protocol and ports are known.
    pub fn first_match(&self, k: &FlowKey, whole: bool) -> Option<usize> {
        self.rules.iter().position(|r| {
            if whole {
                r.matches(k)
            } else {
                r.matches_unknown_ports(k)
            }
        })
    }

    pub fn rules(&self, k: &FlowKey, whole: bool) -> RuleVerdict {
        match self.first_match(k, whole).map(|i| &self.rules[i]) {
            Some(r) if r.drop => RuleVerdict::Drop,
            Some(_) => RuleVerdict::Allow,
            None => RuleVerdict::NoMatch,
        }
    }

    /// Rules only (traffic not for a VIP).
    pub fn rules_only(&self, k: &FlowKey) -> Result<(), u32> {
        self.judge(k, true, false)
    }

    /// Rules, then the block list (an allow rule skips the block list).
    pub fn filter(&self, k: &FlowKey) -> Result<(), u32> {
        self.judge(k, true, true)
    }

    /// Rules (on known or unknown ports, `whole`), then the block list if `blocklist`.
    pub fn judge(&self, k: &FlowKey, whole: bool, blocklist: bool) -> Result<(), u32> {
        match self.rules(k, whole) {
            RuleVerdict::Drop => Err(verdict::DROP_FW_RULE),
            RuleVerdict::Allow => Ok(()),
            RuleVerdict::NoMatch if blocklist && self.blocked(k.src) => {
                Err(verdict::DROP_BLOCKLIST)
            }
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
