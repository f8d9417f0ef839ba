//! Two rewirings of the [`Topology`] for NAT and full NAT end to end:
//!
//! - [`Topology::backends_behind_router`]: the web servers leave the client's segment for
//!   subnets of their own behind a router namespace (full NAT's "anywhere routable": the
//!   balancer reaches them through the router and has no neighbour entry for them);
//! - [`Topology::two_arm`]: the client leaves the bridge for a second interface of the
//!   balancer (`eth1`, a subnet of its own): clients on one arm, backends on the other, so
//!   the balancer sends every frame out of the interface it did not come in on.
//!
//! Both give what they create to the returned [`Netns`] guards or to the topology's, so
//! everything is removed on every path.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::netns::{run, web4, web6, Netns, Topology, LB4, LB6};

/// Web server `i`'s IPv4 address behind the router (its own /24).
pub fn routed4(i: usize) -> String {
    format!("10.112.{i}.11")
}

/// Web server `i`'s IPv6 address behind the router (its own /64).
pub fn routed6(i: usize) -> String {
    format!("fd00:f00c:{i}::11")
}

/// The router's address on the client's segment.
pub const ROUTER4: &str = "10.111.0.3";
pub const ROUTER6: &str = "fd00:f00b::3";

/// The client's side of a two-arm balancer: the client, the balancer's `eth1`.
pub const ARM_CLIENT4: &str = "10.114.0.1";
pub const ARM_CLIENT6: &str = "fd00:f00d::1";
pub const ARM_LB4: &str = "10.114.0.2";
pub const ARM_LB6: &str = "fd00:f00d::2";

/// The client of [`Topology::client_behind_small_mtu_router`].
pub const FAR_CLIENT4: &str = "10.112.0.2";
pub const FAR_CLIENT6: &str = "fd00:f00c::2";

/// A client behind a router ([`Topology::client_behind_small_mtu_router`]). Field order is
/// drop order: the client's namespace, then the router's.
pub struct FarClient {
    pub client: Netns,
    pub router: Netns,
}

impl Topology {
    /// Path-MTU discovery's topology: a router on the bridge (10.111.0.9, fd00:f00b::9) and a
    /// client behind it ([`FAR_CLIENT4`], [`FAR_CLIENT6`], default routes via the router) on a
    /// link whose MTU is 1280 on the router's side (the client's own interface says 1500, so
    /// its MSS does not help). The backends' full-size segments to the client then meet the
    /// router's "fragmentation needed" / "packet too big". How the backends' answers reach the
    /// client's subnet is the caller's (NAT: a route via the balancer).
    pub fn client_behind_small_mtu_router(&self) -> Result<FarClient> {
        let router = self.router_on_bridge("10.111.0.9/24", "fd00:f00b::9/64")?;
        let client = Netns::new(&format!("{}fc", self.prefix))?;
        router.ip(&[
            "link",
            "add",
            "down0",
            "mtu",
            "1280",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.name,
        ])?;
        for a in [format!("{FAR_CLIENT4}/24"), format!("{FAR_CLIENT6}/64")] {
            client.ip(&["addr", "add", &a, "dev", "eth0", "nodad"])?;
        }
        client.ip(&["link", "set", "eth0", "up"])?;
        // Frames the balancer rewrites must carry full checksums (TESTING-NETNS.md).
        run(client.cmd("ethtool").args(["-K", "eth0", "tx", "off"]))?;
        for a in ["10.112.0.1/24", "fd00:f00c::1/64"] {
            router.ip(&["addr", "add", a, "dev", "down0", "nodad"])?;
        }
        router.ip(&["link", "set", "down0", "up"])?;
        client.ip(&["route", "add", "default", "via", "10.112.0.1"])?;
        client.ip(&["-6", "route", "add", "default", "via", "fd00:f00c::1"])?;
        Ok(FarClient { client, router })
    }

    /// A new router namespace (`<prefix>rt`) on the bridge: its `eth0` at `v4` and `v6`
    /// (with prefix lengths), forwarding on, no reverse-path filter, no DAD, `tx` checksum
    /// offload off (it forwards frames the balancer rewrites: TESTING-NETNS.md).
    fn router_on_bridge(&self, v4: &str, v6: &str) -> Result<Netns> {
        let router = Netns::new(&format!("{}rt", self.prefix))?;
        self.bridge.ip(&[
            "link",
            "add",
            "rt",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &router.name,
        ])?;
        self.bridge
            .ip(&["link", "set", "rt", "master", "br0", "up"])?;
        router.ip(&["link", "set", "eth0", "up"])?;
        for a in [v4, v6] {
            router.ip(&["addr", "add", a, "dev", "eth0", "nodad"])?;
        }
        for key in ["all", "default", "eth0"] {
            router.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        router.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        router.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        router.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        run(router.cmd("ethtool").args(["-K", "eth0", "tx", "off"]))?;
        Ok(router)
    }

    /// Path-MTU discovery through the balancer, seen from `far`'s client: an 8 MiB download
    /// per VIP family arrives intact (SHA-256; it stalls unless the backends lower their path
    /// MTU), and some web server's route towards each of `towards` (the client's addresses
    /// under NAT, the SNAT addresses under full NAT) holds the router's 1280, learnt from the
    /// ICMP errors the balancer translated.
    pub fn assert_path_mtu_learnt(&self, far: &FarClient, towards: [&str; 2]) {
        let want = self.big_file("big8", 8).unwrap();
        for url in [
            format!("http://{}/big8", crate::netns::VIP4),
            format!("http://[{}]/big8", crate::netns::VIP6),
        ] {
            let out = self.dir.join("download-far");
            assert_eq!(
                crate::traffic::download_sha256(&far.client, &url, &out),
                want,
                "{url}: content differs"
            );
        }
        for dst in towards {
            let learnt = self.webs.iter().any(|web| {
                let out = web.ip(&["route", "get", dst]).unwrap();
                String::from_utf8_lossy(&out.stdout).contains("mtu 1280")
            });
            assert!(learnt, "no backend learnt the path MTU to {dst}");
        }
    }

    /// Moves every web server off the bridge into a subnet of its own behind a new router
    /// namespace ([`routed4`], [`routed6`]; default routes via the router), which sits on the
    /// bridge at [`ROUTER4`]/[`ROUTER6`]. The balancer routes the backends' subnets via the
    /// router; nothing else changes. Returns the router (keep it: it is removed on drop).
    pub fn backends_behind_router(&self) -> Result<Netns> {
        let router = self.router_on_bridge(&format!("{ROUTER4}/24"), &format!("{ROUTER6}/64"))?;
        for (i, web) in self.webs.iter().enumerate() {
            let i = i + 1;
            let port = format!("w{i}");
            // Deleting the bridge's end deletes the web server's eth0 with it.
            self.bridge.ip(&["link", "del", &port])?;
            // The new eth0 takes `default`'s settings.
            web.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            router.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &web.name,
            ])?;
            router.ip(&["link", "set", &port, "up"])?;
            for a in [format!("10.112.{i}.1/24"), format!("fd00:f00c:{i}::1/64")] {
                router.ip(&["addr", "add", &a, "dev", &port, "nodad"])?;
            }
            web.ip(&["link", "set", "eth0", "up"])?;
            for a in [format!("{}/24", routed4(i)), format!("{}/64", routed6(i))] {
                web.ip(&["addr", "add", &a, "dev", "eth0", "nodad"])?;
            }
            web.ip(&["route", "add", "default", "via", &format!("10.112.{i}.1")])?;
            web.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:f00c:{i}::1"),
            ])?;
            // Frames the balancer's XDP program rewrites must carry full checksums
            // (TESTING-NETNS.md): the web servers and the router forwarding for them.
            run(web.cmd("ethtool").args(["-K", "eth0", "tx", "off"]))?;
            run(router.cmd("ethtool").args(["-K", &port, "tx", "off"]))?;
        }
        self.lb
            .ip(&["route", "add", "10.112.0.0/16", "via", ROUTER4])?;
        self.lb
            .ip(&["-6", "route", "add", "fd00:f00c::/32", "via", ROUTER6])?;
        Ok(router)
    }

    /// [`Topology::write_fullnat_config`] with the backends at their addresses behind the
    /// router ([`Topology::backends_behind_router`]).
    pub fn write_routed_fullnat_config(
        &self,
        xdp_mode: &str,
        socket: &Path,
        port: u16,
    ) -> Result<PathBuf> {
        let path = self.write_fullnat_config(xdp_mode, socket, port, "")?;
        let mut c = std::fs::read_to_string(&path)?;
        for i in 1..=self.webs.len() {
            let addr = |a: String| format!("address = \"{a}\"");
            c = c.replace(&addr(web4(i)), &addr(routed4(i)));
            c = c.replace(&addr(web6(i)), &addr(routed6(i)));
        }
        std::fs::write(&path, c)?;
        Ok(path)
    }

    /// A daemon config (written by one of the `write_*config` methods) made two-armed:
    /// the balancer runs on both `eth0` and `eth1`.
    pub fn two_arm_config(&self, path: PathBuf) -> Result<PathBuf> {
        let c = std::fs::read_to_string(&path)?;
        anyhow::ensure!(
            c.contains("interfaces = [\"eth0\"]"),
            "unexpected config: {c}"
        );
        std::fs::write(
            &path,
            c.replace(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\", \"eth1\"]",
            ),
        )?;
        Ok(path)
    }

    /// Makes the balancer two-armed: the client leaves the bridge for a veth of its own to the
    /// balancer's new `eth1` ([`ARM_CLIENT4`] / [`ARM_LB4`], default route via the balancer),
    /// and the VIPs move to `eth1`. The web servers stay on `eth0`'s segment; NAT backends
    /// also route the client's subnet via the balancer ([`LB4`]). Call after
    /// `nat_backends` or `fullnat_setup`.
    pub fn two_arm(&self) -> Result<()> {
        // Deleting the bridge's end deletes the client's eth0 with it.
        self.bridge.ip(&["link", "del", "c"])?;
        // The new interfaces take `default`'s settings.
        for ns in [&self.client, &self.lb] {
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        self.client.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            &self.lb.name,
        ])?;
        self.client.ip(&["link", "set", "eth0", "up"])?;
        self.lb.ip(&["link", "set", "eth1", "up"])?;
        for a in [format!("{ARM_CLIENT4}/24"), format!("{ARM_CLIENT6}/64")] {
            self.client
                .ip(&["addr", "add", &a, "dev", "eth0", "nodad"])?;
        }
        self.client
            .ip(&["route", "add", "default", "via", ARM_LB4])?;
        self.client
            .ip(&["-6", "route", "add", "default", "via", ARM_LB6])?;
        run(self.client.cmd("ethtool").args(["-K", "eth0", "tx", "off"]))?;
        for a in [format!("{ARM_LB4}/24"), format!("{ARM_LB6}/64")] {
            self.lb.ip(&["addr", "add", &a, "dev", "eth1", "nodad"])?;
        }
        self.lb.sysctl("net.ipv4.conf.eth1.rp_filter", "0")?;
        let vip4 = format!("{}/32", crate::netns::VIP4);
        let vip6 = format!("{}/128", crate::netns::VIP6);
        self.lb.ip(&["addr", "del", &vip4, "dev", "eth0"])?;
        self.lb.ip(&["addr", "del", &vip6, "dev", "eth0"])?;
        self.lb.ip(&["addr", "add", &vip4, "dev", "eth1"])?;
        // Deprecated, as on eth0 (see `Topology::configure`).
        self.lb.ip(&[
            "addr",
            "add",
            &vip6,
            "dev",
            "eth1",
            "nodad",
            "preferred_lft",
            "0",
        ])?;
        self.lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        self.lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for web in &self.webs {
            web.ip(&["route", "replace", "10.114.0.0/24", "via", LB4])?;
            web.ip(&["-6", "route", "replace", "fd00:f00d::/64", "via", LB6])?;
        }
        Ok(())
    }

    /// In native mode a veth delivers frames redirected into it only if its peer has an XDP
    /// program (TESTING-NETNS.md): XDP_PASS on the client's end of `eth1` and on the bridge's
    /// end of `eth0`. Keep the values alive.
    pub fn attach_two_arm_peer_pass(&self) -> Result<[foobar_lb::dataplane::AuxProgram; 2]> {
        let bridge_side = self.attach_lb_peer_pass()?;
        let client_side = crate::netns::in_netns(&self.client.name, || {
            let mut p = foobar_lb::dataplane::AuxProgram::pass()?;
            p.attach("eth0", foobar_lb::config::XdpMode::Native)?;
            Ok(p)
        })?;
        Ok([bridge_side, client_side])
    }
}
