//! Postern: end-to-end mutual TLS for TCP services behind HTTP/2 front ends
//! such as Google Cloud Run.
//!
//! # The path a byte takes
//!
//! ```text
//! app ─TCP─▶ client::serve ─▶ Forward::tunnel ─▶ client::connector::Connector::open ─▶ transport::stream::H2Stream
//!            (one task per        (inner mTLS          (pooled HTTP/2 connections,    (h2 stream as
//!             local socket)        client, tls)         outer TLS, POST per tunnel)    AsyncRead/Write)
//!   ══ front end (Cloud Run, or demo::front in the demo) ══ h2c ══▶
//! server::serve ─▶ server::request ─▶ server::tunnel::run ─▶ transport::splice::splice ─TCP─▶ backend
//! (h2 connections,   (healthz, 404/405,   (answer 200, inner mTLS       (bidirectional copy
//!  drain on SIGTERM)  limits)              server + identity check,      with half-close)
//!                                          then dial the backend)
//! ```
//!
//! # Modules
//!
//! - [`cmd`]: the `postern` command and its subcommands.
//! - [`transport`]: the byte path below the TLS layers — an HTTP/2 stream as
//!   a byte stream, the bidirectional copy, the worker runtimes.
//! - [`tls`]: rustls configurations for the outer and inner layers, the
//!   identity-checking verifiers, swappable certificates, PEM loading.
//! - [`authz`]: the peer's verified identity, identity patterns, allow-lists, routes.
//! - [`server`]: `postern server` — connections, request dispatch, one
//!   tunnel from the `200` to the backend, reload, watchdog, metrics, PROXY
//!   headers, built-in backends.
//! - [`client`]: `postern client` — local listeners, the connection pool
//!   (`connector`), Google ID tokens (`token`).
//! - [`pki`]: certificate issuance (rcgen) for `postern certs`, the demo and the tests.
//! - [`doctor`]: the step-by-step preflight. [`demo`]: the whole path on
//!   loopback, with the TLS-terminating front end it stands in for Cloud Run
//!   with. [`bench`]: the benchmark.
//! - [`signal`]: SIGTERM/SIGINT handling.

#![forbid(unsafe_code)]

pub mod authz;
pub mod bench;
pub mod client;
pub mod cmd;
pub mod demo;
pub mod doctor;
pub mod pki;
pub mod server;
pub mod session;
pub mod signal;
pub mod tls;
pub mod transport;
