//! The first-party plugins, each through a real gateway to a real origin.

mod headers;
mod jwt_auth;
mod key_auth;
mod rate_limit;

use crate::support::{TestGateway, Upstream, plugin};

/// One route `/` to `up` with one plugin and its config (a TOML inline table body).
/// The plugin may call no upstream (`grants.http = []`: jwt-auth can call out).
async fn gateway_with(up: &Upstream, name: &str, file_stem: &str, config: &str) -> TestGateway {
    TestGateway::start(&format!(
        "[plugins.{name}]\npath = \"{}\"\ngrants = {{ http = [] }}\n\n[[routes]]\nid = \"main\"\nprefix = \"/\"\nupstream = \"{}\"\n[[routes.plugins]]\nname = \"{name}\"\n[routes.plugins.config]\n{config}\n",
        plugin(file_stem),
        up.url()
    ))
    .await
}
