//! The TOML configuration: parsing and validation. Nothing here touches the kernel, so every rule
//! is unit-tested on the host; checks that need the host (does the interface exist?) live in
//! [`Config::check_host`].

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Errors in a configuration file. Each names what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode: the fast path on real NICs.
    Native,
    /// Generic (SKB) mode: works everywhere; faster than native on veth.
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => foobar_lb_common::PROTO_TCP,
            Protocol::Udp => foobar_lb_common::PROTO_UDP,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the XDP program is attached to.
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Unix socket of the control API.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Flow table capacity; the least recently used flows are evicted beyond it.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

fn default_flow_table_size() -> u32 {
    foobar_lb_common::DEFAULT_FLOWS
}

pub fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/foobar-lb/control.sock")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Direct server return keeps the destination port, so this may only repeat the service's.
    pub port: Option<u16>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates; the result is safe to hand to the data plane.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(invalid(
                "`interfaces` is empty: name at least one interface",
            ));
        }
        if !(1024..=1 << 26).contains(&self.flow_table_size) {
            return Err(invalid(format!(
                "flow_table_size {} is out of range 1024..=67108864",
                self.flow_table_size
            )));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for svc in &self.services {
            let what = format!("service {:?}", svc.name);
            if svc.name.is_empty() {
                return Err(invalid("a service has an empty name"));
            }
            if !names.insert(svc.name.as_str()) {
                return Err(invalid(format!("{what} is defined twice")));
            }
            if !keys.insert((svc.vip, svc.port, svc.protocol)) {
                return Err(invalid(format!(
                    "{what}: {}:{}/{} is already used by another service",
                    svc.vip, svc.port, svc.protocol
                )));
            }
            if svc.port == 0 {
                return Err(invalid(format!(
                    "{what}: port 0 is not a valid service port"
                )));
            }
            if svc.vip.is_unspecified() || svc.vip.is_multicast() || svc.vip.is_loopback() {
                return Err(invalid(format!(
                    "{what}: VIP {} must be a unicast, non-loopback address",
                    svc.vip
                )));
            }
            if svc.backends.len() > foobar_lb_common::MAX_SLOTS {
                return Err(invalid(format!(
                    "{what}: {} backends, at most {} per service",
                    svc.backends.len(),
                    foobar_lb_common::MAX_SLOTS
                )));
            }
            let mut seen = HashSet::new();
            for b in &svc.backends {
                if b.address.is_ipv4() != svc.vip.is_ipv4() {
                    return Err(invalid(format!(
                        "{what}: backend {} is not of the VIP's address family",
                        b.address
                    )));
                }
                if !seen.insert(b.address) {
                    return Err(invalid(format!(
                        "{what}: backend {} is listed twice",
                        b.address
                    )));
                }
                if b.port.is_some_and(|p| p != svc.port) {
                    return Err(invalid(format!(
                        "{what}: backend {} port {} differs from the service port {}: direct \
                         server return forwards without changing the port",
                        b.address,
                        b.port.unwrap_or_default(),
                        svc.port
                    )));
                }
            }
        }
        if self.services.len() > foobar_lb_common::MAX_SERVICES as usize {
            return Err(invalid(format!(
                "{} services, at most {}",
                self.services.len(),
                foobar_lb_common::MAX_SERVICES
            )));
        }
        Ok(())
    }

    /// Checks against this host: every interface exists.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        for name in &self.interfaces {
            crate::netdev::ifindex(name).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interfaces = ["eth0"]
xdp_mode = "generic"

[[service]]
name = "www"
vip = "10.0.0.100"
port = 80

[[service.backend]]
address = "10.0.0.11"

[[service.backend]]
address = "10.0.0.12"
port = 80

[[service]]
name = "www6"
vip = "fd00::100"
port = 80
protocol = "udp"
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_valid_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.interfaces, ["eth0"]);
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].protocol, Protocol::Tcp);
        assert_eq!(c.services[0].backends.len(), 2);
        assert_eq!(c.services[1].protocol, Protocol::Udp);
        assert_eq!(c.control_socket, default_control_socket());
    }

    #[test]
    fn rejects_bad_address() {
        let e = err(&GOOD.replace("10.0.0.11", "10.0.0.300"));
        assert!(e.contains("invalid IP address"), "{e}");
    }

    #[test]
    fn rejects_duplicate_service_name_and_key() {
        let twice = GOOD.replace("name = \"www6\"", "name = \"www\"");
        assert!(err(&twice).contains("defined twice"));
        let same_key =
            format!("{GOOD}\n[[service]]\nname = \"other\"\nvip = \"10.0.0.100\"\nport = 80\n");
        assert!(err(&same_key).contains("already used"));
    }

    #[test]
    fn rejects_family_mismatch_duplicate_backend_and_port_change() {
        assert!(err(&GOOD.replace("10.0.0.12", "fd00::12")).contains("address family"));
        assert!(err(&GOOD.replace("10.0.0.12", "10.0.0.11")).contains("listed twice"));
        assert!(
            err(&GOOD.replace("port = 80\n\n[[service]]", "port = 8080\n\n[[service]]"))
                .contains("direct server return")
        );
    }

    #[test]
    fn rejects_unknown_fields_bad_protocol_and_mode() {
        assert!(err(&GOOD.replace("xdp_mode", "xdp_mdoe")).contains("unknown field"));
        assert!(err(&GOOD.replace("\"udp\"", "\"sctp\"")).contains("unknown variant"));
        assert!(err(&GOOD.replace("\"generic\"", "\"fast\"")).contains("unknown variant"));
    }

    #[test]
    fn rejects_port_zero_bad_vip_and_no_interface() {
        assert!(err(&GOOD.replace(
            "port = 80\n\n[[service.backend]]\naddress = \"10.0.0.11\"",
            "port = 0\n\n[[service.backend]]\naddress = \"10.0.0.11\""
        ))
        .contains("port 0"));
        assert!(err(&GOOD.replace("10.0.0.100", "0.0.0.0")).contains("unicast"));
        assert!(err(&GOOD.replace("[\"eth0\"]", "[]")).contains("interfaces"));
    }

    #[test]
    fn rejects_syntax_errors_with_location() {
        let e = err("interfaces = [\"eth0\"\n");
        assert!(e.contains("line"), "{e}");
    }
}
