//! Authorization by peer identity, and the server's routing table.
//!
//! The inner mTLS handshake proves *which* certificate the client holds; this
//! module decides whether that identity may reach a given backend. Matching is
//! deliberately exact and conservative: a pattern only ever widens along the
//! one axis its wildcard names (a path suffix for URIs, one leftmost label for
//! DNS names), so a typo in a pattern denies rather than over-allows.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::authz::identity::PeerIdentity;

/// One allowed-identity pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// An exact URI SAN, or a prefix ending in `/*` that matches any URI below
    /// that path (`spiffe://example.org/ns/prod/*` matches
    /// `spiffe://example.org/ns/prod/sa/a`, but neither
    /// `spiffe://example.org/ns/prod` nor `.../ns/production/x`).
    Uri(String),
    /// An exact DNS SAN (ASCII case-insensitive, stored lower-case), or
    /// `*.example.com`, matching exactly one extra leftmost label.
    Dns(String),
    /// An exact subject common name (case-sensitive).
    CommonName(String),
}

/// Why a pattern string was rejected; the message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identity pattern {value:?}: {reason}")]
pub struct PatternError {
    /// The pattern text as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Pattern {
    type Err = PatternError;

    /// Parses the CLI/config syntax `uri:VALUE`, `dns:VALUE` or `cn:VALUE`; a
    /// bare `spiffe://...` is taken as a URI because that is the common case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PatternError {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let s_trim = s.trim();
        if s_trim.starts_with("spiffe://") {
            return parse_uri(s_trim).map(Pattern::Uri).map_err(|r| err(&r));
        }
        let Some((kind, value)) = s_trim.split_once(':') else {
            return Err(err(
                "expected a uri:, dns: or cn: prefix (or a bare spiffe:// URI)",
            ));
        };
        match kind {
            "uri" => parse_uri(value).map(Pattern::Uri),
            "dns" => parse_dns(value).map(Pattern::Dns),
            "cn" => parse_cn(value).map(Pattern::CommonName),
            _ => Err(format!(
                "unknown kind {kind:?}; expected uri:, dns: or cn: (or a bare spiffe:// URI)"
            )),
        }
        .map_err(|r| err(&r))
    }
}

/// Validates a URI pattern: a scheme, no whitespace, and `*` only as a
/// trailing `/*` below a non-empty authority (so `spiffe://*` cannot allow
/// every trust domain by accident).
fn parse_uri(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("empty URI".into());
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("URI contains whitespace or control characters".into());
    }
    let scheme_ok = v.split_once(':').is_some_and(|(scheme, _)| {
        scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !scheme_ok {
        return Err("not a URI (expected scheme:...)".into());
    }
    let stars = v.matches('*').count();
    if stars == 0 {
        return Ok(v.to_owned());
    }
    if stars > 1 || !v.ends_with("/*") {
        return Err("'*' is only allowed as a trailing \"/*\"".into());
    }
    if let Some((_, rest)) = v.split_once("://") {
        // The wildcard's '/' must be a path separator, not the end of "//".
        match rest.find('/') {
            Some(0) | None => return Err("wildcard needs a non-empty authority before it".into()),
            Some(_) => {}
        }
    }
    Ok(v.to_owned())
}

/// Validates a DNS pattern and lower-cases it so matching can compare bytes.
fn parse_dns(v: &str) -> Result<String, String> {
    let lower = v.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if name.is_empty() {
        return Err("empty DNS name".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or doubled '.')".into());
        }
        if label.contains('*') {
            return Err(
                "'*' is only allowed as the whole leftmost label (\"*.example.com\")".into(),
            );
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("invalid character in label {label:?}"));
        }
    }
    if wild && !name.contains('.') {
        return Err("wildcard must sit above at least two labels (\"*.example.com\")".into());
    }
    Ok(lower)
}

/// Validates a common-name pattern: non-empty, no control characters.
fn parse_cn(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("empty common name".into());
    }
    if v.chars().any(char::is_control) {
        return Err("common name contains control characters".into());
    }
    Ok(v.to_owned())
}

impl Pattern {
    /// Whether any of the identity's names of this pattern's kind match.
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            Pattern::Uri(p) => id.uris.iter().any(|u| uri_matches(p, u)),
            Pattern::Dns(p) => id.dns_names.iter().any(|d| dns_matches(p, d)),
            Pattern::CommonName(p) => id.common_name.as_deref() == Some(p.as_str()),
        }
    }
}

/// URI matching: exact bytes, or for a `/*` pattern, a strict extension of the
/// prefix (which includes its trailing '/') whose remaining path segments are
/// all real names. Dot segments, empty segments, queries and fragments are
/// refused because a backend might normalise them back out of the subtree.
fn uri_matches(pattern: &str, uri: &str) -> bool {
    let Some(prefix) = pattern.strip_suffix('*') else {
        return pattern == uri;
    };
    let Some(rest) = uri.strip_prefix(prefix) else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['?', '#'])
        && rest
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// DNS matching: case-insensitive exact, or for `*.suffix`, exactly one extra
/// non-empty, non-wildcard label in front of `.suffix`.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return pattern.eq_ignore_ascii_case(name);
    };
    // `suffix` starts with '.', so the split below is on a label boundary.
    if name.len() <= suffix.len() || !name.is_char_boundary(name.len() - suffix.len()) {
        return false;
    }
    let (label, tail) = name.split_at(name.len() - suffix.len());
    tail.eq_ignore_ascii_case(suffix) && !label.contains(['.', '*'])
}

impl fmt::Display for Pattern {
    /// The pattern in the same syntax `FromStr` accepts, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Uri(v) => write!(f, "uri:{v}"),
            Pattern::Dns(v) => write!(f, "dns:{v}"),
            Pattern::CommonName(v) => write!(f, "cn:{v}"),
        }
    }
}

/// A list of allowed patterns; empty means "any identity that chains to the CA".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    patterns: Vec<Pattern>,
}

/// A peer was authenticated but no pattern allows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity {identity} is not allowed: it matches none of the configured patterns")]
pub struct Denied {
    /// A description of every name the peer presented, for the log line.
    pub identity: String,
}

impl Allow {
    /// An allow list of the given patterns (empty = any verified peer).
    pub fn new(patterns: Vec<Pattern>) -> Self {
        Allow { patterns }
    }

    /// Whether this list allows every peer the CA vouches for.
    pub fn is_any(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns, in the order they are tried.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// `Ok` with the first matching pattern as text (or `"any"`), so the
    /// caller can log *why* a peer got in; `Err` naming the peer otherwise.
    pub fn check(&self, id: &PeerIdentity) -> Result<String, Denied> {
        if self.is_any() {
            return Ok("any".to_owned());
        }
        self.patterns
            .iter()
            .find(|p| p.matches(id))
            .map(ToString::to_string)
            .ok_or_else(|| Denied {
                identity: describe(id),
            })
    }
}

/// Every name in the identity, so a denial log shows what was compared.
fn describe(id: &PeerIdentity) -> String {
    let mut names: Vec<String> = Vec::new();
    names.extend(id.uris.iter().map(|u| format!("uri:{u}")));
    names.extend(id.dns_names.iter().map(|d| format!("dns:{d}")));
    names.extend(id.ips.iter().map(|i| format!("ip:{i}")));
    names.extend(id.common_name.iter().map(|c| format!("cn:{c}")));
    if names.is_empty() {
        "<anonymous>".to_owned()
    } else {
        format!("[{}]", names.join(", "))
    }
}

/// A backend route: requests whose path (and optionally inner-TLS SNI) match
/// go to `backend`, if the identity is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The TOML file as written; converted into validated [`Routes`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    route: Vec<RouteFile>,
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
pub fn load_config(path: &Path) -> anyhow::Result<Routes> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    // Flatten the chain so the one-line summary names both file and cause.
    parse_config(&text).map_err(|e| anyhow!("config file {}: {e:#}", path.display()))
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
pub fn parse_config(text: &str) -> anyhow::Result<Routes> {
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
        });
    }
    Routes::new(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_id(u: &str) -> PeerIdentity {
        PeerIdentity {
            uris: vec![u.to_owned()],
            ..Default::default()
        }
    }

    fn dns_id(d: &str) -> PeerIdentity {
        PeerIdentity {
            dns_names: vec![d.to_owned()],
            ..Default::default()
        }
    }

    fn cn_id(c: &str) -> PeerIdentity {
        PeerIdentity {
            common_name: Some(c.to_owned()),
            ..Default::default()
        }
    }

    fn pat(s: &str) -> Pattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn uri_patterns() {
        let table: &[(&str, &str, bool)] = &[
            (
                "spiffe://example.org/ns/prod/sa/a",
                "spiffe://example.org/ns/prod/sa/a",
                true,
            ),
            (
                "spiffe://example.org/ns/prod/sa/a",
                "spiffe://example.org/ns/prod/sa/ab",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/sa/a",
                "spiffe://example.org/ns/prod/sa",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/sa/a",
                "SPIFFE://example.org/ns/prod/sa/a",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod/sa/a",
                true,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod/x",
                true,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/production/x",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod/",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod//x",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod/../admin",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod/./x",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/prod/x?y",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://example.org/ns/dev/x",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "spiffe://evil.org/ns/prod/x",
                false,
            ),
            (
                "spiffe://example.org/ns/prod/*",
                "xspiffe://example.org/ns/prod/x",
                false,
            ),
            (
                "spiffe://example.org/*",
                "spiffe://example.org/anything/at/all",
                true,
            ),
            (
                "spiffe://example.org/*",
                "spiffe://example.org.evil/x",
                false,
            ),
            (
                "uri:https://ops.example.com/team",
                "https://ops.example.com/team",
                true,
            ),
            ("uri:urn:example:client", "urn:example:client", true),
        ];
        let mut n = 0;
        for (p, u, want) in table {
            assert_eq!(pat(p).matches(&uri_id(u)), *want, "{p} vs {u}");
            // A URI pattern never matches the same text in another field.
            assert!(!pat(p).matches(&dns_id(u)), "{p} vs dns {u}");
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn dns_patterns() {
        let table: &[(&str, &str, bool)] = &[
            ("dns:client.example.com", "client.example.com", true),
            ("dns:client.example.com", "CLIENT.Example.COM", true),
            ("dns:Client.Example.com", "client.example.com", true),
            ("dns:client.example.com", "client.example.com.evil", false),
            ("dns:client.example.com", "xclient.example.com", false),
            ("dns:client.example.com", "a.client.example.com", false),
            ("dns:*.example.com", "a.example.com", true),
            ("dns:*.example.com", "A.EXAMPLE.COM", true),
            ("dns:*.example.com", "example.com", false),
            ("dns:*.example.com", ".example.com", false),
            ("dns:*.example.com", "a.b.example.com", false),
            ("dns:*.example.com", "aexample.com", false),
            ("dns:*.example.com", "a.example.com.evil", false),
            ("dns:*.example.com", "*.example.com", false),
            ("dns:*.example.com", "é.example.com", true),
            ("dns:*.example.com", "a.exampleécom", false),
        ];
        let mut n = 0;
        for (p, d, want) in table {
            assert_eq!(pat(p).matches(&dns_id(d)), *want, "{p} vs {d}");
            assert!(!pat(p).matches(&cn_id(d)), "{p} vs cn {d}");
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn cn_patterns() {
        let table: &[(&str, &str, bool)] = &[
            ("cn:ops", "ops", true),
            ("cn:ops", "OPS", false),
            ("cn:ops", "ops2", false),
            ("cn:ops", "op", false),
            ("cn:ops team", "ops team", true),
            ("cn:*", "anything", false),
            ("cn:*", "*", true),
        ];
        let mut n = 0;
        for (p, c, want) in table {
            assert_eq!(pat(p).matches(&cn_id(c)), *want, "{p} vs {c}");
            assert!(!pat(p).matches(&dns_id(c)), "{p} vs dns {c}");
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn matches_any_san_element() {
        let id = PeerIdentity {
            uris: vec!["spiffe://a.org/x".into(), "spiffe://b.org/ns/prod/y".into()],
            dns_names: vec!["one.example.com".into(), "two.example.net".into()],
            common_name: Some("ops".into()),
            ..Default::default()
        };
        assert!(pat("spiffe://b.org/ns/prod/*").matches(&id));
        assert!(pat("dns:*.example.net").matches(&id));
        assert!(pat("cn:ops").matches(&id));
        assert!(!pat("dns:*.example.org").matches(&id));
    }

    #[test]
    fn pattern_parsing() {
        assert_eq!(
            pat("spiffe://x.org/a"),
            Pattern::Uri("spiffe://x.org/a".into())
        );
        assert_eq!(
            pat("uri:spiffe://x.org/*"),
            Pattern::Uri("spiffe://x.org/*".into())
        );
        assert_eq!(
            pat("dns:A.Example.COM"),
            Pattern::Dns("a.example.com".into())
        );
        assert_eq!(pat("cn:ops"), Pattern::CommonName("ops".into()));
        assert_eq!(pat("dns:*.Example.com").to_string(), "dns:*.example.com");

        let bad = [
            "",
            "ops",
            "foo:bar",
            "uri:",
            "uri:not a uri",
            "uri:nocolon",
            "uri:spiffe://x.org/a*",
            "uri:spiffe://x.org/*/a",
            "uri:spiffe://x.org/**",
            "spiffe://*",
            "spiffe:///*",
            "spiffe://*.org/a",
            "dns:",
            "dns:*",
            "dns:*.com",
            "dns:a*.example.com",
            "dns:a.*.example.com",
            "dns:example..com",
            "dns:example.com.",
            "dns:exa mple.com",
            "cn:",
        ];
        let mut n = 0;
        for b in bad {
            let e = b.parse::<Pattern>().expect_err(b);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{b:?}")), "{msg} should name {b:?}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn allow_check() {
        let any = Allow::default();
        assert!(any.is_any());
        assert_eq!(any.check(&PeerIdentity::default()).as_deref(), Ok("any"));

        let allow = Allow::new(vec![pat("spiffe://example.org/ns/prod/*"), pat("cn:ops")]);
        assert!(!allow.is_any());
        assert_eq!(
            allow
                .check(&uri_id("spiffe://example.org/ns/prod/sa/a"))
                .as_deref(),
            Ok("uri:spiffe://example.org/ns/prod/*")
        );
        assert_eq!(allow.check(&cn_id("ops")).as_deref(), Ok("cn:ops"));

        let denied = allow
            .check(&uri_id("spiffe://example.org/ns/production/x"))
            .expect_err("must deny");
        assert!(denied
            .identity
            .contains("spiffe://example.org/ns/production/x"));
        let msg = denied.to_string();
        assert!(
            msg.contains("spiffe://example.org/ns/production/x"),
            "{msg}"
        );
        assert!(msg.contains("not allowed"), "{msg}");
        let anon = allow
            .check(&PeerIdentity::default())
            .expect_err("must deny");
        assert!(anon.to_string().contains("<anonymous>"));
    }

    fn route(path: &str, sni: Option<&str>, backend: &str) -> Route {
        Route {
            name: format!("{path}{sni:?}"),
            path: path.into(),
            sni: sni.map(Into::into),
            backend: backend.into(),
            allow: Allow::default(),
            proxy_protocol: false,
        }
    }

    #[test]
    fn select_precedence() {
        let routes = Routes::new(vec![
            route("/db", None, "127.0.0.1:1"),
            route("/db", Some("Special.Internal"), "127.0.0.1:2"),
            route("/only-sni", Some("a.internal"), "127.0.0.1:3"),
            route("/other", None, "127.0.0.1:4"),
        ])
        .expect("valid");
        let backend = |p, s| routes.select(p, s).map(|r| r.backend.as_str());
        assert_eq!(backend("/db", None), Some("127.0.0.1:1"));
        assert_eq!(backend("/db", Some("other.internal")), Some("127.0.0.1:1"));
        assert_eq!(
            backend("/db", Some("special.internal")),
            Some("127.0.0.1:2")
        );
        assert_eq!(
            backend("/db", Some("SPECIAL.internal")),
            Some("127.0.0.1:2")
        );
        assert_eq!(
            backend("/only-sni", Some("a.internal")),
            Some("127.0.0.1:3")
        );
        assert_eq!(backend("/only-sni", Some("b.internal")), None);
        assert_eq!(backend("/only-sni", None), None);
        assert_eq!(backend("/db/", None), None);
        assert_eq!(backend("/DB", None), None);
        assert_eq!(backend("/", None), None);
        assert_eq!(
            routes.paths().collect::<Vec<_>>(),
            ["/db", "/only-sni", "/other"]
        );
        assert_eq!(routes.iter().count(), 4);

        let single = Routes::single("/t".into(), "h:1".into(), Allow::default(), true);
        let r = single.select("/t", Some("whatever")).expect("route");
        assert!(r.proxy_protocol);
        assert_eq!(r.name, "/t");
    }

    const EXAMPLE: &str = r#"
[[route]]
name = "db"
path = "/db"
sni = "db.internal"
backend = "127.0.0.1:5432"
allow = ["spiffe://example.org/ns/prod/*", "dns:client.example.com", "cn:ops"]
proxy_protocol = true

[[route]]
path = "/db"
backend = "[::1]:5433"

[[route]]
path = "/ssh"
backend = "bastion.internal:22"
allow = ["cn:ops"]
"#;

    #[test]
    fn parse_valid_example() {
        let routes = parse_config(EXAMPLE).expect("valid");
        let all: Vec<&Route> = routes.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].name, "db");
        assert_eq!(all[0].sni.as_deref(), Some("db.internal"));
        assert!(all[0].proxy_protocol);
        assert_eq!(all[0].allow.patterns().len(), 3);
        assert_eq!(all[1].name, "/db");
        assert!(all[1].allow.is_any());
        assert!(!all[1].proxy_protocol);
        assert_eq!(
            routes
                .select("/db", Some("DB.internal"))
                .map(|r| r.name.as_str()),
            Some("db")
        );
        assert_eq!(
            routes.select("/db", None).map(|r| r.name.as_str()),
            Some("/db")
        );
        assert_eq!(routes.paths().collect::<Vec<_>>(), ["/db", "/ssh"]);
    }

    #[test]
    fn parse_errors() {
        // (config text, text the error must contain)
        let fixtures: &[(&str, &str)] = &[
            ("", "no routes"),
            ("[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nalow = [\"cn:x\"]\n", "alow"),
            ("routes = 1\n", "routes"),
            ("[[route]]\npath = \"/a\"\n", "backend"),
            ("[[route]]\npath = \"/a\"\nbackend = \"h:99999\"\n", "99999"),
            ("[[route]]\npath = \"/a\"\nbackend = \"h:0\"\n", "port 0"),
            ("[[route]]\npath = \"/a\"\nbackend = \"h\"\n", "missing ':port'"),
            ("[[route]]\npath = \"/a\"\nbackend = \":80\"\n", "empty host"),
            ("[[route]]\npath = \"/a\"\nbackend = \"::1:80\"\n", "brackets"),
            ("[[route]]\npath = \"a\"\nbackend = \"h:1\"\n", "must start with '/'"),
            ("[[route]]\npath = \"/a?b\"\nbackend = \"h:1\"\n", "query"),
            ("[[route]]\npath = \"/a\"\nsni = \"\"\nbackend = \"h:1\"\n", "sni"),
            (
                "[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nallow = [\"dns:*.com\"]\n",
                "dns:*.com",
            ),
            (
                "[[route]]\nname = \"x\"\npath = \"/a\"\nbackend = \"h:1\"\nallow = [\"cn:o\", \"bogus\"]\n",
                "allow[1]",
            ),
            (
                "[[route]]\npath = \"/a\"\nbackend = \"h:1\"\n[[route]]\npath = \"/a\"\nbackend = \"h:2\"\n",
                "duplicate",
            ),
            (
                "[[route]]\npath = \"/a\"\nsni = \"X\"\nbackend = \"h:1\"\n[[route]]\npath = \"/a\"\nsni = \"x\"\nbackend = \"h:2\"\n",
                "duplicate",
            ),
            ("[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nproxy_protocol = \"yes\"\n", "proxy_protocol"),
        ];
        let mut n = 0;
        for (text, want) in fixtures {
            let e = parse_config(text).expect_err(text);
            let msg = format!("{e:#}");
            assert!(
                msg.contains(want),
                "error for {text:?} was {msg:?}, wanted {want:?}"
            );
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn unknown_key_error_names_key_and_line() {
        let text = "[[route]]\npath = \"/a\"\nbackend = \"h:1\"\nalow = [\"cn:x\"]\n";
        let msg = format!("{:#}", parse_config(text).expect_err("unknown key"));
        assert!(msg.contains("alow"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn load_config_names_file() {
        let dir = std::env::temp_dir().join(format!("postern-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let good = dir.join("good.toml");
        let bad = dir.join("bad.toml");
        std::fs::write(&good, EXAMPLE).expect("write");
        std::fs::write(&bad, "[[route]]\npath = \"/a\"\nbackend = \"h:x\"\n").expect("write");
        assert_eq!(load_config(&good).expect("good").iter().count(), 3);
        let msg = load_config(&bad).expect_err("bad").to_string();
        assert!(msg.contains("bad.toml") && msg.contains("\"h:x\""), "{msg}");
        let missing = dir.join("missing.toml");
        let msg = format!("{:#}", load_config(&missing).expect_err("missing"));
        assert!(msg.contains("missing.toml"), "{msg}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
