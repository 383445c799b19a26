//! `[admin]`, resolved: read by [`crate::Gateway::begin`] before any plugin
//! loads, and checked with the rest of the manifest so `weir check` reports it.

use std::net::SocketAddr;

use crate::config::{ConfigError, Manifest};

/// `[admin]`, resolved.
#[derive(Clone)]
pub struct AdminSettings {
    /// Where the admin listener binds.
    pub listen: SocketAddr,
    /// The bearer token, if one is required.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs and panics.
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminSettings {
    /// Reads `[admin]` from the manifest (`None` without the section).
    /// `token_env` is read from the environment now.
    pub fn resolve(m: &Manifest) -> Result<Option<AdminSettings>, Vec<ConfigError>> {
        let Some(admin) = &m.doc.admin else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        let a = admin.get_ref();
        let listen = match a.listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(
                    m.error_at(
                        a.listen.span(),
                        format!("invalid admin listen address `{}`", a.listen.get_ref()),
                    )
                    .help("write it as `IP:PORT`, e.g. \"127.0.0.1:9901\""),
                );
                None
            }
        };
        let token = match (&a.token, &a.token_env) {
            (Some(_), Some(env)) => {
                errors.push(
                    m.error_at(env.span(), "`[admin]` has both `token` and `token_env`")
                        .help("keep one; `token_env` keeps the secret out of the manifest"),
                );
                None
            }
            (Some(t), None) if t.get_ref().trim().is_empty() => {
                errors.push(
                    m.error_at(t.span(), "the admin token is empty")
                        .help("set a long random token, or remove `token`"),
                );
                None
            }
            (Some(t), None) => Some(t.get_ref().clone()),
            (None, Some(env)) => match std::env::var(env.get_ref()) {
                Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
                _ => {
                    errors.push(
                        m.error_at(
                            env.span(),
                            format!(
                                "environment variable `{}` is not set or empty",
                                env.get_ref()
                            ),
                        )
                        .help("export it before starting weir, or use `token = \"...\"`"),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        match listen {
            Some(listen) if errors.is_empty() => Ok(Some(AdminSettings { listen, token })),
            _ => Err(errors),
        }
    }
}
