//! # bot-filter: refuse requests by User-Agent
//!
//! A request whose `User-Agent` contains one of `deny` (case-insensitive) is
//! refused with `status` (403), unless it also contains one of `allow` (say,
//! a monitoring agent you trust). With `deny_empty`, a request without a
//! `User-Agent` is refused too. The defaults name common scanners and
//! scripted clients; set `deny` to replace them.

use serde::Deserialize;
use weir_sdk::{Action, Hooks, Plugin, Request, reply};

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Substrings of refused user agents (case-insensitive).
    #[serde(default = "default_deny")]
    pub deny: Vec<String>,
    /// Substrings that let a user agent pass whatever `deny` says.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Refuse requests without a `User-Agent` (default true).
    #[serde(default = "yes")]
    pub deny_empty: bool,
    /// Status of the refusal (default 403).
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_deny() -> Vec<String> {
    [
        "sqlmap",
        "nikto",
        "nmap",
        "masscan",
        "zgrab",
        "nuclei",
        "acunetix",
        "dirbuster",
        "gobuster",
        "wpscan",
        "python-requests",
        "go-http-client",
        "curl/",
    ]
    .map(String::from)
    .to_vec()
}
fn yes() -> bool {
    true
}
fn default_status() -> u16 {
    403
}

/// The filter, with its patterns lower-cased once.
#[derive(Debug)]
pub struct BotFilter {
    deny: Vec<String>,
    allow: Vec<String>,
    deny_empty: bool,
    status: u16,
}

impl BotFilter {
    /// Whether a request with this `User-Agent` may pass.
    pub fn admits(&self, agent: Option<&str>) -> bool {
        let Some(agent) = agent.filter(|a| !a.trim().is_empty()) else {
            return !self.deny_empty;
        };
        let agent = agent.to_ascii_lowercase();
        self.allow.iter().any(|a| agent.contains(a.as_str()))
            || !self.deny.iter().any(|d| agent.contains(d.as_str()))
    }
}

fn patterns(field: &str, list: Vec<String>) -> Result<Vec<String>, String> {
    list.into_iter()
        .enumerate()
        .map(|(i, p)| {
            if p.trim().is_empty() {
                Err(format!(
                    "{field}[{i}]: must not be empty (it would match every agent)"
                ))
            } else {
                Ok(p.to_ascii_lowercase())
            }
        })
        .collect()
}

impl Plugin for BotFilter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !(400..=599).contains(&config.status) {
            return Err(format!(
                "status: must be between 400 and 599 (got {})",
                config.status
            ));
        }
        Ok(Self {
            deny: patterns("deny", config.deny)?,
            allow: patterns("allow", config.allow)?,
            deny_empty: config.deny_empty,
            status: config.status,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        if self.admits(req.header("user-agent").as_deref()) {
            Action::Continue
        } else {
            reply(self.status).text("forbidden\n").into()
        }
    }
}

weir_sdk::export!(BotFilter);
