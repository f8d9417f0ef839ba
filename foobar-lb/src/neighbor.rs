//! Backend MAC addresses from the kernel's neighbour table (ARP / NDP).
//!
//! Users configure backend IPs only. To learn a MAC we make the kernel resolve it (one empty UDP
//! datagram to the discard port, which also refreshes a stale entry) and read the neighbour table
//! with iproute2's JSON output.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::desired::Mac;

/// Neighbour-table failures. An underlying error is the `source`, printed once by the caller's
/// `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    #[error(
        "no ARP/NDP answer from {addr} within {waited:?}: is the backend up and on the same L2 \
         segment as {interfaces:?}?"
    )]
    Unresolved {
        addr: IpAddr,
        waited: Duration,
        interfaces: Vec<String>,
    },
    #[error("cannot run `ip neigh` (is iproute2 installed?)")]
    Ip(#[source] std::io::Error),
}

/// Resolves every address it can on `interfaces` within `timeout` (all in parallel); the ones
/// missing from the result are logged with what to check.
pub fn resolve_all(
    addrs: &[IpAddr],
    interfaces: &[String],
    timeout: Duration,
) -> Result<HashMap<IpAddr, Mac>, NeighborError> {
    let start = Instant::now();
    let mut found = HashMap::new();
    let mut poked = false;
    loop {
        let known = table(interfaces)?;
        for addr in addrs {
            if let Some(mac) = known.get(addr) {
                found.insert(*addr, *mac);
            }
        }
        if found.len() == addrs.len() {
            return Ok(found);
        }
        if !poked {
            addrs
                .iter()
                .filter(|a| !found.contains_key(a))
                .for_each(|&a| poke(a));
            poked = true;
        }
        if start.elapsed() >= timeout {
            for &addr in addrs.iter().filter(|a| !found.contains_key(a)) {
                log::warn!(
                    "{}",
                    NeighborError::Unresolved {
                        addr,
                        waited: timeout,
                        interfaces: interfaces.to_vec(),
                    }
                );
            }
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the kernel start neighbour resolution for `addr`. Errors are irrelevant: the lookup
/// that follows tells whether it worked.
fn poke(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], SocketAddr::new(addr, 9));
    }
}

/// Every usable entry of the neighbour table on `interfaces` (one `ip neigh` call).
pub fn table(interfaces: &[String]) -> Result<HashMap<IpAddr, Mac>, NeighborError> {
    #[derive(Deserialize)]
    struct Row {
        dst: IpAddr,
        dev: String,
        lladdr: Option<String>,
    }
    let out = Command::new("ip")
        .args(["-j", "neigh", "show"])
        .output()
        .map_err(NeighborError::Ip)?;
    let rows: Vec<Row> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(rows
        .into_iter()
        .filter(|r| interfaces.contains(&r.dev))
        .filter_map(|r| Some((r.dst, r.lladdr.as_deref().and_then(parse_mac)?)))
        .collect())
}

/// Starts resolution of addresses not in the table yet (answers show up in a later [`table`]).
pub fn poke_all(addrs: &[IpAddr]) {
    addrs.iter().for_each(|&a| poke(a));
}

/// The MAC of `addr` in the neighbour table, if a usable entry exists on one of `interfaces`.
pub fn lookup(addr: IpAddr, interfaces: &[String]) -> Result<Option<Mac>, NeighborError> {
    Ok(table(interfaces)?.get(&addr).copied())
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac != [0; 6]).then_some(mac)
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let mac = parse_mac("02:00:0a:00:00:0b").unwrap();
        assert_eq!(mac, [2, 0, 10, 0, 0, 11]);
        assert_eq!(format_mac(&mac), "02:00:0a:00:00:0b");
        assert_eq!(parse_mac("02:00:0a:00:00"), None);
        assert_eq!(parse_mac("02:00:0a:00:00:0b:0c"), None);
        assert_eq!(parse_mac("zz:00:0a:00:00:0b"), None);
        assert_eq!(parse_mac("00:00:00:00:00:00"), None);
    }
}
