//! Values written the way the Weir manifest writes them, for plugin configs:
//! durations (`"500ms"`, `"10s"`, `"2m"`, `"1h"`), byte sizes (`"64MiB"`,
//! `"512KiB"`, or an integer of bytes) and CIDR blocks (`"10.0.0.0/8"`,
//! `"2001:db8::/32"`, or one address). The gateway reads its own manifest
//! with these same types, so a plugin's config accepts exactly what the rest
//! of the manifest does, with the same error messages.
//!
//! ```
//! use weir_sdk::units::{ByteSize, Cidr, Duration};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     ttl: Duration,
//!     max_body: ByteSize,
//!     allow: Vec<Cidr>,
//! }
//!
//! let c: Config = serde_json::from_str(
//!     r#"{"ttl": "10m", "max_body": "1MiB", "allow": ["10.0.0.0/8", "::1"]}"#,
//! ).unwrap();
//! assert_eq!(c.ttl.0.as_secs(), 600);
//! assert_eq!(c.max_body.0, 1 << 20);
//! assert!(c.allow[0].contains("10.1.2.3".parse().unwrap()));
//! assert!(c.allow[1].contains("::1".parse().unwrap()));
//! ```

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration written as a number and a unit (`ms`, `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }
}

impl TryFrom<String> for Duration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration(&s).ok_or_else(|| {
            format!("invalid duration `{s}`: expected e.g. \"500ms\", \"10s\", \"2m\" or \"1h\"")
        })
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.checked_mul(60)?),
        "h" => std::time::Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(Duration(d))
}

/// A size in bytes, written with a binary unit (`B`, `KiB`, `MiB`, `GiB`) or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }

    /// The size as `usize`, saturating on 32-bit hosts.
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly, e.g. `64MiB`, `1536KiB`, `300B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

fn parse_size(s: &str) -> Option<ByteSize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift).map(ByteSize)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"64MiB\", \"512KiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size `{v}`: must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).ok_or_else(|| {
                    E::custom(format!(
                        "invalid size `{v}`: expected e.g. \"64MiB\", \"512KiB\", \"1GiB\" or a number of bytes"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP network: `"10.0.0.0/8"`, `"2001:db8::/32"`, or one address (a /32
/// or /128). Host bits are cleared: `"10.1.2.3/8"` is `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is in the network (an IPv4 address is never in an IPv6 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        t.parse::<ipnet::IpNet>()
            .map(|n| Cidr(n.trunc()))
            .or_else(|_| t.parse::<IpAddr>().map(|ip| Cidr(ipnet::IpNet::from(ip))))
            .map_err(|_| {
                format!(
                    "invalid CIDR `{s}`: expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or one IP address"
                )
            })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_garbage_is_refused() {
        assert_eq!(parse_duration("500ms").unwrap().0.as_millis(), 500);
        assert_eq!(parse_duration("2m").unwrap().0.as_secs(), 120);
        assert!(parse_duration("10").is_none());
        assert!(parse_duration("0s").is_none());
        assert!(parse_duration("s").is_none());
        assert!(parse_duration("5 days").is_none());
    }

    #[test]
    fn units_parse_display_round_trips_and_garbage_is_refused() {
        assert_eq!(parse_size("64MiB"), Some(ByteSize::mib(64)));
        assert_eq!(parse_size("512KiB"), Some(ByteSize::kib(512)));
        assert_eq!(parse_size("300"), Some(ByteSize(300)));
        assert_eq!(parse_size("2GiB").unwrap().to_string(), "2GiB");
        assert_eq!(ByteSize::kib(1536).to_string(), "1536KiB");
        assert_eq!(ByteSize(300).to_string(), "300B");
        assert!(parse_size("64MB").is_none());
        assert!(parse_size("MiB").is_none());
        assert!(parse_size("-1").is_none());
    }

    #[test]
    fn cidrs_parse_contain_and_garbage_is_refused() {
        let c = |s: &str| s.parse::<Cidr>();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").unwrap().contains(ip("10.200.0.1")));
        assert!(!c("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert_eq!(c("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(c("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert!(c("2001:db8::/32").unwrap().contains(ip("2001:db8:1::5")));
        assert!(!c("2001:db8::/32").unwrap().contains(ip("10.0.0.1")));
        assert_eq!(c("::1").unwrap().to_string(), "::1/128");
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "host.example", "10.0.0.0/-1"] {
            assert!(c(bad).unwrap_err().starts_with("invalid CIDR"), "{bad:?}");
        }
    }
}
