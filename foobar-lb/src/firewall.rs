//! Firewall configuration: rule syntax, block-list files, and their compiled map form.
//!
//! Evaluation order in the data plane (before any balancing): the ordered rules, first match
//! wins (`allow` accepts, also past the block list; `drop` drops); then the source block list;
//! then, for traffic to a VIP address that matches no service, the interface's VIP policy.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use foobar_lb_common::{
    encode_addr, Addr, Rule, RuleSet, ACTION_ALLOW, ACTION_DROP, FAMILY_V4, FAMILY_V6, MAX_RULES,
    PROTO_ICMP_ANY, PROTO_TCP, PROTO_UDP,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    #[default]
    Any,
    Tcp,
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
}

/// One rule as written in the config (`[[firewall.rule]]`) or given to `foobar-lb fw add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: Action,
    /// Source prefix (`10.0.0.0/8`, `2001:db8::/32`, an address) or `any`.
    #[serde(default = "any")]
    pub source: String,
    #[serde(default)]
    pub protocol: RuleProtocol,
    /// Destination port or range (`22`, `1000-2000`) or `any`; TCP/UDP only.
    #[serde(default = "any")]
    pub port: String,
    /// Destination prefix (e.g. one VIP) or `any`.
    #[serde(default = "any")]
    pub destination: String,
}

/// What is wrong with a rule or a block list. Wrapping variants (`Rule`, `BlocklistLine`,
/// `Blocklist`) say where; the cause is their `source`, printed once by the caller's `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{text:?} is not an IP prefix (e.g. 10.0.0.0/8, 2001:db8::/32) or `any`")]
    BadPrefix { text: String },
    #[error("port {text:?}: use a port (22), a range (1000-2000) or `any`")]
    BadPorts { text: String },
    #[error("source and destination are of different address families")]
    MixedFamilies,
    #[error("a port needs protocol tcp or udp")]
    PortWithoutTcpOrUdp,
    #[error("{count} rules, at most {MAX_RULES}")]
    TooManyRules { count: usize },
    /// Rule `index` (1-based) of a list is invalid.
    #[error("firewall rule {index} ({rule})")]
    Rule {
        index: usize,
        rule: String,
        #[source]
        source: Box<FirewallError>,
    },
    /// Line `line` (1-based) of a block list is invalid.
    #[error("line {line}")]
    BlocklistLine {
        line: usize,
        #[source]
        source: Box<FirewallError>,
    },
    #[error("line {line}: `any` cannot be blocked wholesale")]
    AnyBlocked { line: usize },
    #[error("cannot read block list {}", path.display())]
    ReadBlocklist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block list {}", path.display())]
    Blocklist {
        path: PathBuf,
        #[source]
        source: Box<FirewallError>,
    },
}

fn any() -> String {
    "any".into()
}

impl std::fmt::Display for RuleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} from {} to {} proto {} port {}",
            format!("{:?}", self.action).to_lowercase(),
            self.source,
            self.destination,
            format!("{:?}", self.protocol).to_lowercase(),
            self.port
        )
    }
}

/// `any` or a prefix; a bare address is a host prefix.
pub fn parse_prefix(s: &str) -> Result<Option<IpNet>, FirewallError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    if let Ok(net) = s.parse::<IpNet>() {
        // Normalise 10.1.2.3/8 to 10.0.0.0/8: the host bits are ignored anyway.
        return Ok(Some(net.trunc()));
    }
    s.parse::<IpAddr>()
        .map(|a| Some(IpNet::from(a)))
        .map_err(|_| FirewallError::BadPrefix { text: s.to_owned() })
}

/// A rule's destination ports: one, a range, or `any` (0..=65535).
pub(crate) fn parse_ports(s: &str) -> Result<(u16, u16), FirewallError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("any") {
        return Ok((0, u16::MAX));
    }
    let bad = || FirewallError::BadPorts { text: s.to_owned() };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (
            a.trim().parse::<u16>().map_err(|_| bad())?,
            b.trim().parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = s.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn net_words(net: Option<IpNet>) -> (Addr, Addr) {
    match net {
        None => ([0; 4], [0; 4]),
        Some(n) => (encode_addr(n.network()).0, encode_addr(n.netmask()).0),
    }
}

/// Compiles one rule; the error says what is wrong with it.
pub fn compile(r: &RuleConfig) -> Result<Rule, FirewallError> {
    let src = parse_prefix(&r.source)?;
    let dst = parse_prefix(&r.destination)?;
    let family = match (src, dst) {
        (Some(a), Some(b)) if a.addr().is_ipv4() != b.addr().is_ipv4() => {
            return Err(FirewallError::MixedFamilies)
        }
        (Some(n), _) | (None, Some(n)) => {
            if n.addr().is_ipv4() {
                FAMILY_V4
            } else {
                FAMILY_V6
            }
        }
        (None, None) => 0,
    };
    let (port_lo, port_hi) = parse_ports(&r.port)?;
    let ported = (port_lo, port_hi) != (0, u16::MAX);
    if ported && matches!(r.protocol, RuleProtocol::Icmp | RuleProtocol::Any) {
        return Err(FirewallError::PortWithoutTcpOrUdp);
    }
    let (src, src_mask) = net_words(src);
    let (dst, dst_mask) = net_words(dst);
    Ok(Rule {
        src,
        src_mask,
        dst,
        dst_mask,
        port_lo,
        port_hi,
        family,
        proto: match r.protocol {
            RuleProtocol::Any => 0,
            RuleProtocol::Tcp => PROTO_TCP,
            RuleProtocol::Udp => PROTO_UDP,
            RuleProtocol::Icmp => PROTO_ICMP_ANY,
        },
        action: match r.action {
            Action::Allow => ACTION_ALLOW,
            Action::Drop => ACTION_DROP,
        },
        _pad: 0,
    })
}

/// Compiles an ordered rule list into the one map value the data plane reads.
pub fn compile_all(rules: &[RuleConfig]) -> Result<RuleSet, FirewallError> {
    if rules.len() > MAX_RULES {
        return Err(FirewallError::TooManyRules { count: rules.len() });
    }
    let mut set = RuleSet::EMPTY;
    for (i, r) in rules.iter().enumerate() {
        set.rules[i] = compile(r).map_err(|e| FirewallError::Rule {
            index: i + 1,
            rule: r.to_string(),
            source: Box::new(e),
        })?;
    }
    set.len = rules.len() as u32;
    Ok(set)
}

/// Parses a block list: one prefix (or address) a line; `#` starts a comment; blank lines are
/// skipped. The error names the first bad line.
pub fn parse_blocklist(text: &str) -> Result<Vec<IpNet>, FirewallError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match parse_prefix(entry) {
            Ok(Some(net)) => out.push(net),
            Ok(None) => return Err(FirewallError::AnyBlocked { line: n + 1 }),
            Err(e) => {
                return Err(FirewallError::BlocklistLine {
                    line: n + 1,
                    source: Box::new(e),
                })
            }
        }
    }
    Ok(out)
}

pub fn load_blocklist(path: &Path) -> Result<Vec<IpNet>, FirewallError> {
    let text = std::fs::read_to_string(path).map_err(|source| FirewallError::ReadBlocklist {
        path: path.to_owned(),
        source,
    })?;
    parse_blocklist(&text).map_err(|e| FirewallError::Blocklist {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as users see it: the error and its causes, each once.
    fn shown(e: FirewallError) -> String {
        format!("{:#}", anyhow::Error::new(e))
    }

    fn rule(
        action: Action,
        source: &str,
        protocol: RuleProtocol,
        port: &str,
        dst: &str,
    ) -> RuleConfig {
        RuleConfig {
            action,
            source: source.into(),
            protocol,
            port: port.into(),
            destination: dst.into(),
        }
    }

    #[test]
    fn compiles_prefixes_with_masks_in_wire_order() {
        let r = compile(&rule(
            Action::Drop,
            "10.1.2.3/16",
            RuleProtocol::Tcp,
            "1000-2000",
            "any",
        ))
        .unwrap();
        assert_eq!(r.src[0].to_ne_bytes(), [10, 1, 0, 0], "host bits dropped");
        assert_eq!(r.src_mask[0].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(
            (r.port_lo, r.port_hi, r.family, r.proto, r.action),
            (1000, 2000, FAMILY_V4, 6, ACTION_DROP)
        );
        let r = compile(&rule(
            Action::Allow,
            "any",
            RuleProtocol::Icmp,
            "any",
            "2001:db8::1",
        ))
        .unwrap();
        assert_eq!(
            (r.family, r.proto, r.port_lo, r.port_hi),
            (FAMILY_V6, PROTO_ICMP_ANY, 0, 65535)
        );
        assert_eq!(r.dst_mask, [u32::MAX; 4]);
        assert_eq!(
            compile(&rule(Action::Allow, "any", RuleProtocol::Any, "any", "any"))
                .unwrap()
                .family,
            0
        );
    }

    #[test]
    fn rejects_bad_rules_with_reasons() {
        let e = |r: RuleConfig| shown(compile(&r).unwrap_err());
        assert!(e(rule(
            Action::Drop,
            "10.0.0.0/33",
            RuleProtocol::Any,
            "any",
            "any"
        ))
        .contains("not an IP prefix"));
        assert!(e(rule(Action::Drop, "any", RuleProtocol::Tcp, "70000", "any")).contains("port"));
        assert!(e(rule(Action::Drop, "any", RuleProtocol::Tcp, "20-10", "any")).contains("port"));
        assert!(
            e(rule(Action::Drop, "any", RuleProtocol::Icmp, "22", "any")).contains("tcp or udp")
        );
        assert!(e(rule(
            Action::Drop,
            "10.0.0.0/8",
            RuleProtocol::Any,
            "any",
            "fd00::1"
        ))
        .contains("families"));
        let many = vec![rule(Action::Drop, "any", RuleProtocol::Any, "any", "any"); MAX_RULES + 1];
        let err = compile_all(&many).unwrap_err();
        assert!(
            matches!(err, FirewallError::TooManyRules { count } if count == MAX_RULES + 1),
            "{err:?}"
        );
        assert!(shown(err).contains("at most"));
        let err = compile_all(&[
            rule(Action::Drop, "any", RuleProtocol::Any, "any", "any"),
            rule(Action::Drop, "x", RuleProtocol::Any, "any", "any"),
        ])
        .unwrap_err();
        assert!(
            matches!(&err, FirewallError::Rule { index: 2, source, .. }
                if matches!(**source, FirewallError::BadPrefix { .. })),
            "{err:?}"
        );
        let err = shown(err);
        assert!(err.starts_with("firewall rule 2 (drop from x"), "{err}");
        assert_eq!(
            err.matches("not an IP prefix").count(),
            1,
            "cause once: {err}"
        );
    }

    #[test]
    fn block_lists_name_the_bad_line() {
        let ok =
            parse_blocklist("# comment\n10.0.0.0/8\n\n192.0.2.1 # host\n2001:db8::/32\n").unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[1].prefix_len(), 32);
        let e = parse_blocklist("10.0.0.0/8\n10.0.0.300\n").unwrap_err();
        assert!(
            matches!(e, FirewallError::BlocklistLine { line: 2, .. }),
            "{e:?}"
        );
        let e = shown(e);
        assert_eq!(
            e,
            "line 2: \"10.0.0.300\" is not an IP prefix (e.g. 10.0.0.0/8, 2001:db8::/32) or `any`",
        );
        let e = parse_blocklist("any\n").unwrap_err();
        assert!(matches!(e, FirewallError::AnyBlocked { line: 1 }), "{e:?}");
        assert!(shown(e).contains("line 1"));
    }

    #[test]
    fn block_list_files_name_the_file_and_the_cause_once() {
        let dir = std::env::temp_dir().join(format!("foobar-lb-fw-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.txt");
        let e = shown(load_blocklist(&missing).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot read block list {}: ", missing.display())),
            "{e}"
        );
        assert_eq!(e.matches(": ").count(), 1, "cause once: {e}");
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "10.0.0.0/8\n10.0.0.300\n").unwrap();
        let e = shown(load_blocklist(&bad).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.starts_with(&format!(
                "block list {}: line 2: \"10.0.0.300\"",
                bad.display()
            )),
            "{e}"
        );
    }
}
