//! `[state]`, resolved: the shared state backend every plugin uses unless it
//! asks for `state = "memory"`. A reload with an unchanged `[state]` keeps
//! the backend (its connection, health and fail-open local state).

use std::sync::Arc;
use std::time::Duration;

use super::{Loader, Snapshot};
use crate::config::{self, StateBackend};
use crate::plugin::Limits;
use crate::plugin::host::state::{RedisBackend, RedisSettings};
use crate::telemetry::metrics::Metrics;

/// `[state] timeout` when absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Longest `[state] timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// The backend `[state]` names, `None` for memory; errors go to `l`.
pub(super) fn resolve_state(
    l: &mut Loader<'_>,
    metrics: &Arc<Metrics>,
    previous: Option<&Snapshot>,
) -> Option<Arc<RedisBackend>> {
    let state = l.m.doc.state.as_ref()?.get_ref();
    let url = state.backend.get_ref().trim();
    if url == "memory" {
        return None;
    }
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return l.err(
            state.backend.span(),
            format!("unknown state backend `{url}`"),
            Some(
                "use \"memory\", \"redis://HOST:PORT/DB\" or \"rediss://HOST:PORT/DB\" (TLS)"
                    .into(),
            ),
        );
    }
    // The checks below each report, so one `weir check` lists every problem.
    let before = l.errors.len();
    if has_password(url) {
        l.err::<()>(
            state.backend.span(),
            "the state backend URL holds a password",
            Some("remove it from the URL (`redis://HOST:PORT/DB`, a user name may stay: `redis://USER@HOST`), put it in an environment variable and name that variable in `password_env = \"WEIR_REDIS_PASSWORD\"`".into()),
        );
    }
    let password = match &state.password_env {
        None => None,
        Some(env) => match std::env::var(env.get_ref()) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                l.err::<()>(
                    env.span(),
                    format!("environment variable `{}` is not set or empty", env.get_ref()),
                    Some("export the Redis password in it before starting weir, or remove `password_env`".into()),
                );
                None
            }
        },
    };
    let timeout = check_timeout(l, state);
    let prefix = match &state.prefix {
        None => "weir".to_string(),
        Some(p) if !p.get_ref().is_empty() && !p.get_ref().contains(char::is_whitespace) => {
            p.get_ref().clone()
        }
        Some(p) => {
            l.err::<()>(
                p.span(),
                format!("invalid state key prefix `{}`", p.get_ref()),
                Some("use a word without spaces, e.g. \"weir\" or \"weir-eu\"".into()),
            );
            String::new()
        }
    };
    let ca = state.ca.as_ref().and_then(|c| {
        if !url.starts_with("rediss://") {
            return l.err(
                c.span(),
                "`[state] ca` is for a `rediss://` (TLS) backend",
                Some("use a `rediss://` URL, or remove `ca`".into()),
            );
        }
        let path = l.m.base_dir().join(c.get_ref());
        match std::fs::read(&path) {
            Ok(pem) => Some(pem),
            Err(e) => l.err(
                c.span(),
                format!("cannot read `{}`: {e}", path.display()),
                Some("`ca` is a PEM file of CA certificates, relative to the manifest".into()),
            ),
        }
    });
    if l.errors.len() != before {
        return None;
    }
    let settings = RedisSettings {
        url: url.to_string(),
        password,
        timeout: timeout?,
        prefix,
        ca,
    };
    if let Some(same) = previous
        .and_then(|p| p.state.as_ref())
        .filter(|b| *b.settings() == settings)
    {
        return Some(same.clone());
    }
    let label = settings.url.clone();
    match RedisBackend::new(settings, metrics.state_backend(&label)) {
        Ok(b) => Some(b),
        Err(e) => l.err(
            state.backend.span(),
            e,
            Some("write it as \"redis://HOST:PORT/DB\" or \"rediss://HOST:PORT/DB\"".into()),
        ),
    }
}

/// `[state] timeout`: within bounds, and shorter than the `call_timeout` of
/// every plugin on the shared backend (else a slow Redis would time the
/// whole hook out and `state_failure` would never apply).
fn check_timeout(l: &mut Loader<'_>, state: &config::State) -> Option<Duration> {
    let timeout = state
        .timeout
        .as_ref()
        .map_or(DEFAULT_TIMEOUT, |t| t.get_ref().0);
    if let Some(t) = &state.timeout
        && timeout > MAX_TIMEOUT
    {
        return l.err(
            t.span(),
            format!("`[state] timeout` is {timeout:?}, more than {MAX_TIMEOUT:?}"),
            Some(
                "a round trip to Redis takes well under a millisecond nearby: use e.g. \"50ms\""
                    .into(),
            ),
        );
    }
    let doc = &l.m.doc;
    let too_long = doc.plugins.iter().find_map(|(name, p)| {
        let (call_timeout, span) = p
            .call_timeout
            .as_ref()
            .map_or((Limits::default().call_timeout, name.span()), |c| {
                (c.get_ref().0, c.span())
            });
        (p.state == StateBackend::Shared && call_timeout <= timeout)
            .then(|| (name.get_ref().to_string(), call_timeout, span))
    });
    if let Some((name, call_timeout, span)) = too_long {
        let span = state.timeout.as_ref().map_or(span, |t| t.span());
        return l.err(
            span,
            format!("`[state] timeout` ({timeout:?}) is not shorter than plugin `{name}`'s `call_timeout` ({call_timeout:?})"),
            Some("lower `[state] timeout` (default 50ms), or raise that plugin's `call_timeout`".into()),
        );
    }
    Some(timeout)
}

/// Whether a Redis URL carries a password (`redis://:pw@host`, `redis://user:pw@host`).
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let password_in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    password_in_userinfo || url.contains("pass=") || url.contains("password=")
}

#[cfg(test)]
mod tests {
    use super::has_password;

    #[test]
    fn a_password_anywhere_in_the_url_is_found() {
        assert!(has_password("redis://:secret@127.0.0.1:6379/0"));
        assert!(has_password("redis://alice:secret@127.0.0.1/0"));
        assert!(has_password("rediss://h:6379/0?password=x"));
        assert!(!has_password("redis://alice@127.0.0.1:6379/0"));
        assert!(!has_password("redis://127.0.0.1:6379/0"));
        assert!(!has_password("redis://[::1]:6379/0"));
    }
}
