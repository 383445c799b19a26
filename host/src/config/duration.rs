//! Human-readable durations in the manifest: `"500ms"`, `"10s"`, `"2m"`, `"1h"`.

use serde::Deserialize;

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
        parse(&s).ok_or_else(|| {
            format!("invalid duration `{s}`: expected e.g. \"500ms\", \"10s\", \"2m\" or \"1h\"")
        })
    }
}

fn parse(s: &str) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_garbage_is_refused() {
        assert_eq!(parse("500ms").unwrap().0.as_millis(), 500);
        assert_eq!(parse("2m").unwrap().0.as_secs(), 120);
        assert!(parse("10").is_none());
        assert!(parse("0s").is_none());
        assert!(parse("s").is_none());
        assert!(parse("5 days").is_none());
    }
}
