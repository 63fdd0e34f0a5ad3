//! The cache every tunnel shares: one fetch in flight, a refresh shortly
//! before expiry, the cached token as a fallback while it is still valid.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::fetch::{fetch, Cached};
use super::{
    TokenError, TokenSource, DEFAULT_FETCH_TIMEOUT, ERROR_HOLDOFF, MIN_VALIDITY, RETRY_INTERVAL,
};

/// A cached, self-refreshing bearer token shared by all tunnels.
///
/// Clones share one cache, so cloning is the way to hand it to tunnels.
#[derive(Clone)]
pub struct IdTokens {
    shared: Arc<Shared>,
    timeout: Duration,
}

pub(super) struct Shared {
    pub(super) source: TokenSource,
    pub(super) audience: String,
    /// Held across a fetch: callers arriving meanwhile wait for that fetch
    /// and then find its result in the cache, so there is one fetch in flight.
    state: Mutex<State>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// Set when asking the source again would not help yet (see [`RETRY_INTERVAL`]).
    retry_after: Option<Instant>,
    last_error: Option<(Instant, TokenError)>,
}

impl Cached {
    fn is_fresh(&self, now: Instant) -> bool {
        self.refresh_at.map_or(true, |at| now < at)
    }

    fn is_usable(&self, now: Instant) -> bool {
        self.expires_at.map_or(true, |at| now + MIN_VALIDITY < at)
    }
}

/// Redacts the cache: only the source, audience and counters are shown.
impl fmt::Debug for IdTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokens")
            .field("source", &self.shared.source)
            .field("audience", &self.shared.audience)
            .field("timeout", &self.timeout)
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

impl IdTokens {
    /// A provider for tokens with `audience` (the Cloud Run service URL).
    /// Nothing is fetched until the first [`bearer`](Self::bearer).
    pub fn new(source: TokenSource, audience: String) -> Self {
        IdTokens {
            shared: Arc::new(Shared {
                source,
                audience,
                state: Mutex::new(State::default()),
                fetches: AtomicU64::new(0),
            }),
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// Sets the per-fetch timeout (default `DEFAULT_FETCH_TIMEOUT`, 10 s) for this
    /// handle and clones made from it afterwards.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The audience tokens are requested for.
    pub fn audience(&self) -> &str {
        &self.shared.audience
    }

    /// Returns `Bearer <token>` valid for at least `REFRESH_MARGIN` (5 min) more,
    /// fetching when the cache is empty or close to expiry. Concurrent
    /// callers share one fetch. If a refresh fails while the cached token has
    /// not yet expired, that token is returned and a warning logged.
    ///
    /// The header value is marked sensitive so HTTP/2 never indexes it
    /// with HPACK and `http`'s Debug output hides it.
    ///
    /// The fetch runs inside the caller's future: if the caller that
    /// started it is dropped, the fetch stops and the next waiter starts
    /// a new one, which keeps the code free of background tasks.
    pub async fn bearer(&self) -> Result<HeaderValue, TokenError> {
        let shared = &*self.shared;
        let mut state = shared.state.lock().await;
        let now = Instant::now();

        if let Some(cached) = &state.cached {
            if cached.is_fresh(now) {
                return Ok(cached.value.clone());
            }
            let holding_off = state.retry_after.is_some_and(|at| now < at);
            if holding_off && cached.is_usable(now) {
                return Ok(cached.value.clone());
            }
        }
        let have_usable = state.cached.as_ref().is_some_and(|c| c.is_usable(now));
        if !have_usable {
            if let Some((at, err)) = &state.last_error {
                if now.duration_since(*at) < ERROR_HOLDOFF {
                    return Err(err.clone());
                }
            }
        }

        shared.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched =
            match tokio::time::timeout(self.timeout, fetch(&shared.source, &shared.audience)).await
            {
                Ok(result) => result,
                Err(_) => Err(TokenError::Timeout {
                    from: shared.source.kind(),
                    after: self.timeout,
                }),
            };
        let now = Instant::now();
        match fetched {
            Ok(new) => {
                let unchanged = state
                    .cached
                    .as_ref()
                    .is_some_and(|old| old.value == new.value);
                // A source that hands back the token we already have (gcloud
                // does until its own threshold) is not asked again right away.
                state.retry_after =
                    (unchanged && new.is_usable(now)).then_some(now + RETRY_INTERVAL);
                state.last_error = None;
                let value = new.value.clone();
                state.cached = Some(new);
                Ok(value)
            }
            Err(err) => {
                let fallback = state
                    .cached
                    .as_ref()
                    .filter(|c| c.is_usable(now))
                    .map(|c| c.value.clone());
                if let Some(value) = fallback {
                    tracing::warn!(
                        source = shared.source.kind(),
                        error = %err,
                        "refreshing the ID token failed; using the cached one until it expires"
                    );
                    state.retry_after = Some(now + RETRY_INTERVAL);
                    return Ok(value);
                }
                state.last_error = Some((now, err.clone()));
                Err(err)
            }
        }
    }

    /// How many fetches have been started, successful or not (for tests and
    /// metrics: it should stay near one per token lifetime).
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }
}
