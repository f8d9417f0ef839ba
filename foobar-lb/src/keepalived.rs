//! `foobar-lb keepalived-config`: the keepalived.conf of one node of an active-passive pair.
//!
//! Both nodes run `foobar-lb run` with the same services all the time; keepalived (VRRP) only
//! decides which of them holds the VIPs, i.e. answers ARP/ND for them. Its `track_script` asks
//! `foobar-lb ready`, so a node whose daemon does not answer, or whose interface has no XDP
//! attached, gives the VIPs up (FAULT state) and cannot take them. Both nodes start as BACKUP
//! with `nopreempt`: the higher priority wins the first election, and a node that comes back
//! after a failure stays backup instead of taking the VIPs back (no needless second move).
//!
//! NAT services need more than the VIPs to move: with `forwarding = "nat"` the backends route
//! their replies through the balancer, so the address they route through (`gateways`) must be
//! the active node's; with `"fullnat"` the backends answer the SNAT addresses (`snat`), which
//! must be too. Both move with the VIPs in the same instance.
//!
//! Sub-second advertisement intervals need VRRPv3 (VRRPv2 counts whole seconds), which has no
//! authentication: `auth_pass` is only accepted with whole-second intervals (VRRPv2, IPv4).

use std::{collections::HashSet, fmt::Write, net::IpAddr};

/// One node's side of the pair.
#[derive(Debug, Clone)]
pub struct PairNode {
    /// The interface that carries the VIPs (the one XDP runs on).
    pub interface: String,
    pub vips: Vec<IpAddr>,
    /// Full-NAT services' SNAT addresses (`snat`): the backends answer them.
    pub snat: Vec<IpAddr>,
    /// NAT services' gateway addresses with their prefix length: what the backends route
    /// clients through (their default gateway).
    pub gateways: Vec<(IpAddr, u8)>,
    /// The other node's address(es) on `interface`: adverts go there by unicast.
    pub peers: Vec<IpAddr>,
    /// This node's own address for the adverts (default: the interface's primary address).
    pub source: Option<IpAddr>,
    /// 1..=254 (255 would mean "address owner", which track scripts cannot lower).
    pub priority: u8,
    /// VRRP virtual router id, 1..=255, the same on both nodes.
    pub router_id: u8,
    /// Advertisement interval in milliseconds.
    pub advert_ms: u32,
    /// VRRPv2 simple password (whole-second intervals only).
    pub auth_pass: Option<String>,
    /// The `foobar-lb` binary keepalived runs for `ready`.
    pub binary: String,
    /// The daemon's control socket.
    pub socket: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("bad interface name {0:?}: 1 to 15 characters, no spaces, quotes or '/'")]
    Interface(String),
    #[error("at least one --vip is needed")]
    NoVip,
    #[error("{0} is given twice (as a VIP, SNAT or gateway address)")]
    DuplicateVip(IpAddr),
    #[error("{0} cannot be a virtual address (unspecified, loopback or multicast)")]
    BadVip(IpAddr),
    #[error("gateway {0}/{1}: the prefix length is at most 32 for IPv4, 128 for IPv6")]
    GatewayPrefix(IpAddr, u8),
    #[error("at least one --peer (the other node's address) is needed")]
    NoPeer,
    #[error("peers and --source must be of one address family (VRRP runs over one): {0} and {1}")]
    MixedFamilies(IpAddr, IpAddr),
    #[error(
        "{0} is both a peer and an address that moves (VIP, SNAT or gateway): the peer is the \
         other node's own address"
    )]
    PeerIsVip(IpAddr),
    #[error(
        "priority {0} is out of range: 1..=254 (255 cannot be lowered by the readiness check)"
    )]
    Priority(u8),
    #[error("virtual router id 0 is not valid: 1..=255, the same on both nodes")]
    RouterId,
    #[error("advertisement interval {0} ms: VRRPv3 takes multiples of 10 ms from 10 to 40950 ms")]
    Advert(u32),
    #[error(
        "--auth-pass needs VRRPv2, which counts whole seconds and carries IPv4 only: use an \
         --advert-ms multiple of 1000 (up to 255000) and IPv4 peers, or drop --auth-pass \
         (VRRPv3, needed for sub-second intervals, has no authentication; unicast peers and \
         check_unicast_src already ignore adverts from other hosts)"
    )]
    AuthNeedsV2,
    #[error("--auth-pass must be 1 to 8 printable characters without spaces or quotes")]
    AuthPass,
    #[error("{what} {path:?} cannot go into a keepalived script line (spaces, quotes or '\\')")]
    Path { what: &'static str, path: String },
}

fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\'))
}

impl PairNode {
    fn check(&self) -> Result<(), Error> {
        if self.interface.len() > 15 || !plain(&self.interface) || self.interface.contains('/') {
            return Err(Error::Interface(self.interface.clone()));
        }
        if self.vips.is_empty() {
            return Err(Error::NoVip);
        }
        let mut seen = HashSet::new();
        for &(g, len) in &self.gateways {
            if len > if g.is_ipv4() { 32 } else { 128 } {
                return Err(Error::GatewayPrefix(g, len));
            }
        }
        for v in self.moved() {
            if !seen.insert(v) {
                return Err(Error::DuplicateVip(*v));
            }
            if v.is_unspecified() || v.is_loopback() || v.is_multicast() {
                return Err(Error::BadVip(*v));
            }
        }
        let first = *self.peers.first().ok_or(Error::NoPeer)?;
        for a in self.peers.iter().chain(&self.source) {
            if a.is_ipv4() != first.is_ipv4() {
                return Err(Error::MixedFamilies(first, *a));
            }
        }
        if let Some(p) = self.peers.iter().find(|p| self.moved().any(|m| m == *p)) {
            return Err(Error::PeerIsVip(*p));
        }
        if self.priority == 0 || self.priority == 255 {
            return Err(Error::Priority(self.priority));
        }
        if self.router_id == 0 {
            return Err(Error::RouterId);
        }
        match &self.auth_pass {
            None => {
                if self.advert_ms.checked_rem(10) != Some(0)
                    || !(10..=40_950).contains(&self.advert_ms)
                {
                    return Err(Error::Advert(self.advert_ms));
                }
            }
            Some(pass) => {
                if self.advert_ms.checked_rem(1000) != Some(0)
                    || !(1000..=255_000).contains(&self.advert_ms)
                    || !first.is_ipv4()
                {
                    return Err(Error::AuthNeedsV2);
                }
                if pass.len() > 8 || !plain(pass) {
                    return Err(Error::AuthPass);
                }
            }
        }
        for (what, path) in [("binary", &self.binary), ("socket", &self.socket)] {
            if !plain(path) {
                return Err(Error::Path {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every address keepalived moves: VIPs, SNAT addresses, gateways.
    fn moved(&self) -> impl Iterator<Item = &IpAddr> {
        self.vips
            .iter()
            .chain(&self.snat)
            .chain(self.gateways.iter().map(|(g, _)| g))
    }

    /// The keepalived.conf text, or why these settings cannot make one.
    pub fn render(&self) -> Result<String, Error> {
        self.check()?;
        let v4 = self.peers[0].is_ipv4();
        let iface = &self.interface;
        // IPv6 /128s are added deprecated (keepalived's default for /128), so the node's own
        // connections (health checks) never take a VIP or SNAT address as their source.
        let host = |a: &IpAddr| (*a, if a.is_ipv4() { 32 } else { 128 });
        let moved: Vec<(IpAddr, u8)> = self
            .vips
            .iter()
            .chain(&self.snat)
            .map(host)
            .chain(self.gateways.iter().copied())
            .collect();
        let line = |(a, len): &(IpAddr, u8)| format!("        {a}/{len} dev {iface}\n");
        let (same, other): (Vec<_>, Vec<_>) = moved.iter().partition(|(a, _)| a.is_ipv4() == v4);
        let mut c = String::new();
        let _ = write!(
            c,
            "# keepalived.conf for one node of a foobar-lb active-passive pair (printed by\n\
             # `foobar-lb keepalived-config`). The other node gets the same command with its own\n\
             # --peer (this node's address) and --priority. Both nodes run `foobar-lb run` with the\n\
             # same services and `[sync]` (each node writes the other's flows and NAT connections\n\
             # into its tables) or, for DSR services, `scheduler = \"maglev\"` (whichever holds the\n\
             # VIPs sends every connection to the backend the other one would pick), so a takeover\n\
             # resets nothing.\n\
             \n\
             global_defs {{\n\
             \x20   # `foobar-lb ready` runs as root; keepalived refuses it if any part of its path\n\
             \x20   # is writable by another user.\n\
             \x20   script_user root\n\
             \x20   enable_script_security\n\
             }}\n\
             \n\
             # Exits 0 when the local daemon answers and XDP is attached on every configured\n\
             # interface; a node that fails it gives up the VIPs (FAULT) and cannot take them.\n\
             vrrp_script foobar_lb_ready {{\n\
             \x20   script \"{bin} ready --socket {socket} --timeout 1\"\n\
             \x20   interval 1\n\
             \x20   timeout 2\n\
             \x20   rise 2\n\
             \x20   fall 2\n\
             \x20   # not eligible until the daemon has answered (start-up)\n\
             \x20   init_fail\n\
             }}\n\
             \n\
             vrrp_instance foobar_lb_{id} {{\n\
             \x20   # Both nodes start as BACKUP with nopreempt: the higher priority wins the first\n\
             \x20   # election, and a node that returns after a failure stays backup.\n\
             \x20   state BACKUP\n\
             \x20   nopreempt\n\
             \x20   interface {iface}\n\
             \x20   virtual_router_id {id}\n\
             \x20   priority {prio}\n",
            bin = self.binary,
            socket = self.socket,
            id = self.router_id,
            prio = self.priority,
        );
        match &self.auth_pass {
            None => {
                let _ = write!(
                    c,
                    "    # VRRPv3: sub-second intervals (VRRPv2 counts whole seconds); the backup\n\
                     \x20   # takes over after 3 missed adverts plus a skew of under one interval.\n\
                     \x20   version 3\n\
                     \x20   advert_int {}\n",
                    secs(self.advert_ms)
                );
            }
            Some(pass) => {
                let _ = write!(
                    c,
                    "    version 2\n\
                     \x20   advert_int {}\n\
                     \x20   authentication {{\n\
                     \x20       auth_type PASS\n\
                     \x20       auth_pass {pass}\n\
                     \x20   }}\n",
                    self.advert_ms / 1000
                );
            }
        }
        if let Some(src) = &self.source {
            let _ = writeln!(c, "    unicast_src_ip {src}");
        }
        c += "    # adverts by unicast to the other node only; adverts from other hosts are ignored\n";
        c += "    check_unicast_src\n    unicast_peer {\n";
        for p in &self.peers {
            let _ = writeln!(c, "        {p}");
        }
        c += "    }\n";
        // keepalived takes one family in virtual_ipaddress (the adverts'); the other family
        // moves with it from virtual_ipaddress_excluded.
        if !self.snat.is_empty() || !self.gateways.is_empty() {
            c += "    # with the VIPs: the SNAT addresses full-NAT backends answer and the gateway\n";
            c += "    # NAT backends route clients through, so replies reach the active node\n";
        }
        c += "    virtual_ipaddress {\n";
        same.iter().for_each(|a| c += &line(a));
        c += "    }\n";
        if !other.is_empty() {
            c += "    virtual_ipaddress_excluded {\n";
            other.iter().for_each(|a| c += &line(a));
            c += "    }\n";
        }
        c += "    track_script {\n        foobar_lb_ready\n    }\n}\n";
        Ok(c)
    }
}

/// Milliseconds as keepalived's decimal seconds (`200` -> `0.2`, `1000` -> `1`).
fn secs(ms: u32) -> String {
    let s = format!("{}.{:03}", ms / 1000, ms % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> PairNode {
        PairNode {
            interface: "eth0".into(),
            vips: vec!["10.0.0.100".parse().unwrap(), "fd00::100".parse().unwrap()],
            snat: vec![],
            gateways: vec![],
            peers: vec!["10.0.0.3".parse().unwrap()],
            source: None,
            priority: 150,
            router_id: 51,
            advert_ms: 200,
            auth_pass: None,
            binary: "/usr/local/bin/foobar-lb".into(),
            socket: "/run/foobar-lb/control.sock".into(),
        }
    }

    /// The configuration's lines without comments and indentation.
    fn lines(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn prints_a_vrrpv3_pair_node_tracking_foobar_lb_ready() {
        let text = node().render().unwrap();
        let expected = [
            "global_defs {",
            "script_user root",
            "enable_script_security",
            "}",
            "vrrp_script foobar_lb_ready {",
            "script \"/usr/local/bin/foobar-lb ready --socket /run/foobar-lb/control.sock --timeout 1\"",
            "interval 1",
            "timeout 2",
            "rise 2",
            "fall 2",
            "init_fail",
            "}",
            "vrrp_instance foobar_lb_51 {",
            "state BACKUP",
            "nopreempt",
            "interface eth0",
            "virtual_router_id 51",
            "priority 150",
            "version 3",
            "advert_int 0.2",
            "check_unicast_src",
            "unicast_peer {",
            "10.0.0.3",
            "}",
            "virtual_ipaddress {",
            "10.0.0.100/32 dev eth0",
            "}",
            "virtual_ipaddress_excluded {",
            "fd00::100/128 dev eth0",
            "}",
            "track_script {",
            "foobar_lb_ready",
            "}",
            "}",
        ];
        assert_eq!(lines(&text), expected, "{text}");
        // Balanced braces: keepalived would read past a missing one silently.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(
            text.contains("maglev"),
            "the header says why the pair needs Maglev"
        );
    }

    #[test]
    fn ipv6_peers_put_ipv6_vips_first_and_source_is_printed() {
        let mut n = node();
        n.peers = vec!["fd00::3".parse().unwrap()];
        n.source = Some("fd00::2".parse().unwrap());
        n.advert_ms = 1500;
        let l = lines(&n.render().unwrap());
        let at = |s: &str| {
            l.iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s}: {l:?}"))
        };
        assert!(at("virtual_ipaddress {") < at("fd00::100/128 dev eth0"));
        assert!(at("fd00::100/128 dev eth0") < at("virtual_ipaddress_excluded {"));
        assert!(at("virtual_ipaddress_excluded {") < at("10.0.0.100/32 dev eth0"));
        at("unicast_src_ip fd00::2");
        at("advert_int 1.5");
    }

    #[test]
    fn auth_pass_only_with_whole_second_vrrpv2() {
        let mut n = node();
        n.auth_pass = Some("s3cret".into());
        assert_eq!(n.render(), Err(Error::AuthNeedsV2));
        n.advert_ms = 1000;
        let l = lines(&n.render().unwrap());
        for want in [
            "version 2",
            "advert_int 1",
            "auth_type PASS",
            "auth_pass s3cret",
        ] {
            assert!(l.iter().any(|x| x == want), "{want}: {l:?}");
        }
        n.auth_pass = Some("toolongpass".into());
        assert_eq!(n.render(), Err(Error::AuthPass));
        n.auth_pass = Some("a b".into());
        assert_eq!(n.render(), Err(Error::AuthPass));
        let mut v6 = node();
        v6.peers = vec!["fd00::3".parse().unwrap()];
        v6.advert_ms = 1000;
        v6.auth_pass = Some("x".into());
        assert_eq!(v6.render(), Err(Error::AuthNeedsV2));
    }

    #[test]
    fn refuses_what_keepalived_would_misread() {
        let bad = |f: &dyn Fn(&mut PairNode)| {
            let mut n = node();
            f(&mut n);
            n.render().unwrap_err()
        };
        assert_eq!(bad(&|n| n.vips.clear()), Error::NoVip);
        assert_eq!(bad(&|n| n.peers.clear()), Error::NoPeer);
        assert!(matches!(
            bad(&|n| n.vips.push("10.0.0.100".parse().unwrap())),
            Error::DuplicateVip(_)
        ));
        assert!(matches!(
            bad(&|n| n.vips.push("224.0.0.18".parse().unwrap())),
            Error::BadVip(_)
        ));
        assert!(matches!(
            bad(&|n| n.peers.push("fd00::3".parse().unwrap())),
            Error::MixedFamilies(..)
        ));
        assert!(matches!(
            bad(&|n| n.source = Some("fd00::2".parse().unwrap())),
            Error::MixedFamilies(..)
        ));
        assert!(matches!(
            bad(&|n| n.peers = vec!["10.0.0.100".parse().unwrap()]),
            Error::PeerIsVip(_)
        ));
        assert_eq!(bad(&|n| n.priority = 255), Error::Priority(255));
        assert_eq!(bad(&|n| n.priority = 0), Error::Priority(0));
        assert_eq!(bad(&|n| n.router_id = 0), Error::RouterId);
        assert_eq!(bad(&|n| n.advert_ms = 205), Error::Advert(205));
        assert_eq!(bad(&|n| n.advert_ms = 0), Error::Advert(0));
        assert_eq!(bad(&|n| n.advert_ms = 41_000), Error::Advert(41_000));
        assert!(matches!(
            bad(&|n| n.interface = "eth 0".into()),
            Error::Interface(_)
        ));
        assert!(matches!(
            bad(&|n| n.interface = "a-very-long-name0".into()),
            Error::Interface(_)
        ));
        assert!(matches!(
            bad(&|n| n.binary = "/opt/my bin/foobar-lb".into()),
            Error::Path { .. }
        ));
        assert!(matches!(
            bad(&|n| n.socket = "/run/\"x".into()),
            Error::Path { .. }
        ));
    }

    #[test]
    fn snat_and_gateway_addresses_move_with_the_vips() {
        let mut n = node();
        n.snat = vec!["10.0.0.250".parse().unwrap(), "fd00::250".parse().unwrap()];
        n.gateways = vec![
            ("10.0.1.1".parse().unwrap(), 24),
            ("fd00:1::1".parse().unwrap(), 64),
        ];
        let text = n.render().unwrap();
        let l = lines(&text);
        let block = |name: &str| -> Vec<String> {
            let start = l.iter().position(|x| x == name).expect(name) + 1;
            let len = l[start..].iter().position(|x| x == "}").unwrap();
            l[start..start + len].to_vec()
        };
        assert_eq!(
            block("virtual_ipaddress {"),
            [
                "10.0.0.100/32 dev eth0",
                "10.0.0.250/32 dev eth0",
                "10.0.1.1/24 dev eth0"
            ]
        );
        assert_eq!(
            block("virtual_ipaddress_excluded {"),
            [
                "fd00::100/128 dev eth0",
                "fd00::250/128 dev eth0",
                "fd00:1::1/64 dev eth0"
            ]
        );
        assert!(text.contains("gateway"), "the config says why: {text}");
        // Without them, no such comment.
        assert!(!node().render().unwrap().contains("SNAT"));
    }

    #[test]
    fn snat_and_gateway_addresses_are_checked_as_vips_are() {
        let bad = |f: &dyn Fn(&mut PairNode)| {
            let mut n = node();
            f(&mut n);
            n.render().unwrap_err()
        };
        assert!(matches!(
            bad(&|n| n.snat.push("10.0.0.100".parse().unwrap())),
            Error::DuplicateVip(_)
        ));
        assert!(matches!(
            bad(&|n| n.gateways.push(("10.0.0.100".parse().unwrap(), 24))),
            Error::DuplicateVip(_)
        ));
        assert!(matches!(
            bad(&|n| n.snat.push("0.0.0.0".parse().unwrap())),
            Error::BadVip(_)
        ));
        assert!(matches!(
            bad(&|n| n.gateways.push(("10.0.1.1".parse().unwrap(), 33))),
            Error::GatewayPrefix(_, 33)
        ));
        assert!(matches!(
            bad(&|n| n.gateways.push(("fd00:1::1".parse().unwrap(), 129))),
            Error::GatewayPrefix(_, 129)
        ));
        assert!(matches!(
            bad(&|n| n.snat.push("10.0.0.3".parse().unwrap())),
            Error::PeerIsVip(_)
        ));
        assert!(matches!(
            bad(&|n| n.gateways.push(("10.0.0.3".parse().unwrap(), 24))),
            Error::PeerIsVip(_)
        ));
    }

    #[test]
    fn seconds_are_printed_without_trailing_zeros() {
        assert_eq!(secs(200), "0.2");
        assert_eq!(secs(10), "0.01");
        assert_eq!(secs(1000), "1");
        assert_eq!(secs(1250), "1.25");
        assert_eq!(secs(40_950), "40.95");
    }
}
