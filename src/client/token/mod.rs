//! Google ID tokens for private Cloud Run services.
//!
//! A private Cloud Run service rejects any request that lacks
//! `Authorization: Bearer <Google ID token>` whose audience is the service
//! URL. The client opens many tunnels, so the token is fetched once, cached
//! in an [`IdTokens`] shared by every tunnel, and refreshed shortly before it
//! expires: never fetched per tunnel, and never written to a log.
//!
//! - [`source`]: where tokens come from (`--id-token`), and the metadata
//!   server's default address;
//! - `cache`: [`IdTokens`], the shared cache with its refresh policy;
//! - `fetch`: one fetch from a source, and how long its token is kept;
//! - `command`: running a token command; `metadata`: the metadata server's
//!   client; `google`: service account keys and impersonation (ADC) over
//!   `https`, one HTTP/1.1 POST; `error`: [`TokenError`].
//!
//! # Why there is a small HTTP/1.1 client here
//!
//! On GCE and Cloud Run the token comes from the metadata server, which is
//! plain HTTP/1.1 on a link-local address. The whole exchange is a single GET
//! with one extra header, so `metadata` sends it directly over a tokio
//! `TcpStream`: one request with `Connection: close`, read to EOF (bounded in
//! size); `httparse` reads the response head and the chunk sizes. That adds
//! two small parsers to the dependency tree, where `hyper-util`'s client
//! would add a connection pool, `tower` plumbing and body utilities for a
//! request made once an hour.
//!
//! Google's own crates were considered and not used:
//! `google-cloud-auth` 1.x cannot be pointed at a local token endpoint,
//! needs Rust 1.91 and brings `reqwest`, `google-cloud-gax` and a JWT stack
//! of its own (see `google`);
//! `gcp_auth` 0.12 is built around OAuth access tokens for scopes (not ID
//! tokens for an audience) and brings `hyper-rustls` and a TLS client stack of
//! its own beside Postern's. For one metadata GET, or running
//! `gcloud auth print-identity-token`, neither is worth it.

mod cache;
mod command;
mod error;
mod fetch;
mod google;
mod https;
mod metadata;
mod source;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use cache::IdTokens;
pub use error::TokenError;
pub use google::{Caller, ServiceAccount};
pub(crate) use metadata::project_id as metadata_project_id;
pub(crate) use source::default_metadata_host;
pub use source::TokenSource;

/// A token is refreshed once it has less than this much validity left, so a
/// tunnel never starts with a token that could expire on the way.
pub(super) const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long one fetch may take before it fails with [`TokenError::Timeout`];
/// a hung metadata server or command must not hang every tunnel with it.
pub(super) const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata server's name when `GCE_METADATA_HOST` is not set.
pub(super) const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// A cached token inside the refresh margin is still handed out after a
/// failed refresh as long as it has at least this much life left; below it
/// the peer could see it expired, given ordinary clock skew.
const MIN_VALIDITY: Duration = Duration::from_secs(30);

/// After a refresh failed, or the source handed back the token we already
/// had, the source is not asked again for this long while the cached token is
/// still usable. Without it every tunnel opened inside the margin would run
/// `gcloud` (or wait out a dead metadata server) one after another.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// With no usable token, callers that queued behind a failed fetch get that
/// fetch's error instead of each repeating it, so one burst of tunnels
/// causes one fetch whether it succeeds or not.
const ERROR_HOLDOFF: Duration = Duration::from_secs(1);

/// How long a JWT without a readable `exp` claim is reused.
const UNKNOWN_EXP_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How long an opaque (non-JWT) token from a command or file is reused.
const OPAQUE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Expiry times further out than this are capped, so a token with an absurd
/// `exp` is still re-read now and then and `Instant` arithmetic cannot
/// overflow.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest metadata server response read; an ID token is about 1 KiB.
const MAX_RESPONSE: usize = 64 * 1024;

/// Error details quoted from a peer or a command are cut to this many chars
/// so an error stays one readable line.
const MAX_DETAIL: usize = 200;
