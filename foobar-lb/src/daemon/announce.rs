//! `[announce]` (active-active behind ECMP routers): while this node serves, each service VIP
//! is a host address (/32, /128) on the announce interface, where the node's BGP daemon (BIRD's
//! `protocol direct`, configured by `foobar-lb bird-config`) picks it up and announces it; the
//! routers then spread flows over every node announcing it. Withdrawn when the node is drained
//! (`foobar-lb node drain`), not ready (XDP missing on an interface) or stopping with
//! `--detach-on-exit`. A daemon that dies leaves them: its pinned data plane still forwards.
//!
//! The interface is the daemon's: host addresses on it that are not wanted are removed. The
//! addresses are read and changed over rtnetlink (RTM_GETADDR, RTM_NEWADDR, RTM_DELADDR).

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::{bail, Context, Result};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
    AddressFamily, RouteNetlinkMessage,
};

use super::Daemon;

/// After withdrawing on exit, how long the data plane keeps forwarding so the routers move
/// the flows first (a BGP withdraw reaches a router in well under a second).
pub(super) const WITHDRAW_GRACE: Duration = Duration::from_secs(2);

/// Fails with the fix when `[announce]` names an interface this host does not have.
pub(super) fn check_interface(name: &str) -> Result<()> {
    // By index, in this network namespace (/sys may be another namespace's mount).
    if ifindex(name).is_err() {
        bail!(
            "announce.interface {name:?} does not exist: create it (`ip link add {name} type \
             dummy && ip link set {name} up`) or remove [announce]"
        );
    }
    Ok(())
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("interface {iface} does not exist"),
        i => Ok(i),
    }
}

/// The host addresses (/32, /128, global scope) on `iface`.
fn host_addresses(iface: &str) -> Result<BTreeSet<IpAddr>> {
    let index = ifindex(iface)?;
    Ok(addresses()
        .with_context(|| format!("reading the addresses of {iface}"))?
        .into_iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| host_address(&a))
        .collect())
}

/// Every address of the host (one RTM_GETADDR dump).
fn addresses() -> std::io::Result<Vec<AddressMessage>> {
    Ok(crate::rtnetlink::request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_DUMP,
    )?
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a) => Some(a),
        _ => None,
    })
    .collect())
}

/// Which of `vips` are addresses of the interfaces `ifaces` (what keepalived moves).
pub(super) fn held(vips: &BTreeSet<IpAddr>, ifaces: &[String]) -> Vec<IpAddr> {
    let indexes: Vec<u32> = ifaces.iter().filter_map(|i| ifindex(i).ok()).collect();
    let Ok(all) = addresses() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = all
        .iter()
        .filter(|a| indexes.contains(&a.header.index))
        .filter_map(address_of)
        .filter(|ip| vips.contains(ip))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The address of `a` if it is a global host address (/32 or /128).
fn host_address(a: &AddressMessage) -> Option<IpAddr> {
    let ip = address_of(a)?;
    let host = if ip.is_ipv4() { 32 } else { 128 };
    (a.header.prefix_len == host && a.header.scope == AddressScope::Universe).then_some(ip)
}

/// The address an address message is about.
fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    let ip = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    // IPv6 addresses carry only IFA_ADDRESS.
    ip.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// Adds (`add`) or removes `vip` as a host address of `iface`.
fn change_address(add: bool, vip: IpAddr, iface: &str) -> Result<()> {
    let mut m = AddressMessage::default();
    m.header.index = ifindex(iface)?;
    m.header.family = if vip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.prefix_len = if vip.is_ipv4() { 32 } else { 128 };
    m.header.scope = AddressScope::Universe;
    if vip.is_ipv6() {
        // No duplicate address detection: the VIP is shared with the other nodes by design.
        m.header.flags = AddressHeaderFlags::Nodad;
    }
    m.attributes.push(AddressAttribute::Local(vip));
    m.attributes.push(AddressAttribute::Address(vip));
    let (payload, flags) = if add {
        (
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
    } else {
        (RouteNetlinkMessage::DelAddress(m), NLM_F_ACK)
    };
    crate::rtnetlink::request(payload, flags).with_context(|| {
        format!(
            "{} {vip} {} {iface}",
            if add { "adding" } else { "removing" },
            if add { "to" } else { "from" }
        )
    })?;
    Ok(())
}

impl Daemon {
    /// The VIPs this node should announce now: every service's, while it is ready (a drained
    /// node is not); none otherwise.
    fn wanted_announcements(&self) -> BTreeSet<IpAddr> {
        match &self.config.announce {
            Some(_) if self.readiness().is_ok() => {
                self.config.services.iter().map(|s| s.vip).collect()
            }
            _ => BTreeSet::new(),
        }
    }

    /// Makes the announce interface hold exactly the wanted VIPs. Called after every change
    /// and on the refresh timer; logs only what it changes or fails to change.
    pub(super) fn sync_announcements(&mut self) {
        let Some(iface) = self.config.announce.as_ref().map(|a| a.interface.clone()) else {
            return;
        };
        let want = self.wanted_announcements();
        if let Err(e) = sync(&iface, &want) {
            log::error!(event = "announce_failed", interface = iface.as_str(), reason:% = format!("{e:#}"); "announcing VIPs on {iface} failed: {e:#}");
        }
    }

    /// Withdraws every VIP (on exit with `--detach-on-exit`); true if any was announced.
    pub(super) fn withdraw_announcements(&mut self) -> bool {
        let Some(iface) = self.config.announce.as_ref().map(|a| a.interface.clone()) else {
            return false;
        };
        let had = host_addresses(&iface)
            .map(|s| !s.is_empty())
            .unwrap_or(false);
        if let Err(e) = sync(&iface, &BTreeSet::new()) {
            log::error!(event = "announce_failed", interface = iface.as_str(), reason:% = format!("{e:#}"); "withdrawing VIPs from {iface} failed: {e:#}");
        }
        had
    }

    /// `node drain` / `node undrain`: the node says it is not ready (keepalived's track script
    /// gives the VIPs to the other node) and withdraws its `[announce]` routes; the answer says
    /// what changed.
    pub(super) fn node_drain(&mut self, drained: bool) -> Result<String> {
        self.config.drained = drained;
        self.readiness_gate.set_drained(drained);
        self.sync_announcements();
        let msg = match (&self.config.announce, drained) {
            (Some(a), true) => format!(
                "drained: not ready, VIPs withdrawn from {}; established flows keep forwarding \
                 here until the routers move them",
                a.interface
            ),
            (Some(a), false) => match self.readiness() {
                Ok(_) => format!(
                    "undrained: announcing {} VIP(s) on {}",
                    host_addresses(&a.interface)?.len(),
                    a.interface
                ),
                Err(why) => format!("undrained, but announcing nothing: {why}"),
            },
            (None, true) => "drained: `foobar-lb ready` fails, so keepalived gives the VIPs to \
                             the other node; whatever still arrives here is forwarded"
                .to_string(),
            (None, false) => match self.readiness() {
                Ok(_) => "undrained: ready again (keepalived may give this node the VIPs)".into(),
                Err(why) => format!("undrained, but still {why}"),
            },
        };
        log::info!(event = "node_drain", drained = drained; "{msg}");
        Ok(msg)
    }

    /// For `status`: the interface, whether drained, and what is announced now.
    pub(super) fn announce_stats(&self) -> Option<crate::api::AnnounceStats> {
        let a = self.config.announce.as_ref()?;
        Some(crate::api::AnnounceStats {
            interface: a.interface.clone(),
            drained: self.config.drained,
            announced: host_addresses(&a.interface)
                .map(|s| s.iter().map(IpAddr::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

fn sync(iface: &str, want: &BTreeSet<IpAddr>) -> Result<()> {
    let have = host_addresses(iface)?;
    for vip in want.difference(&have) {
        change_address(true, *vip, iface)?;
        log::info!(event = "announce", vip:% = vip, interface = iface; "announcing {vip} on {iface}");
    }
    for vip in have.difference(want) {
        change_address(false, *vip, iface)?;
        log::info!(event = "withdraw", vip:% = vip, interface = iface; "withdrew {vip} from {iface}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, len: u8, scope: AddressScope) -> AddressMessage {
        let ip: IpAddr = ip.parse().unwrap();
        let mut m = AddressMessage::default();
        m.header.prefix_len = len;
        m.header.scope = scope;
        // IPv4 carries IFA_LOCAL, IPv6 only IFA_ADDRESS.
        m.attributes.push(if ip.is_ipv4() {
            AddressAttribute::Local(ip)
        } else {
            AddressAttribute::Address(ip)
        });
        m
    }

    #[test]
    fn only_global_host_addresses_count_as_announced() {
        let got: Vec<Option<IpAddr>> = [
            addr("10.0.0.100", 32, AddressScope::Universe),
            addr("10.0.1.1", 24, AddressScope::Universe),
            addr("fd00::100", 128, AddressScope::Universe),
            addr("fe80::1", 64, AddressScope::Link),
            addr("::1", 128, AddressScope::Host),
        ]
        .iter()
        .map(host_address)
        .collect();
        let want: Vec<Option<IpAddr>> = vec![
            Some("10.0.0.100".parse().unwrap()),
            None,
            Some("fd00::100".parse().unwrap()),
            None,
            None,
        ];
        assert_eq!(got, want);
    }
}
