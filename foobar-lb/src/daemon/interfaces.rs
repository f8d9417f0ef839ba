//! The interfaces XDP runs on: attached at start, detached from interfaces the configuration
//! no longer names, and attached again when a device is deleted and created anew (its XDP
//! attachment went with the old device): on the kernel's link events, and on the fallback
//! timer.

use anyhow::Result;

use super::Daemon;
use crate::{dataplane::Attached, netdev};

impl Daemon {
    /// Writes the interface's MAC (the program balances only frames addressed to it), then
    /// attaches, taking over a pinned attachment if one is still live.
    pub(super) fn attach_one(&mut self, iface: &str) -> Result<()> {
        let index = netdev::ifindex(iface)?;
        let mac = netdev::mac(iface)?;
        self.dataplane.set_interface(index, mac)?;
        let vlans = self.vlans_of(iface).to_vec();
        self.dataplane.set_vlans(index, &vlans)?;
        let attached = self.dataplane.attach(iface, self.xdp_mode)?;
        let generic = match attached {
            Attached::Native => Some(false),
            Attached::Generic => Some(true),
            // Made by an earlier daemon, maybe of a version that did not record its mode.
            Attached::Adopted => netdev::xdp_generic(index).unwrap_or_else(|e| {
                log::warn!("cannot read {iface}'s XDP attach mode ({e}); keeping the recorded one");
                None
            }),
        };
        if let Some(generic) = generic {
            self.dataplane.set_attach_mode(index, generic)?;
        }
        println!("foobar-lb: XDP attached to {iface} in {attached} mode");
        self.attached.insert(iface.to_owned(), Some((index, mac)));
        Ok(())
    }

    /// The VLANs whose tagged frames `iface` balances.
    fn vlans_of(&self, iface: &str) -> &[u16] {
        self.config.vlans.get(iface).map_or(&[][..], Vec::as_slice)
    }

    /// Writes every attached interface's VLAN list (after a reload changed them).
    pub(super) fn write_vlans(&mut self) {
        for (iface, at) in self.attached.clone() {
            let Some((index, _)) = at else { continue };
            let vlans = self.vlans_of(&iface).to_vec();
            if let Err(e) = self.dataplane.set_vlans(index, &vlans) {
                log::error!("cannot write {iface}'s VLANs: {e}");
            }
        }
    }

    /// What `foobar-lb ready` answers. The main loop runs only after the first write and
    /// attach, so answering at all means the data plane is written; on top of that, every
    /// configured interface must have the program attached now (a device that disappeared
    /// cannot carry the VIPs until it returns and is attached again).
    pub(super) fn readiness(&self) -> std::result::Result<String, String> {
        let detached: Vec<&str> = self
            .config
            .interfaces
            .iter()
            .filter(|i| !matches!(self.attached.get(*i), Some(Some(_))))
            .map(String::as_str)
            .collect();
        if !detached.is_empty() {
            return Err(format!(
                "not ready: XDP is not attached to {} (device gone? it is attached again \
                 as soon as it returns)",
                detached.join(", ")
            ));
        }
        if self.config.drained {
            return Err(format!("not ready: {}", crate::metrics::DRAINED));
        }
        // keepalived must not give the VIP to a node that lacks its peers' flows.
        if let Some(sync) = &self.sync {
            sync.ready().map_err(|why| format!("not ready: {why}"))?;
        }
        Ok(format!(
            "ready: XDP attached to {}; {} service(s)",
            self.config.interfaces.join(", "),
            self.config.services.len()
        ))
    }

    /// An adopted data plane may be attached to interfaces a previous configuration named:
    /// those attachments are removed, so the program runs only where this configuration says.
    pub(super) fn detach_unconfigured(&mut self) {
        for iface in self.dataplane.pinned_links() {
            if self.config.interfaces.contains(&iface) {
                continue;
            }
            match self.dataplane.unpin_link(&iface) {
                Ok(()) => {
                    if let Ok(index) = netdev::ifindex(&iface) {
                        let _ = self.dataplane.clear_interface(index);
                        let _ = self.dataplane.set_vlans(index, &[]);
                    }
                    println!("foobar-lb: XDP detached from {iface} (no longer in `interfaces`)");
                }
                Err(e) => log::error!("cannot detach from {iface}: {e}"),
            }
        }
    }

    /// Called on link events and on the fallback timer: notices a configured interface that disappeared, came back
    /// as a new device (new ifindex) or changed its MAC, and attaches or updates accordingly.
    /// Failures are logged and tried again on the next event or fallback tick.
    pub(super) fn watch_interfaces(&mut self) {
        for iface in self.config.interfaces.clone() {
            let was = self.attached.get(&iface).copied().flatten();
            let now = netdev::ifindex(&iface).and_then(|i| Ok((i, netdev::mac(&iface)?)));
            match (was, now) {
                (Some(w), Ok(n)) if w == n => {}
                (Some((index, _)), Ok((new_index, mac))) if index == new_index => {
                    // Same device, new MAC: frames are now addressed to the new one.
                    match self.dataplane.set_interface(index, mac) {
                        Ok(()) => {
                            log::warn!(
                                "{iface} changed its MAC; balancing frames sent to the new one"
                            );
                            self.attached.insert(iface, Some((index, mac)));
                        }
                        Err(e) => log::error!("cannot update {iface}'s MAC: {e}"),
                    }
                }
                (_, Ok(_)) => {
                    if let Some((old, _)) = was {
                        let _ = self.dataplane.clear_interface(old);
                    }
                    match self.attach_one(&iface).and_then(|()| self.apply_firewall()) {
                        Ok(()) => log::warn!("{iface} is a new device: XDP attached again"),
                        Err(e) => log::error!("cannot attach to {iface} again: {e:#}"),
                    }
                }
                (Some((old, _)), Err(_)) => {
                    log::warn!("{iface} is gone; XDP is attached again when it returns");
                    let _ = self.dataplane.clear_interface(old);
                    self.attached.insert(iface, None);
                }
                (None, Err(_)) => {}
            }
        }
    }
}
