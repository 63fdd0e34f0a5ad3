//! The `--config` routes file (TOML), read into validated [`Routes`].

use std::path::Path;

use anyhow::{anyhow, Context};
use serde::Deserialize;

use crate::authz::{Allow, Pattern};
use crate::destination::Policy;
use crate::server::routes::{Route, Routes};

/// The TOML file as written; converted into validated [`Routes`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    route: Vec<RouteFile>,
    /// The destination policy (docs/reference.md), if any.
    destinations: Option<crate::destination::PolicyFile>,
}

/// One `[[route]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: Option<String>,
    path: String,
    sni: Option<String>,
    backend: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
}

/// Loads the server's TOML config file; errors name the file.
///
/// See [`parse_config`] for the format.
// Read at start-up and by the reloader, never on a tunnel's worker.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
pub(super) fn load_config(path: &Path) -> anyhow::Result<Routes> {
    load_config_file(path).map(|(routes, _)| routes)
}

/// Loads the routes and the destination policy (if the file has one).
#[allow(clippy::disallowed_methods)]
pub(super) fn load_config_file(path: &Path) -> anyhow::Result<(Routes, Option<Policy>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    // Flatten the chain so the one-line summary names both file and cause.
    parse_config_file(&text).map_err(|e| anyhow!("config file {}: {e:#}", path.display()))
}

/// Parses the server's config from TOML text.
///
/// ```toml
/// [[route]]
/// name = "db"            # optional, defaults to path
/// path = "/db"
/// sni = "db.internal"    # optional
/// backend = "127.0.0.1:5432"
/// allow = ["spiffe://example.org/ns/prod/*", "dns:client.example.com", "cn:ops"]
/// proxy_protocol = true  # optional, default false
/// ```
///
/// Unknown keys are rejected (a misspelt `allow` must not silently mean
/// "allow anyone"); an omitted `allow` does mean any verified peer.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn parse_config(text: &str) -> anyhow::Result<Routes> {
    parse_config_file(text).map(|(routes, _)| routes)
}

/// Parses the routes and the `[destinations]` policy, if there is one.
pub(super) fn parse_config_file(text: &str) -> anyhow::Result<(Routes, Option<Policy>)> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
    let mut routes = Vec::with_capacity(file.route.len());
    for (i, r) in file.route.into_iter().enumerate() {
        let name = r.name.unwrap_or_else(|| r.path.clone());
        let patterns = r
            .allow
            .iter()
            .enumerate()
            .map(|(j, p)| {
                p.parse::<Pattern>()
                    .with_context(|| format!("route {name:?} (#{}): allow[{j}]", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        routes.push(Route {
            name,
            path: r.path,
            sni: r.sni,
            backend: r.backend,
            allow: Allow::new(patterns),
            proxy_protocol: r.proxy_protocol,
            inner: None,
        });
    }
    let policy = file
        .destinations
        .map(Policy::from_file)
        .transpose()
        .context("[destinations]")?;
    Ok((Routes::new(routes)?, policy))
}
