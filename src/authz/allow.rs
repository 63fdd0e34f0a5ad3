//! Allow-lists: which verified identities may use a route (or which names a
//! client accepts from the server, `--server-identity`).

use crate::authz::{Pattern, PeerIdentity};

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
