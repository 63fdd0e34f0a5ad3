//! Identity patterns: the `uri:` / `dns:` / `cn:` syntax and how each kind matches.
//!
//! The inner mTLS handshake proves *which* certificate the client holds; this
//! module decides whether that identity may reach a given backend. Matching is
//! deliberately exact and conservative: a pattern only ever widens along the
//! one axis its wildcard names (a path suffix for URIs, one leftmost label for
//! DNS names), so a typo in a pattern denies rather than over-allows.
use std::fmt;
use std::str::FromStr;

use crate::authz::PeerIdentity;

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
