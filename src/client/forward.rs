//! [`Forward`]: what every tunnel of one `--url` shares (its pool, the inner
//! TLS config, headers, tokens, resume settings); `args` builds it from the
//! flags, `mod.rs` runs its tunnels and `resume` keeps their sessions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderMap;
use rustls_pki_types::ServerName;

use super::connector::Connector;
use super::token::IdTokens;

/// One forward: a local listener and the connector for its URL.
pub struct Forward {
    /// Where tunnels go.
    pub connector: Arc<Connector>,
    /// Inner mTLS config and the name to verify, unless --no-inner-tls.
    pub inner: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The same inner config offering the destination ALPN, for tunnels
    /// that name a destination (built with [`Forward::with_destinations`]).
    pub inner_dest: Option<Arc<rustls::ClientConfig>>,
    /// What its tunnels ask the server for.
    pub destinations: Destinations,
    /// Headers added to every tunnel request.
    pub headers: HeaderMap,
    /// ID tokens for the `authorization` header, if the service is private.
    pub tokens: Option<IdTokens>,
    /// Limit for the inner handshake.
    pub handshake_timeout: Duration,
    /// Worker threads for [`super::serve`] (see `transport::workers`).
    pub workers: usize,
    /// How long a worker polls after it wakes (`--busy-poll`, see
    /// `transport::busy_poll`).
    pub busy_poll: Duration,
    /// Ask for a resumable session (None: `--no-resume`, today's byte stream).
    pub resume: Option<ResumePolicy>,
}

impl Forward {
    /// The same forward with a pool of its own, for another worker thread:
    /// an HTTP/2 connection is driven on one thread, so each worker keeps
    /// its own connections. ID tokens stay shared (one cache, one fetch).
    pub(super) fn for_worker(&self) -> Forward {
        Forward {
            connector: Arc::new(self.connector.sibling()),
            inner: self.inner.clone(),
            inner_dest: self.inner_dest.clone(),
            destinations: self.destinations.clone(),
            headers: self.headers.clone(),
            tokens: self.tokens.clone(),
            handshake_timeout: self.handshake_timeout,
            workers: self.workers,
            busy_poll: self.busy_poll,
            resume: self.resume.clone(),
        }
    }

    /// The same forward, able to name destinations (its inner TLS offers
    /// the destination ALPN when a tunnel does), asking as `destinations` says. Fails without inner TLS, which has nowhere to say it.
    pub fn with_destinations(mut self, destinations: Destinations) -> anyhow::Result<Forward> {
        let Some((config, _)) = &self.inner else {
            anyhow::bail!("--no-inner-tls: a plain tunnel cannot name a destination (--to, --socks5, --http-proxy need the inner TLS)");
        };
        let mut with_alpn = (**config).clone();
        with_alpn.alpn_protocols = vec![crate::destination::wire::ALPN.to_vec()];
        self.inner_dest = Some(Arc::new(with_alpn));
        self.destinations = destinations;
        Ok(self)
    }

    /// The headers of every request of a tunnel: the configured ones and a
    /// fresh ID token.
    pub(super) async fn request_headers(&self) -> anyhow::Result<HeaderMap> {
        let mut headers = self.headers.clone();
        if let Some(tokens) = &self.tokens {
            let bearer = tokens.bearer().await.context("ID token")?;
            headers.insert(http::header::AUTHORIZATION, bearer);
        }
        Ok(headers)
    }
}

/// What a forward's tunnels ask the server for.
#[derive(Debug, Clone, Default)]
pub enum Destinations {
    /// The route's backend, as every tunnel did before destinations.
    #[default]
    Route,
    /// One fixed destination (`--to`, `--forward …,to=`).
    To(crate::destination::Destination),
    /// Each local connection is a SOCKS5 client naming its own (`--socks5`).
    Socks5,
    /// Each local connection is an HTTP CONNECT client (`--http-proxy`).
    HttpConnect,
}

/// Resume settings of a forward.
#[derive(Debug, Clone)]
pub struct ResumePolicy {
    /// The sessions' parameters: `grace` is how long a cut session is
    /// retried (the server's `--resume-timeout` should be at least this).
    pub session: crate::session::Config,
    /// Move the session to a fresh stream this long after its stream
    /// opened, before a front end's request timeout cuts it (None: never).
    pub max_request_age: Option<Duration>,
    /// Whether the server offered a session last time: then the next
    /// tunnel's session starts before its `200` (shared by the workers).
    pub(crate) offered: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for ResumePolicy {
    fn default() -> Self {
        ResumePolicy {
            session: crate::session::Config::default(),
            max_request_age: Some(Duration::from_secs(55 * 60)),
            offered: Default::default(),
        }
    }
}
