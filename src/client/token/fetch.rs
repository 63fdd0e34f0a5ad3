//! One fetch from a source, and how long its token is kept.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
use base64::Engine as _;
use http::HeaderValue;
use tokio::time::Instant;

use super::command::run_command;
use super::error::malformed;
use super::google::{id_token_from_key, impersonate};
use super::metadata::fetch_metadata;
use super::{
    TokenError, TokenSource, MAX_LIFETIME, OPAQUE_LIFETIME, REFRESH_MARGIN, UNKNOWN_EXP_LIFETIME,
};

/// A fetched token and when to fetch again.
pub(super) struct Cached {
    /// `Bearer <token>`, marked sensitive. The token is kept only in here.
    pub(super) value: HeaderValue,
    /// From here on a call fetches a new token; `None`: never.
    pub(super) refresh_at: Option<Instant>,
    /// After this the token is not handed out any more; `None`: never.
    pub(super) expires_at: Option<Instant>,
}

/// Gets a token from the source and works out how long to keep it.
pub(super) async fn fetch(source: &TokenSource, audience: &str) -> Result<Cached, TokenError> {
    let kind = source.kind();
    let (token, need_jwt) = match source {
        TokenSource::Metadata { host } => (fetch_metadata(host, audience).await?, true),
        TokenSource::Command(cmd) => (run_command(cmd, audience).await?, false),
        TokenSource::File(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| TokenError::File {
                    path: path.clone(),
                    error: Arc::new(e),
                })?;
            (text, false)
        }
        TokenSource::Static(token) => (token.clone(), false),
        TokenSource::ServiceAccount(sa) => (id_token_from_key(sa, audience).await?, true),
        TokenSource::Impersonate {
            target,
            caller,
            iam,
        } => (impersonate(caller, target, iam, audience).await?, true),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(malformed(kind, "it is empty"));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| malformed(kind, "it contains characters not allowed in an HTTP header"))?;
    value.set_sensitive(true);

    let now = Instant::now();
    let exp = jwt_exp(token);
    if need_jwt && exp.is_none() {
        return Err(malformed(kind, "it is not a JWT"));
    }
    // How long the token has left, when its JWT says.
    let remaining = match exp {
        Some(Some(exp)) => {
            let unix_now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = i64::try_from(unix_now).map_or(0, |now| exp.saturating_sub(now));
            if left <= 0 && !matches!(source, TokenSource::Static(_)) {
                return Err(malformed(
                    kind,
                    &format!("it expired {} s ago (is the system clock right?)", -left),
                ));
            }
            Some(Duration::from_secs(left.max(0).unsigned_abs()).min(MAX_LIFETIME))
        }
        _ => None,
    };
    tracing::debug!(
        source = kind,
        expires_in_secs = remaining.map(|d| d.as_secs()),
        "fetched an ID token"
    );

    if let TokenSource::Static(_) = source {
        if remaining == Some(Duration::ZERO) {
            tracing::warn!("the static ID token has expired; requests will be refused");
        }
        return Ok(Cached {
            value,
            refresh_at: None,
            expires_at: None,
        });
    }
    let cached = match (remaining, exp) {
        (Some(left), _) => {
            let expires_at = now + left;
            Cached {
                value,
                refresh_at: Some(expires_at.checked_sub(REFRESH_MARGIN).unwrap_or(now)),
                expires_at: Some(expires_at),
            }
        }
        // Without a known expiry the token is reused for a fixed, short
        // time and not handed out past it even if a refresh fails.
        (None, Some(None)) => keep_for(value, now + UNKNOWN_EXP_LIFETIME),
        (None, _) => keep_for(value, now + OPAQUE_LIFETIME),
    };
    Ok(cached)
}

fn keep_for(value: HeaderValue, until: Instant) -> Cached {
    Cached {
        value,
        refresh_at: Some(until),
        expires_at: Some(until),
    }
}

/// Reads a JWT's `exp` without checking its signature: we hold the token,
/// the service verifies it; all we need is when to fetch the next one.
///
/// `None`: not a JWT. `Some(None)`: a JWT without a usable `exp`.
pub(super) fn jwt_exp(token: &str) -> Option<Option<i64>> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let claims = claims.as_object()?;
    let exp = claims.get("exp").and_then(|exp| {
        exp.as_i64()
            // Float seconds are allowed by RFC 7519's NumericDate; `as`
            // saturates, which is what we want for silly values.
            .or_else(|| exp.as_f64().map(|f| f as i64))
    });
    Some(exp)
}
