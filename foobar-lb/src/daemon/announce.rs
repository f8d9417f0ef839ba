//! `[announce]` (active-active behind ECMP routers): while this node serves, each service VIP
//! is a host address (/32, /128) on the announce interface, where the node's BGP daemon (BIRD's
//! `protocol direct`, configured by `foobar-lb bird-config`) picks it up and announces it; the
//! routers then spread flows over every node announcing it. Withdrawn when the node is drained
//! (`foobar-lb node drain`), not ready (XDP missing on an interface) or stopping with
//! `--detach-on-exit`. A daemon that dies leaves them: its pinned data plane still forwards.
//!
//! The interface is the daemon's: host addresses on it that are not wanted are removed.

use std::{collections::BTreeSet, net::IpAddr, process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use super::Daemon;

/// After withdrawing on exit, how long the data plane keeps forwarding so the routers move
/// the flows first (a BGP withdraw reaches a router in well under a second).
pub(super) const WITHDRAW_GRACE: Duration = Duration::from_secs(2);

/// Fails with the fix when `[announce]` names an interface this host does not have.
pub(super) fn check_interface(name: &str) -> Result<()> {
    // By index, in this network namespace (/sys may be another namespace's mount).
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        bail!(
            "announce.interface {name:?} does not exist: create it (`ip link add {name} type \
             dummy && ip link set {name} up`) or remove [announce]"
        );
    }
    Ok(())
}

/// The host addresses (/32, /128, global scope) on `iface`.
fn host_addresses(iface: &str) -> Result<BTreeSet<IpAddr>> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", iface])
        .output()
        .context("cannot run `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip addr show dev {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_host_addresses(&out.stdout)
}

fn parse_host_addresses(json: &[u8]) -> Result<BTreeSet<IpAddr>> {
    let links: serde_json::Value = serde_json::from_slice(json).context("ip -j addr output")?;
    let mut set = BTreeSet::new();
    for link in links.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            let Ok(ip) = local.parse::<IpAddr>() else {
                continue;
            };
            let host = if ip.is_ipv4() { 32 } else { 128 };
            if len == host && a["scope"].as_str() == Some("global") {
                set.insert(ip);
            }
        }
    }
    Ok(set)
}

fn ip_addr(op: &str, vip: IpAddr, iface: &str) -> Result<()> {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let mut cmd = Command::new("ip");
    cmd.args(["addr", op, &format!("{vip}/{prefix}"), "dev", iface]);
    if vip.is_ipv6() && op == "add" {
        cmd.arg("nodad");
    }
    let out = cmd.output().context("cannot run `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip addr {op} {vip}/{prefix} dev {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Daemon {
    /// The VIPs this node should announce now: every service's, while it is ready and not
    /// drained; none otherwise.
    fn wanted_announcements(&self) -> BTreeSet<IpAddr> {
        match &self.config.announce {
            Some(a) if !a.drained && self.readiness().is_ok() => {
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

    /// `node drain` / `node undrain`: the answer says what changed.
    pub(super) fn node_drain(&mut self, drained: bool) -> Result<String> {
        let Some(a) = self.config.announce.as_mut() else {
            bail!(
                "this node announces nothing: `node drain` withdraws the VIPs named in \
                 [announce] (active-active over BGP); see README \"Active-active\""
            );
        };
        a.drained = drained;
        let iface = a.interface.clone();
        self.sync_announcements();
        let now = host_addresses(&iface)?;
        let msg = if drained {
            format!("drained: VIPs withdrawn from {iface}; established flows keep forwarding here until the routers move them")
        } else {
            format!("announcing {} VIP(s) on {iface}", now.len())
        };
        log::info!(event = "node_drain", drained = drained; "{msg}");
        Ok(msg)
    }

    /// For `status`: the interface, whether drained, and what is announced now.
    pub(super) fn announce_stats(&self) -> Option<crate::api::AnnounceStats> {
        let a = self.config.announce.as_ref()?;
        Some(crate::api::AnnounceStats {
            interface: a.interface.clone(),
            drained: a.drained,
            announced: host_addresses(&a.interface)
                .map(|s| s.iter().map(IpAddr::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

fn sync(iface: &str, want: &BTreeSet<IpAddr>) -> Result<()> {
    let have = host_addresses(iface)?;
    for vip in want.difference(&have) {
        ip_addr("add", *vip, iface)?;
        log::info!(event = "announce", vip:% = vip, interface = iface; "announcing {vip} on {iface}");
    }
    for vip in have.difference(want) {
        ip_addr("del", *vip, iface)?;
        log::info!(event = "withdraw", vip:% = vip, interface = iface; "withdrew {vip} from {iface}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_host_addresses_count_as_announced() {
        let json = br#"[{"ifname":"lbvips","addr_info":[
            {"family":"inet","local":"10.0.0.100","prefixlen":32,"scope":"global"},
            {"family":"inet","local":"10.0.1.1","prefixlen":24,"scope":"global"},
            {"family":"inet6","local":"fd00::100","prefixlen":128,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
            {"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]}]"#;
        let got: Vec<String> = parse_host_addresses(json)
            .unwrap()
            .iter()
            .map(IpAddr::to_string)
            .collect();
        assert_eq!(got, ["10.0.0.100", "fd00::100"]);
    }
}
