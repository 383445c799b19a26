//! What each import of a plugin gives it, and which imports need a grant.
//!
//! A component built with Rust std imports several WASI interfaces even when
//! it never uses them. Those are linked to an inert context and always
//! allowed; the rest is refused at load unless the manifest grants it:
//!
//! | import | capability | without a grant |
//! |---|---|---|
//! | `weir:plugin/*` | `weir` | the gateway API: always allowed |
//! | `wasi:cli/environment` | `environment` | empty; `grants.env` adds named variables |
//! | `wasi:cli/{stdin,stdout,stderr,terminal-*}` | `stdio` | stdin closed, output discarded; `grants.stdio = "log"` logs it |
//! | `wasi:cli/exit` | `exit` | ends the instance: counted as a failure |
//! | `wasi:io/*` | `io` | streams and polling over the above |
//! | `wasi:clocks/*` | `clocks` | read time; a sleep is cut by `call_timeout` |
//! | `wasi:random/*` | `random` | random bytes |
//! | `wasi:filesystem/*` | `filesystem` | no preopened directory: nothing to open |
//! | `wasi:sockets/*` | `network` | refused: never granted |
//! | `wasi:http/*`, anything else | `other` | refused: not provided |

use serde::Serialize;

/// A group of imports that an operator reasons about as one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `weir:plugin/*`: the gateway's own API.
    Weir,
    /// `wasi:cli/environment`: environment variables and arguments.
    Environment,
    /// `wasi:cli` stdio and terminal interfaces.
    Stdio,
    /// `wasi:cli/exit`.
    Exit,
    /// `wasi:io/*`.
    Io,
    /// `wasi:clocks/*`.
    Clocks,
    /// `wasi:random/*`.
    Random,
    /// `wasi:filesystem/*`.
    Filesystem,
    /// `wasi:sockets/*`.
    Network,
    /// Anything else (e.g. `wasi:http`).
    Other,
}

impl Capability {
    /// The capability an import name (`wasi:cli/stdout@0.2.6`) belongs to.
    pub fn of(import: &str) -> Capability {
        let unversioned = import.split('@').next().unwrap_or(import);
        let (package, interface) = unversioned.split_once('/').unwrap_or((unversioned, ""));
        match package {
            "weir:plugin" => Capability::Weir,
            "wasi:cli" => match interface {
                "environment" => Capability::Environment,
                "exit" => Capability::Exit,
                "stdin" | "stdout" | "stderr" => Capability::Stdio,
                i if i.starts_with("terminal-") => Capability::Stdio,
                _ => Capability::Other,
            },
            "wasi:io" => Capability::Io,
            "wasi:clocks" => Capability::Clocks,
            "wasi:random" => Capability::Random,
            "wasi:filesystem" => Capability::Filesystem,
            "wasi:sockets" => Capability::Network,
            _ => Capability::Other,
        }
    }

    /// Short name, as in `weir audit`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Weir => "weir",
            Capability::Environment => "environment",
            Capability::Stdio => "stdio",
            Capability::Exit => "exit",
            Capability::Io => "io",
            Capability::Clocks => "clocks",
            Capability::Random => "random",
            Capability::Filesystem => "filesystem",
            Capability::Network => "network",
            Capability::Other => "other",
        }
    }

    /// Whether a plugin importing this may load at all.
    pub fn allowed(self) -> bool {
        !matches!(self, Capability::Network | Capability::Other)
    }

    /// What the gateway API lets a plugin do, from the `weir:plugin`
    /// interfaces it imports (each interface is one kind of access).
    fn weir_effect(imports: &[String], grants: &super::Grants) -> String {
        let does: Vec<String> = imports
            .iter()
            .filter_map(|i| i.strip_prefix("weir:plugin/"))
            .map(|i| match i.split('@').next().unwrap_or(i) {
                "outbound" => match &grants.http {
                    None => "calls upstreams over HTTP: no `grants.http`, so refused at load"
                        .to_string(),
                    Some(h) if h.is_empty() => {
                        "calls upstreams over HTTP: `grants.http = []`, so every call is refused"
                            .to_string()
                    }
                    Some(h) => format!("calls upstreams over HTTP: {}", h.join(", ")),
                },
                i => Self::weir_interface(i).to_string(),
            })
            .collect();
        does.join("; ")
    }

    /// What one `weir:plugin` interface lets a plugin do.
    fn weir_interface(interface: &str) -> &'static str {
        match interface {
            "http" => "reads requests and responses",
            "edit-request" => "edits request headers",
            "rewrite" => "rewrites the path and query",
            "vars" => "sets request variables",
            "edit-response" => "edits response status and headers",
            "state" => "shared counters and token buckets",
            "log" => "logs",
            "clock" => "reads the time",
            "metrics" => "custom counters",
            "body" => "reads and replaces the bodies it asks for",
            "cache" => "a cache of values with expiry in host state",
            _ => "an interface this gateway does not know",
        }
    }

    /// What a plugin actually gets from `imports` (of this capability), given its grants.
    pub fn effect(self, grants: &super::Grants, imports: &[String]) -> String {
        use crate::config::Stdio as S;
        match self {
            Capability::Weir => Self::weir_effect(imports, grants),
            Capability::Environment if grants.env_names.is_empty() => {
                "empty environment, no arguments".into()
            }
            Capability::Environment => format!("env: {}", grants.env_names.join(", ")),
            Capability::Stdio if grants.stdio == S::Log => {
                "stdin closed; stdout/stderr lines into the gateway log".into()
            }
            Capability::Stdio => "stdin closed; stdout/stderr discarded".into(),
            Capability::Exit => "ends the instance (counted as a failure)".into(),
            Capability::Io => "streams and polling over the above".into(),
            Capability::Clocks => "read time; sleeps are cut by call_timeout".into(),
            Capability::Random => "random bytes".into(),
            Capability::Filesystem => "no preopened directories: nothing to open".into(),
            Capability::Network => "refused: plugins get no network access".into(),
            Capability::Other => "refused: not provided by the gateway".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_sort_into_capabilities() {
        assert_eq!(Capability::of("weir:plugin/http@0.2.0"), Capability::Weir);
        assert_eq!(
            Capability::weir_effect(
                &[
                    "weir:plugin/http@0.2.0".into(),
                    "weir:plugin/vars@0.2.0".into()
                ],
                &crate::plugin::Grants::default()
            ),
            "reads requests and responses; sets request variables"
        );
        let granted = crate::plugin::Grants {
            http: Some(vec!["idp".into(), "users".into()]),
            ..Default::default()
        };
        assert_eq!(
            Capability::weir_effect(&["weir:plugin/outbound@0.2.0".into()], &granted),
            "calls upstreams over HTTP: idp, users"
        );
        assert_eq!(Capability::of("wasi:cli/stdout@0.2.6"), Capability::Stdio);
        assert_eq!(
            Capability::of("wasi:cli/terminal-stdout@0.2.0"),
            Capability::Stdio
        );
        assert_eq!(
            Capability::of("wasi:cli/environment@0.2.6"),
            Capability::Environment
        );
        assert_eq!(
            Capability::of("wasi:sockets/tcp@0.2.6"),
            Capability::Network
        );
        assert_eq!(
            Capability::of("wasi:http/outgoing-handler@0.2.6"),
            Capability::Other
        );
        assert!(!Capability::Network.allowed());
        assert!(Capability::Filesystem.allowed());
    }
}
