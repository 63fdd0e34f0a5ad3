//! The server's reloadable material (routes, inner and outer TLS configs),
//! built from files and swapped in whole on SIGHUP or when a file changes.
//!
//! Each tunnel takes one snapshot ([`Live::material`]) when its request
//! arrives and keeps it to the end, so a reload never touches open tunnels:
//! they finish on the certificates, CAs, CRLs and routes they started with,
//! while every new tunnel gets the new set. A reload either builds a complete
//! new set or changes nothing: a bad file is reported in one warning naming
//! it, and the previous material keeps serving.
//!
//! Files are polled (modification time, size and inode; every
//! `--watch-interval`, 2 s by default) rather than watched with inotify,
//! because Secret Manager and Kubernetes replace mounted files through
//! symlink swaps that inotify watches on the old file do not see. If a
//! certificate and its key are replaced a moment apart, the first reload may
//! see a mismatched pair and be rejected; the next poll picks up the second
//! file and succeeds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::authz::Allow;
use crate::server::config_file;
use crate::server::metrics::Metrics;
use crate::server::routes::Routes;
use crate::tls::pem;
use crate::tls::{self, CertSlot};

/// Everything a tunnel needs that can change on reload.
pub struct Material {
    /// Where each request path (and SNI) leads and who may use it; each
    /// route carries its inner mTLS config (none for plain tunnels).
    pub routes: Routes,
    /// Outer TLS, when serving TLS directly instead of h2c.
    pub outer: Option<Arc<ServerConfig>>,
    /// The destination policy (`[destinations]` in `--config`); `None`:
    /// tunnels that name a destination are refused.
    pub destinations: Option<Arc<crate::destination::Policy>>,
}

impl Material {
    /// Whether tunnels run the inner mTLS (false with `--no-inner-tls`).
    pub fn inner_tls(&self) -> bool {
        self.routes.iter().any(|r| r.inner.is_some())
    }
}

/// Where the routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// One route from `--path`, `--backend`, `--allow`, `--proxy-protocol`.
    Flags {
        /// Request path.
        path: String,
        /// Backend address (a `builtin:` backend already started and resolved).
        backend: String,
        /// Allowed identities.
        allow: Allow,
        /// Whether to send a PROXY v2 header.
        proxy_protocol: bool,
    },
    /// A TOML file (`--config`), re-read on every reload.
    File(PathBuf),
}

/// The inner mTLS files.
#[derive(Debug, Clone)]
pub struct InnerFiles {
    /// `--cert`.
    pub cert: PathBuf,
    /// `--key`.
    pub key: PathBuf,
    /// `--client-ca`.
    pub client_ca: PathBuf,
    /// `--crl`, any number.
    pub crls: Vec<PathBuf>,
}

/// The files (and flag values) the material is built from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Routes.
    pub routes: RouteSource,
    /// Inner mTLS files; `None` with `--no-inner-tls`.
    pub inner: Option<InnerFiles>,
    /// `--tls-cert` and `--tls-key`.
    pub outer: Option<(PathBuf, PathBuf)>,
    /// Whether the outer TLS takes 0-RTT data (not `--no-early-data`).
    pub early_data: bool,
}

type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

impl Sources {
    /// Loads and checks every file and builds a complete [`Material`].
    pub fn build(&self) -> anyhow::Result<Material> {
        let mut destinations = None;
        let routes = match &self.routes {
            RouteSource::Flags {
                path,
                backend,
                allow,
                proxy_protocol,
            } => Routes::single(
                path.clone(),
                backend.clone(),
                allow.clone(),
                *proxy_protocol,
            ),
            RouteSource::File(path) => {
                let (routes, policy) = config_file::load_config_file(path)?;
                destinations = policy.map(Arc::new);
                routes
            }
        };
        let routes = match &self.inner {
            None => routes,
            Some(f) => {
                let slot = CertSlot::new(
                    pem::load_identity(&f.cert, &f.key)
                        .map_err(pem::blame(&[("--cert", &f.cert), ("--key", &f.key)]))?,
                );
                let roots = pem::load_roots(&f.client_ca)
                    .map_err(pem::blame(&[("--client-ca", &f.client_ca)]))?;
                let mut crls = Vec::new();
                for path in &f.crls {
                    let these = pem::load_crls(path).map_err(pem::blame(&[("--crl", path)]))?;
                    // Build once per file so a CRL webpki rejects is blamed on its file.
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), tls::provider())
                        .with_crls(these.clone())
                        .build()
                        .with_context(|| format!("{}: unusable CRL", path.display()))?;
                    crls.extend(these);
                }
                routes.with_inner(|r| {
                    tls::inner_server_config(
                        slot.clone(),
                        roots.clone(),
                        crls.clone(),
                        r.allow.clone(),
                    )
                })?
            }
        };
        let outer = match &self.outer {
            Some((cert, key)) => Some(tls::outer_server_config(
                CertSlot::new(
                    pem::load_identity(cert, key)
                        .map_err(pem::blame(&[("--tls-cert", cert), ("--tls-key", key)]))?,
                ),
                self.early_data,
            )?),
            None => None,
        };
        Ok(Material {
            routes,
            outer,
            destinations,
        })
    }

    /// Every file the material depends on.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = Vec::new();
        if let RouteSource::File(p) = &self.routes {
            files.push(p.as_path());
        }
        if let Some(f) = &self.inner {
            files.extend([f.cert.as_path(), f.key.as_path(), f.client_ca.as_path()]);
            files.extend(f.crls.iter().map(PathBuf::as_path));
        }
        if let Some((c, k)) = &self.outer {
            files.extend([c.as_path(), k.as_path()]);
        }
        files
    }

    fn fingerprint(&self) -> Fingerprint {
        self.files()
            .into_iter()
            .map(|p| {
                // metadata() follows symlinks, so a swapped link target shows up.
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len(), inode(&m)))
            })
            .collect()
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// What reloading has done so far; tests and operators can wait on changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads attempted.
    pub attempts: u64,
    /// Reloads that replaced the material.
    pub applied: u64,
    /// The error of the latest attempt, if it was rejected.
    pub last_error: Option<String>,
}

/// The current material, and the machinery that replaces it.
pub struct Live {
    sources: Sources,
    current: RwLock<Arc<Material>>,
    seen: std::sync::Mutex<Fingerprint>,
    status: watch::Sender<ReloadStatus>,
    hangup: Notify,
    metrics: Arc<Metrics>,
    gate: Arc<crate::destination::Gate>,
}

impl Live {
    /// Builds the initial material; any problem here is fatal to start-up.
    pub fn new(sources: Sources, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let seen = sources.fingerprint();
        let material = sources.build()?;
        Ok(Live {
            sources,
            current: RwLock::new(Arc::new(material)),
            seen: std::sync::Mutex::new(seen),
            status: watch::Sender::new(ReloadStatus::default()),
            hangup: Notify::new(),
            metrics,
            gate: Arc::default(),
        })
    }

    /// The per-identity destination limits' counts, kept across reloads.
    pub(crate) fn gate(&self) -> Arc<crate::destination::Gate> {
        self.gate.clone()
    }

    /// The material new tunnels use now.
    pub fn material(&self) -> Arc<Material> {
        // A poisoned lock still holds a whole Arc (the swap is one move).
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds from the files now; on success new tunnels use the result,
    /// on failure one warning names the bad file and nothing changes.
    pub fn reload(&self) -> anyhow::Result<()> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = self.sources.fingerprint();
        let result = self.sources.build();
        let ok = result.is_ok();
        self.metrics.reloaded(ok);
        let error = match result {
            Ok(material) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
                info!("reloaded certificates and routes; open tunnels keep their old ones");
                None
            }
            Err(e) => {
                let text = format!("{e:#}");
                warn!(error = %text, "reload rejected; still serving the previous certificates and routes");
                Some(text)
            }
        };
        self.status.send_modify(|s| {
            s.attempts += 1;
            s.applied += u64::from(ok);
            s.last_error = error.clone();
        });
        match error {
            None => Ok(()),
            Some(e) => Err(anyhow::anyhow!(e)),
        }
    }

    /// Asks the watcher to reload now (what SIGHUP does).
    pub fn request_reload(&self) {
        self.hangup.notify_one();
    }

    /// Reload progress, for waiting on a reload to happen.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Reloads on [`Live::request_reload`] and, every `interval` if set, when
    /// a file's modification time, size or inode changed; until `shutdown`.
    /// File reads and TLS config building run on the blocking pool: a slow
    /// or stuck file (a network mount, a FIFO) must not stall the runtime
    /// that accepts connections.
    pub async fn watch(self: Arc<Self>, interval: Option<Duration>, shutdown: CancellationToken) {
        loop {
            let poll = async {
                match interval {
                    Some(i) => tokio::time::sleep(i).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = poll => {
                    let live = self.clone();
                    let Ok(now) = tokio::task::spawn_blocking(move || live.sources.fingerprint()).await
                    else {
                        continue;
                    };
                    let changed = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != now;
                    if !changed {
                        continue;
                    }
                    info!("certificate or config files changed; reloading");
                }
                _ = self.hangup.notified() => info!("reload requested (SIGHUP)"),
                _ = shutdown.cancelled() => return,
            }
            let live = self.clone();
            let reload = tokio::task::spawn_blocking(move || live.reload());
            tokio::select! {
                _ = reload => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
