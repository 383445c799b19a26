//! # ip-filter: allow or deny clients by address
//!
//! Checks the client address the gateway computed (the peer, or the client
//! named in `X-Forwarded-For` by a trusted proxy) against CIDR lists: a
//! client in `deny` is refused; when `allow` is given, a client outside it
//! is refused too. Refusals get `status` (403) and never reach the upstream.

use std::net::IpAddr;

use serde::Deserialize;
use weir_sdk::units::Cidr;
use weir_sdk::{Action, Hooks, Plugin, Request, reply};

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Only these networks may pass (any, when empty).
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// These networks are refused, even inside `allow`.
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// Status of the refusal (default 403).
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    403
}

/// The filter.
#[derive(Debug)]
pub struct IpFilter {
    config: Config,
}

/// The IP of `ip:port`, `[ipv6]:port` or a bare address.
fn parse_ip(addr: &str) -> Option<IpAddr> {
    if let Ok(ip) = addr.parse() {
        return Some(ip);
    }
    addr.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

impl IpFilter {
    /// Whether `ip` may pass. An IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.config.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.config.allow.is_empty() || self.config.allow.iter().any(|c| c.contains(ip))
    }
}

impl Plugin for IpFilter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.allow.is_empty() && config.deny.is_empty() {
            return Err(
                "allow, deny: give at least one network (e.g. deny = [\"203.0.113.0/24\"])".into(),
            );
        }
        if !(400..=599).contains(&config.status) {
            return Err(format!(
                "status: must be between 400 and 599 (got {})",
                config.status
            ));
        }
        Ok(Self { config })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        // An address the gateway gave that does not parse is refused: fail closed.
        let admitted = parse_ip(&req.client_addr()).is_some_and(|ip| self.admits(ip));
        if admitted {
            Action::Continue
        } else {
            reply(self.config.status).text("forbidden\n").into()
        }
    }
}

weir_sdk::export!(IpFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_or_without_port() {
        assert_eq!(parse_ip("192.0.2.1:80"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            parse_ip("[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_ip("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_ip("nonsense"), None);
    }
}
