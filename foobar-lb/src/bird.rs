//! `foobar-lb bird-config`: the BIRD 2 configuration of one node of an active-active group.
//!
//! Every node runs `foobar-lb run` with the same services (Maglev, so every node picks the same
//! backend for a flow) and `[announce]`: the daemon keeps the VIPs as host addresses on the
//! announce interface while the node serves. BIRD's `direct` protocol reads them from there
//! and BGP announces them to the routers, which install one multipath route per VIP over every
//! node announcing it. A drained, stopped or unready node has no addresses there, so its
//! routes are withdrawn; a node that dies is noticed by BFD (3 x `bfd_ms`) or, without BFD,
//! by the BGP hold timer.

use std::{fmt::Write, net::IpAddr};

/// One node's BGP side.
#[derive(Debug, Clone)]
pub struct BgpNode {
    /// The node's own address on the routers' segment (BGP source, router id if IPv4).
    pub local: IpAddr,
    /// The routers' addresses: one BGP session each, of that address's family.
    pub routers: Vec<IpAddr>,
    pub local_as: u32,
    pub router_as: u32,
    /// Where the daemon puts the VIPs (`[announce] interface`).
    pub announce_interface: String,
    /// The interface facing the routers (BFD runs there).
    pub interface: String,
    /// BFD interval in ms (detection after three missed); 0: no BFD, the hold timer only.
    pub bfd_ms: u32,
    /// BGP hold time in seconds (3..=65535); keepalives every third of it.
    pub hold_s: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("bad interface name {0:?}: 1 to 15 characters, no spaces, quotes or '/'")]
    Interface(String),
    #[error("at least one --router (a BGP neighbour's address) is needed")]
    NoRouter,
    #[error("router {0} is given twice")]
    DuplicateRouter(IpAddr),
    #[error("router {0} is this node's own address")]
    RouterIsLocal(IpAddr),
    #[error("AS number 0 is not valid")]
    As,
    #[error("--local-as and --router-as are equal ({0}): the routers speak eBGP to the nodes")]
    SameAs(u32),
    #[error("hold time {0} s is out of range 3..=65535")]
    Hold(u16),
    #[error("BFD interval {0} ms is out of range 10..=10000 (0 turns BFD off)")]
    Bfd(u32),
    #[error("--local must be the node's IPv4 address: BIRD's router id is IPv4 (IPv6 sessions still work)")]
    RouterId,
}

fn valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'"' | b'\''))
}

impl BgpNode {
    pub fn validate(&self) -> Result<(), Error> {
        for i in [&self.announce_interface, &self.interface] {
            if !valid_ifname(i) {
                return Err(Error::Interface(i.clone()));
            }
        }
        if self.routers.is_empty() {
            return Err(Error::NoRouter);
        }
        for (i, r) in self.routers.iter().enumerate() {
            if self.routers[..i].contains(r) {
                return Err(Error::DuplicateRouter(*r));
            }
            if *r == self.local {
                return Err(Error::RouterIsLocal(*r));
            }
        }
        if self.local_as == 0 || self.router_as == 0 {
            return Err(Error::As);
        }
        if self.local_as == self.router_as {
            return Err(Error::SameAs(self.local_as));
        }
        if self.hold_s < 3 {
            return Err(Error::Hold(self.hold_s));
        }
        if self.bfd_ms != 0 && !(10..=10_000).contains(&self.bfd_ms) {
            return Err(Error::Bfd(self.bfd_ms));
        }
        if !self.local.is_ipv4() {
            return Err(Error::RouterId);
        }
        Ok(())
    }

    /// The whole bird.conf.
    pub fn render(&self) -> Result<String, Error> {
        self.validate()?;
        let mut c = String::new();
        let _ = writeln!(
            c,
            "# BIRD 2 configuration written by `foobar-lb bird-config`: announce this node's VIPs\n\
             # (host addresses foobar-lb keeps on {ann} while it serves) to the routers over BGP.\n\
             router id {local};\n\n\
             protocol device {{ scan time 1; }}\n\n\
             # The VIPs: present only while this node serves and is not drained.\n\
             protocol direct vips {{\n  ipv4;\n  ipv6;\n  interface \"{ann}\";\n}}\n",
            ann = self.announce_interface,
            local = self.local,
        );
        let bfd = self.bfd_ms != 0;
        if bfd {
            let _ = writeln!(
                c,
                "# A dead node is noticed after three missed BFD packets.\n\
                 protocol bfd {{\n  interface \"{i}\" {{\n    min rx interval {ms} ms;\n    \
                 min tx interval {ms} ms;\n    multiplier 3;\n  }};\n}}\n",
                i = self.interface,
                ms = self.bfd_ms
            );
        }
        for (n, r) in self.routers.iter().enumerate() {
            let fam = if r.is_ipv4() { "ipv4" } else { "ipv6" };
            // An IPv6 session needs the node's IPv6 source; BIRD picks it from the interface.
            let local = if r.is_ipv4() == self.local.is_ipv4() {
                format!("local {} ", self.local)
            } else {
                String::new()
            };
            let _ = writeln!(
                c,
                "protocol bgp router{n} {{\n  {local}as {las};\n  neighbor {r} as {ras};\n  \
                 interface \"{i}\";\n  hold time {hold};\n  keepalive time {ka};\n  \
                 connect retry time 1;\n  error wait time 1, 10;\n{bfd}  {fam} {{\n    import none;\n    \
                 export where proto = \"vips\" && net.len = {len};\n  }};\n}}\n",
                las = self.local_as,
                ras = self.router_as,
                i = self.interface,
                hold = self.hold_s,
                ka = (self.hold_s / 3).max(1),
                bfd = if bfd { "  bfd on;\n" } else { "" },
                len = if r.is_ipv4() { 32 } else { 128 },
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> BgpNode {
        BgpNode {
            local: "10.0.0.2".parse().unwrap(),
            routers: vec!["10.0.0.1".parse().unwrap()],
            local_as: 65001,
            router_as: 65000,
            announce_interface: "lbvips".into(),
            interface: "eth0".into(),
            bfd_ms: 100,
            hold_s: 3,
        }
    }

    #[test]
    fn renders_one_session_per_router_exporting_only_the_vips() {
        let mut n = node();
        n.routers.push("fd00::1".parse().unwrap());
        let c = n.render().unwrap();
        assert!(c.contains("router id 10.0.0.2;"));
        assert!(c.contains("interface \"lbvips\";"));
        assert!(c.contains("neighbor 10.0.0.1 as 65000;"));
        assert!(c.contains("local 10.0.0.2 as 65001;"));
        assert!(c.contains("export where proto = \"vips\" && net.len = 32;"));
        assert!(c.contains("neighbor fd00::1 as 65000;"));
        assert!(c.contains("export where proto = \"vips\" && net.len = 128;"));
        assert!(c.contains("min rx interval 100 ms;"));
        assert_eq!(c.matches("bfd on;").count(), 2);
        assert!(c.contains("import none;"));
    }

    #[test]
    fn without_bfd_the_hold_timer_decides() {
        let mut n = node();
        n.bfd_ms = 0;
        n.hold_s = 9;
        let c = n.render().unwrap();
        assert!(!c.contains("bfd"));
        assert!(c.contains("hold time 9;") && c.contains("keepalive time 3;"));
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        type Change = Box<dyn Fn(&mut BgpNode)>;
        let cases: Vec<(Change, Error)> = vec![
            (Box::new(|n| n.routers.clear()), Error::NoRouter),
            (
                Box::new(|n| n.routers.push(n.routers[0])),
                Error::DuplicateRouter("10.0.0.1".parse().unwrap()),
            ),
            (
                Box::new(|n| n.routers = vec![n.local]),
                Error::RouterIsLocal("10.0.0.2".parse().unwrap()),
            ),
            (Box::new(|n| n.local_as = 0), Error::As),
            (Box::new(|n| n.router_as = 65001), Error::SameAs(65001)),
            (Box::new(|n| n.hold_s = 2), Error::Hold(2)),
            (Box::new(|n| n.bfd_ms = 5), Error::Bfd(5)),
            (
                Box::new(|n| n.announce_interface = "a b".into()),
                Error::Interface("a b".into()),
            ),
            (
                Box::new(|n| n.local = "fd00::2".parse().unwrap()),
                Error::RouterId,
            ),
        ];
        for (change, want) in cases {
            let mut n = node();
            change(&mut n);
            assert_eq!(n.render().unwrap_err(), want);
        }
    }
}
