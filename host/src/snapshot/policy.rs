//! Sandbox settings from the manifest: each plugin's limits, grants and
//! `sha256` pin (`[plugins.NAME]`), and each route's failure policy
//! (`[[routes.plugins]]`), checked with errors that point at the key.

use serde_spanned::Spanned;

use super::Loader;
use crate::config;
use crate::plugin::limits::{MAX_MEMORY_CEILING, MIN_CPU_DEADLINE, MIN_STATE_BYTES};
use crate::plugin::{FailPolicy, Grants, Limits, LoadError, Policy};

/// `[plugins.NAME]` limits, grants and pin, checked and filled with defaults.
#[expect(
    clippy::too_many_lines,
    reason = "one check per limit, in the order of the README's limits table"
)]
pub(super) fn resolve_policy(l: &mut Loader<'_>, name: &str, p: &config::Plugin) -> Option<Policy> {
    let d = Limits::default();
    let mut ok = true;
    let mut bad = |l: &mut Loader<'_>, span: std::ops::Range<usize>, msg: String, help: &str| {
        ok = false;
        l.err::<()>(
            span,
            format!("plugin `{name}`: {msg}"),
            Some(help.to_string()),
        );
    };
    let max_memory = p
        .max_memory
        .as_ref()
        .map_or(d.max_memory, |v| v.get_ref().bytes());
    if let Some(v) = &p.max_memory
        && !(64 << 10..=MAX_MEMORY_CEILING).contains(&max_memory)
    {
        bad(
            l,
            v.span(),
            format!("`max_memory` {} is outside 64KiB..=1GiB", v.get_ref()),
            "use a size from \"64KiB\" to \"1GiB\"",
        );
    }
    let cpu_deadline = p
        .cpu_deadline
        .as_ref()
        .map_or(d.cpu_deadline, |v| v.get_ref().0);
    if let Some(v) = &p.cpu_deadline
        && cpu_deadline < MIN_CPU_DEADLINE
    {
        bad(
            l,
            v.span(),
            format!(
                "`cpu_deadline` is {cpu_deadline:?}, shorter than one {MIN_CPU_DEADLINE:?} epoch tick"
            ),
            "use \"10ms\" or more",
        );
    }
    let mut count =
        |l: &mut Loader<'_>, v: &Option<Spanned<u32>>, key: &str, default: u32, min: u32| {
            let Some(v) = v else { return default };
            if *v.get_ref() < min {
                bad(
                    l,
                    v.span(),
                    format!("`{key}` is {}", v.get_ref()),
                    &format!("use {min} or more"),
                );
            }
            *v.get_ref()
        };
    let max_host_calls = count(l, &p.max_host_calls, "max_host_calls", d.max_host_calls, 1);
    let max_handles = count(l, &p.max_handles, "max_handles", d.max_handles, 8);
    let max_headers = count(l, &p.max_headers, "max_headers", d.max_headers as u32, 1) as usize;
    let max_concurrency = p
        .max_concurrency
        .as_ref()
        .map(|_| count(l, &p.max_concurrency, "max_concurrency", 1, 1));
    let max_state_entries = count(
        l,
        &p.max_state_entries,
        "max_state_entries",
        d.max_state_entries as u32,
        1,
    ) as usize;
    let max_outbound_calls = count(
        l,
        &p.max_outbound_calls,
        "max_outbound_calls",
        d.max_outbound_calls,
        1,
    );
    let size = |v: &Option<Spanned<config::ByteSize>>, default: usize| {
        v.as_ref().map_or(default, |v| v.get_ref().bytes())
    };
    let max_state_bytes = size(&p.max_state_bytes, d.max_state_bytes);
    if let Some(v) = &p.max_state_bytes
        && max_state_bytes < MIN_STATE_BYTES
    {
        let min = config::ByteSize(MIN_STATE_BYTES as u64);
        bad(
            l,
            v.span(),
            format!("`max_state_bytes` {} is less than {min}", v.get_ref()),
            &format!("use \"{min}\" or more"),
        );
    }
    let limits = Limits {
        max_memory,
        cpu_deadline,
        call_timeout: p
            .call_timeout
            .as_ref()
            .map_or(d.call_timeout, |v| v.get_ref().0),
        max_host_calls,
        max_handles,
        max_module_bytes: size(&p.max_module_bytes, d.max_module_bytes),
        max_headers,
        max_header_bytes: size(&p.max_header_bytes, d.max_header_bytes),
        max_reply_body: size(&p.max_reply_body, d.max_reply_body),
        max_concurrency,
        max_log_rate: size(&p.max_log_rate, d.max_log_rate),
        max_state_entries,
        max_state_bytes,
        max_body_bytes: size(&p.max_body_bytes, d.max_body_bytes),
        max_outbound_calls,
        max_outbound_body: size(&p.max_outbound_body, d.max_outbound_body),
    };

    let sha256 = match &p.sha256 {
        Some(v)
            if v.get_ref().len() == 64 && v.get_ref().bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(v.get_ref().to_ascii_lowercase())
        }
        Some(v) => {
            bad(
                l,
                v.span(),
                format!("`sha256` must be 64 hex digits, not `{}`", v.get_ref()),
                "copy the digest from `sha256sum FILE` or `weir audit FILE`",
            );
            None
        }
        None => None,
    };

    let mut env = Vec::new();
    let mut env_names = Vec::new();
    for n in &p.grants.env {
        let n_ref = n.get_ref();
        if n_ref.is_empty() || n_ref.contains(['=', '\0']) {
            bad(
                l,
                n.span(),
                format!("invalid environment variable name `{n_ref}` in `grants.env`"),
                "list variable names, e.g. env = [\"REGION\"]",
            );
            continue;
        }
        env_names.push(n_ref.clone());
        // Read once per load: a reload picks up a changed value.
        if let Ok(value) = std::env::var(n_ref) {
            env.push((n_ref.clone(), value));
        }
    }
    let mut http = Vec::new();
    for u in p.grants.http.iter().flatten() {
        let known =
            l.m.doc
                .upstreams
                .keys()
                .any(|k| k.get_ref().as_str() == u.get_ref());
        if !known {
            let mut names: Vec<&str> =
                l.m.doc
                    .upstreams
                    .keys()
                    .map(|k| k.get_ref().as_str())
                    .collect();
            names.sort_unstable();
            let names = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            bad(
                l,
                u.span(),
                format!(
                    "`grants.http` names `{}`, which is not an `[upstreams.*]` (defined: {names})",
                    u.get_ref()
                ),
                "grant upstreams by their `[upstreams.NAME]` name; define the upstream first",
            );
            continue;
        }
        http.push(u.get_ref().clone());
    }
    let grants = Grants {
        env,
        env_names,
        stdio: p.grants.stdio,
        http: p.grants.http.is_some().then_some(http),
    };
    ok.then_some(Policy {
        limits,
        grants,
        sha256,
        state: p.state,
        state_failure: p.state_failure,
    })
}

/// Where to point and what to suggest for a plugin that failed to load.
pub(super) fn load_error_help(
    p: &config::Plugin,
    path: &Spanned<std::path::PathBuf>,
    sha256: Option<&Spanned<String>>,
    e: &LoadError,
) -> (std::ops::Range<usize>, String) {
    let at = |v: Option<std::ops::Range<usize>>| v.unwrap_or(path.span());
    match e {
        LoadError::HashMismatch { .. } => (
            at(sha256.map(Spanned::span)),
            "if this file is the one you mean to run, pin its digest (`weir audit FILE` prints it); otherwise restore the pinned build".into(),
        ),
        LoadError::NotGranted { .. } => (
            path.span(),
            "plugins may not use this interface: rebuild the plugin without it (`weir audit FILE` lists its imports)".into(),
        ),
        LoadError::NeedsGrant { .. } => (
            path.span(),
            "grant the upstreams it may call, e.g. `grants = { http = [\"idp\"] }` (names of `[upstreams.*]`), or `grants = { http = [] }` to run it with every call refused".into(),
        ),
        LoadError::TooLarge { .. } => (
            at(p.max_module_bytes.as_ref().map(Spanned::span)),
            "raise `max_module_bytes` for this plugin if the size is expected".into(),
        ),
        LoadError::MemoryTooSmall { .. } => (
            at(p.max_memory.as_ref().map(Spanned::span)),
            "raise `max_memory` for this plugin, or build it with a smaller initial memory".into(),
        ),
        LoadError::WitVersion { .. } => (
            path.span(),
            "rebuild the plugin against weir-sdk 0.2, or keep the gateway version it was built for"
                .into(),
        ),
        _ => (
            path.span(),
            "build it with weir-sdk for wasm32-wasip2 against wit/ (weir:plugin@0.2.0)".into(),
        ),
    }
}

/// `fail` and `fail_status` of one `[[routes.plugins]]` entry.
pub(super) fn resolve_fail(
    l: &mut Loader<'_>,
    route: &str,
    entry: &config::RoutePlugin,
) -> Option<FailPolicy> {
    let mut fail = FailPolicy {
        mode: entry.fail,
        ..FailPolicy::default()
    };
    if let Some(s) = &entry.fail_status {
        match http::StatusCode::from_u16(*s.get_ref()) {
            Ok(status) if (400..=599).contains(s.get_ref()) => fail.status = status,
            _ => {
                return l.err(
                    s.span(),
                    format!(
                        "route `{route}`, plugin `{}`: `fail_status` {} is not an error status",
                        entry.name.get_ref(),
                        s.get_ref()
                    ),
                    Some("use a status from 400 to 599, e.g. 503".into()),
                );
            }
        }
    }
    Some(fail)
}
