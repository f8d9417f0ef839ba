//! Firewall rules that would drop the health checks' own replies.
//!
//! Rules apply to every packet arriving on the interfaces, the balancer's own traffic
//! included. A check's reply comes from the backend's address, over TCP, to one of this host's
//! addresses at an ephemeral port; a drop rule matching such a packet (a broad
//! `drop --source 10.0.0.0/8`, say) takes every backend it covers DOWN with no other sign.
//! Such rules are reported (check-config, the daemon's log, the answer to the change) with the
//! fix: an `allow` rule for the backends placed before them.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{
    config::{CheckKind, Config},
    firewall::{parse_ports, parse_prefix, Action, RuleConfig, RuleProtocol},
};

/// Linux's default `net.ipv4.ip_local_port_range` (it also governs IPv6).
const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

/// What the replies look like on this host: its addresses and its ephemeral port range.
pub struct ReplyView {
    pub local: Vec<IpAddr>,
    pub ephemeral: (u16, u16),
}

impl ReplyView {
    /// This host's view (addresses of every interface, the kernel's port range).
    pub fn of_host() -> ReplyView {
        ReplyView {
            local: local_addresses(),
            ephemeral: ephemeral_range(),
        }
    }
}

/// One phrase per (rule, service) whose checked backends' replies a rule drops, naming the fix.
pub fn conflicts(config: &Config, view: &ReplyView) -> Vec<String> {
    let vips: Vec<IpAddr> = config.services.iter().map(|s| s.vip).collect();
    // The replies' destination: this host's own addresses, not a VIP.
    let local: Vec<IpAddr> = view
        .local
        .iter()
        .copied()
        .filter(|a| !vips.contains(a))
        .collect();
    let mut out = Vec::new();
    for svc in &config.services {
        if svc.health.check == CheckKind::None {
            continue;
        }
        let mut hit: Vec<(usize, Vec<IpAddr>)> = Vec::new();
        for b in &svc.backends {
            if let Some(i) = dropping_rule(&config.firewall.rules, b.address, &local, view) {
                match hit.iter_mut().find(|(r, _)| *r == i) {
                    Some((_, v)) => v.push(b.address),
                    None => hit.push((i, vec![b.address])),
                }
            }
        }
        for (i, addrs) in hit {
            let shown: Vec<String> = addrs.iter().take(3).map(|a| a.to_string()).collect();
            let more = if addrs.len() > 3 {
                format!(" and {} more", addrs.len() - 3)
            } else {
                String::new()
            };
            out.push(format!(
                "firewall rule {} ({}) drops the health-check replies from {} backend(s) of \
                 service {} ({}{more}): checks will mark them DOWN; put an allow rule for them \
                 before it (e.g. `foobar-lb fw add --action allow --source {} --protocol tcp --position {}`)",
                i + 1,
                config.firewall.rules[i],
                addrs.len(),
                svc.name,
                shown.join(", "),
                addrs[0],
                i + 1
            ));
        }
    }
    out
}

/// The index of the first rule that drops some reply from `backend` (an earlier `allow`
/// that admits every such reply ends the search).
fn dropping_rule(
    rules: &[RuleConfig],
    backend: IpAddr,
    local: &[IpAddr],
    view: &ReplyView,
) -> Option<usize> {
    for (i, r) in rules.iter().enumerate() {
        let Some(m) = reply_match(r, backend, local, view) else {
            continue;
        };
        match r.action {
            Action::Drop => return Some(i),
            Action::Allow if m == Match::All => return None,
            // An allow that admits only some replies: later drops may still take the rest.
            Action::Allow => {}
        }
    }
    None
}

#[derive(PartialEq)]
enum Match {
    All,
    Some,
}

/// Whether rule `r` matches replies from `backend` to this host: all of them, some, or none.
fn reply_match(
    r: &RuleConfig,
    backend: IpAddr,
    local: &[IpAddr],
    view: &ReplyView,
) -> Option<Match> {
    let contains = |net: Option<IpNet>, a: IpAddr| net.is_none_or(|n| n.contains(&a));
    let src = parse_prefix(&r.source).ok()?;
    if !contains(src, backend) {
        return None;
    }
    let mut all = true;
    let dst = parse_prefix(&r.destination).ok()?;
    if dst.is_some() {
        let family: Vec<&IpAddr> = local
            .iter()
            .filter(|a| a.is_ipv4() == backend.is_ipv4())
            .collect();
        let covered = family.iter().filter(|a| contains(dst, ***a)).count();
        if covered == 0 {
            return None;
        }
        all &= covered == family.len();
    }
    match r.protocol {
        RuleProtocol::Any | RuleProtocol::Tcp => {}
        RuleProtocol::Udp | RuleProtocol::Icmp => return None,
    }
    let (lo, hi) = parse_ports(&r.port).ok()?;
    let (elo, ehi) = view.ephemeral;
    if hi < elo || lo > ehi {
        return None;
    }
    all &= lo <= elo && hi >= ehi;
    Some(if all { Match::All } else { Match::Some })
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or(DEFAULT_EPHEMERAL)
}

/// Every address of every interface of this network namespace.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "interfaces = [\"eth0\"]\n\n[[service]]\nname = \"www\"\nvip = \"10.0.0.100\"\nport = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"\n\n[[service.backend]]\naddress = \"10.0.0.12\"\n";

    fn view() -> ReplyView {
        ReplyView {
            local: vec!["10.0.0.2".parse().unwrap(), "10.0.0.100".parse().unwrap()],
            ephemeral: DEFAULT_EPHEMERAL,
        }
    }

    fn with_rules(rules: &str) -> Config {
        Config::parse(&format!("{BASE}{rules}")).unwrap()
    }

    fn rule(action: &str, extra: &str) -> String {
        format!("\n[[firewall.rule]]\naction = \"{action}\"\n{extra}\n")
    }

    #[test]
    fn a_broad_source_drop_is_reported_with_the_fix() {
        let c = with_rules(&rule("drop", "source = \"10.0.0.0/8\""));
        let got = conflicts(&c, &view());
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("firewall rule 1"), "{}", got[0]);
        assert!(got[0].contains("2 backend(s) of service www"), "{}", got[0]);
        assert!(
            got[0].contains("fw add --action allow --source 10.0.0.11"),
            "{}",
            got[0]
        );
    }

    #[test]
    fn rules_that_miss_the_replies_are_not_reported() {
        for extra in [
            "source = \"192.0.2.0/24\"",                   // other sources
            "protocol = \"tcp\"\nport = \"22\"",           // a service port, not ephemeral
            "protocol = \"udp\"",                          // checks use TCP
            "destination = \"10.0.0.100\"",                // the VIP only, not the host
            "source = \"10.0.0.11\"\nprotocol = \"icmp\"", // not TCP
        ] {
            let c = with_rules(&rule("drop", extra));
            assert!(conflicts(&c, &view()).is_empty(), "{extra}");
        }
        // No checks, nothing to report.
        let c = Config::parse(&format!(
            "{}{}",
            BASE.replace("port = 80\n", "port = 80\nhealth = { check = \"none\" }\n"),
            rule("drop", "")
        ))
        .unwrap();
        assert!(conflicts(&c, &view()).is_empty());
    }

    #[test]
    fn an_allow_before_the_drop_covers_only_what_it_admits_whole() {
        let both = format!(
            "{}{}",
            rule("allow", "source = \"10.0.0.11\"\nprotocol = \"tcp\""),
            rule("drop", "source = \"10.0.0.0/24\"")
        );
        let got = conflicts(&with_rules(&both), &view());
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains("1 backend(s)") && got[0].contains("10.0.0.12"),
            "{got:?}"
        );
        // An allow of only some ephemeral ports leaves the rest to the drop.
        let partial = format!(
            "{}{}",
            rule(
                "allow",
                "source = \"10.0.0.0/24\"\nprotocol = \"tcp\"\nport = \"40000-50000\""
            ),
            rule(
                "drop",
                "source = \"10.0.0.0/24\"\nprotocol = \"tcp\"\nport = \"1024-65535\""
            )
        );
        assert_eq!(conflicts(&with_rules(&partial), &view()).len(), 1);
    }
}
