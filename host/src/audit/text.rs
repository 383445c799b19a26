//! The human-readable rendering of a [`Report`].

use std::fmt::Write;

use super::{PluginReport, Report};
use crate::config::{ByteSize, Fail, Isolation, Stdio};

pub(super) fn render(r: &Report) -> String {
    let mut out = String::new();
    if let Some(m) = &r.manifest {
        let _ = writeln!(out, "manifest {}\n", m.display());
    }
    for (i, p) in r.plugins.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        plugin(&mut out, p);
    }
    out
}

fn size(n: u64) -> String {
    ByteSize(n).to_string()
}

/// The limits in force, as `weir audit` prints them.
fn limits(out: &mut String, l: &crate::plugin::Limits) {
    let _ = writeln!(
        out,
        "  limits     max_memory {}, cpu_deadline {}ms, call_timeout {}ms, max_host_calls {}, max_handles {}",
        size(l.max_memory as u64),
        l.cpu_deadline.as_millis(),
        l.call_timeout.as_millis(),
        l.max_host_calls,
        l.max_handles
    );
    let _ = writeln!(
        out,
        "             max_module_bytes {}, max_headers {}, max_header_bytes {}, max_reply_body {}",
        size(l.max_module_bytes as u64),
        l.max_headers,
        size(l.max_header_bytes as u64),
        size(l.max_reply_body as u64)
    );
    let concurrency = l
        .max_concurrency
        .map_or("worker threads - 1".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "             max_concurrency {concurrency}, max_log_rate {}/s",
        size(l.max_log_rate as u64)
    );
    let _ = writeln!(
        out,
        "             max_state_entries {}, max_state_bytes {}",
        l.max_state_entries,
        size(l.max_state_bytes as u64)
    );
    let _ = writeln!(
        out,
        "             max_body_bytes {}, max_outbound_calls {}, max_outbound_body {}",
        size(l.max_body_bytes as u64),
        l.max_outbound_calls,
        size(l.max_outbound_body as u64)
    );
}

fn plugin(out: &mut String, p: &PluginReport) {
    let _ = writeln!(out, "plugin {} ({})", p.name, p.path.display());
    let _ = writeln!(out, "  sha256     {}", p.sha256);
    let _ = writeln!(out, "  size       {} bytes", p.size);
    let world = p
        .world
        .as_deref()
        .unwrap_or("none (no weir:plugin/filter export)");
    let _ = writeln!(out, "  world      {world}");
    let sdk = p.sdk.as_deref().unwrap_or("unknown");
    let _ = writeln!(out, "  weir-sdk   {sdk}");
    let producers: Vec<String> = p
        .producers
        .iter()
        .map(|(field, values)| format!("{field}: {}", values.join(", ")))
        .collect();
    if !producers.is_empty() {
        let _ = writeln!(out, "  producers  {}", producers.join("; "));
    }
    let _ = writeln!(out, "  memory     {} initial", size(p.initial_memory));
    let verdict = match &p.refusal {
        None => "loads".to_string(),
        Some(why) => format!("REFUSED: {why}"),
    };
    let _ = writeln!(out, "  verdict    {verdict}");
    let _ = writeln!(out, "  imports");
    for g in &p.imports {
        let mark = if g.allowed { "" } else { "  [refused]" };
        let _ = writeln!(out, "    {:<12} {}{mark}", g.capability.name(), g.effect);
        for n in &g.names {
            let _ = writeln!(out, "                 {n}");
        }
    }
    let _ = writeln!(out, "  exports");
    for e in &p.exports {
        let _ = writeln!(out, "    {e}");
    }
    if let Some(pol) = &p.policy {
        let isolation = match pol.isolation {
            Isolation::Pooled => "pooled (instances reused across requests)",
            Isolation::Request => "request (a fresh instance per request)",
        };
        let _ = writeln!(out, "  isolation  {isolation}");
        let pin = pol.sha256_pin.as_deref().unwrap_or("none");
        let _ = writeln!(out, "  pinned     {pin}");
        limits(out, &pol.limits);
        let env = if pol.env.is_empty() {
            "none".to_string()
        } else {
            pol.env.join(", ")
        };
        let stdio = match pol.stdio {
            Stdio::Discard => "discard",
            Stdio::Log => "log",
        };
        let http = match &pol.http {
            None => "not stated".to_string(),
            Some(h) if h.is_empty() => "none (every call refused)".to_string(),
            Some(h) => h.join(", "),
        };
        let _ = writeln!(out, "  grants     env: {env}; stdio: {stdio}; http: {http}");
        if p.routes.is_empty() {
            let _ = writeln!(out, "  routes     none");
        } else {
            let _ = writeln!(out, "  routes");
        }
        for u in &p.routes {
            let fail = match u.fail {
                Fail::Closed => format!("fail closed ({})", u.fail_status),
                Fail::Open => "fail open (skipped on failure)".to_string(),
            };
            let _ = writeln!(out, "    {:<16} #{} in chain, {fail}", u.route, u.position);
        }
    }
}
