//! The front end's addresses, looked up at most every [`TTL`].
//!
//! `getaddrinfo` blocks, so every lookup is a hop to tokio's blocking pool,
//! and a round trip to the resolver where that is across a network (a
//! container without a local cache). On the benchmark's VM, `localhost` from
//! /etc/hosts, it was 0.05–0.1 ms of a cold tunnel's first byte. A client
//! that dials often (one tunnel
//! per connection, or redials after cuts) reuses the last answer for a
//! while, as curl does by default for 60 s; a connect that fails forgets
//! it, so a front end that moved is looked up again at once.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a lookup's answer is reused.
pub(super) const TTL: Duration = Duration::from_secs(30);

/// The last lookup of one host and port.
pub(super) struct Resolved {
    host: String,
    port: u16,
    last: Mutex<Option<(Instant, Arc<[SocketAddr]>)>>,
    lookups: std::sync::atomic::AtomicU64,
}

impl Resolved {
    /// Nothing looked up yet.
    pub(super) fn new(host: &str, port: u16) -> Resolved {
        Resolved {
            host: host.to_owned(),
            port,
            last: Mutex::new(None),
            lookups: Default::default(),
        }
    }

    /// The addresses, from the last lookup if it is younger than [`TTL`].
    pub(super) async fn addrs(&self) -> io::Result<Arc<[SocketAddr]>> {
        if let Some((at, addrs)) = &*self.lock() {
            if at.elapsed() < TTL {
                return Ok(addrs.clone());
            }
        }
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addrs: Arc<[SocketAddr]> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no addresses", self.host),
            ));
        }
        *self.lock() = Some((Instant::now(), addrs.clone()));
        Ok(addrs)
    }

    /// Drops the last answer (its addresses did not take a connection).
    pub(super) fn forget(&self) {
        *self.lock() = None;
    }

    /// Lookups made so far.
    #[cfg(test)]
    fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<[SocketAddr]>)>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_until_it_is_old_or_forgotten() {
        let r = Resolved::new("localhost", 8443);
        let first = r.addrs().await.unwrap();
        assert!(first
            .iter()
            .all(|a| a.port() == 8443 && a.ip().is_loopback()));
        assert_eq!(r.addrs().await.unwrap(), first);
        assert_eq!(r.lookups(), 1, "reused within the TTL");
        tokio::time::advance(TTL).await;
        r.addrs().await.unwrap();
        assert_eq!(r.lookups(), 2, "looked up again once old");
        r.forget();
        r.addrs().await.unwrap();
        assert_eq!(r.lookups(), 3, "looked up again once forgotten");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_an_error() {
        let r = Resolved::new("no-such-host.invalid", 443);
        assert!(r.addrs().await.is_err());
        assert!(r.lock().is_none(), "no answer kept");
    }
}
