//! The server's routing table: which request path (and inner SNI) leads to
//! which backend, who may use it, and the inner TLS config that enforces that.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::ServerConfig;

use crate::authz::Allow;

/// A backend route: requests whose path (and optionally inner-TLS SNI) match
/// go to `backend`, if the identity is allowed.
#[derive(Clone, Debug)]
pub struct Route {
    /// A label for logs; defaults to the path.
    pub name: String,
    /// The exact request path, e.g. `/db`.
    pub path: String,
    /// If set, the route only serves inner handshakes with this SNI (lower-case).
    pub sni: Option<String>,
    /// Where accepted tunnels are connected, as `host:port`.
    pub backend: String,
    /// Who may use this route.
    pub allow: Allow,
    /// Whether to send a PROXY v2 header to the backend before tunnel bytes.
    pub proxy_protocol: bool,
    /// The inner mTLS config that enforces this route's allow-list; set
    /// when the TLS material is built ([`Routes::with_inner`]), `None` for
    /// plain tunnels.
    pub inner: Option<Arc<ServerConfig>>,
}

/// The server's routing table.
#[derive(Clone, Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The flags-only case: one route, any SNI.
    pub fn single(path: String, backend: String, allow: Allow, proxy_protocol: bool) -> Self {
        Routes {
            routes: vec![Route {
                name: path.clone(),
                path,
                sni: None,
                backend,
                allow,
                proxy_protocol,
                inner: None,
            }],
        }
    }

    /// A validated table: at least one route, good paths and backends, and no
    /// two routes with the same (path, SNI), since `select` could not choose.
    pub fn new(mut routes: Vec<Route>) -> anyhow::Result<Self> {
        if routes.is_empty() {
            bail!("no routes configured (add at least one [[route]])");
        }
        let mut seen = HashSet::new();
        for r in &mut routes {
            let ctx = || format!("route {:?}", r.name);
            validate_path(&r.path).with_context(ctx)?;
            validate_backend(&r.backend).with_context(ctx)?;
            if let Some(sni) = &mut r.sni {
                if sni.is_empty() || sni.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(anyhow!("invalid sni {sni:?}")).with_context(ctx);
                }
                *sni = sni.to_ascii_lowercase();
            }
            if !seen.insert((r.path.clone(), r.sni.clone())) {
                let sni = r.sni.as_deref().unwrap_or("<any>");
                return Err(anyhow!(
                    "duplicate route for path {:?} and sni {sni}",
                    r.path
                ))
                .with_context(ctx);
            }
        }
        Ok(Routes { routes })
    }

    /// Selects the route for a request path and SNI; `None` means 404.
    ///
    /// A route with an SNI wins over one without for the same path, so an
    /// operator can carve specific names out of a catch-all.
    pub fn select(&self, path: &str, sni: Option<&str>) -> Option<&Route> {
        let on_path = || self.routes.iter().filter(move |r| r.path == path);
        let specific = sni.and_then(|s| {
            on_path().find(|r| {
                r.sni
                    .as_deref()
                    .is_some_and(|rs| rs.eq_ignore_ascii_case(s))
            })
        });
        specific.or_else(|| on_path().find(|r| r.sni.is_none()))
    }

    /// The distinct paths, so the server can 404 before the inner handshake.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(i, r)| !self.routes[..*i].iter().any(|p| p.path == r.path))
            .map(|(_, r)| r.path.as_str())
    }

    /// Gives every route its inner mTLS config, built from the route.
    pub fn with_inner(
        mut self,
        build: impl Fn(&Route) -> anyhow::Result<Arc<ServerConfig>>,
    ) -> anyhow::Result<Self> {
        for r in &mut self.routes {
            r.inner = Some(build(r)?);
        }
        Ok(self)
    }

    /// All routes, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// Paths are compared exactly against the HTTP/2 `:path`, so they must look
/// like one: absolute, no query or fragment, nothing invisible.
fn validate_path(path: &str) -> anyhow::Result<()> {
    if !path.starts_with('/') {
        bail!("path {path:?} must start with '/'");
    }
    if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("path {path:?} must not contain a query, fragment, whitespace or control characters");
    }
    Ok(())
}

/// `host:port` with a non-empty host (IPv6 literals in brackets) and a
/// non-zero port, checked at load so a typo fails at startup, not per tunnel.
fn validate_backend(backend: &str) -> anyhow::Result<()> {
    let bad = |why: &str| anyhow!("backend {backend:?} is not host:port: {why}");
    let (host, port) = backend
        .rsplit_once(':')
        .ok_or_else(|| bad("missing ':port'"))?;
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.contains(':') && !bracketed {
        return Err(bad("IPv6 addresses must be in brackets, e.g. [::1]:5432"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("host contains whitespace"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(bad("port 0")),
        Ok(_) => Ok(()),
        Err(_) => Err(bad(&format!("port {port:?} is not a number in 1-65535"))),
    }
}

#[cfg(test)]
mod tests;
