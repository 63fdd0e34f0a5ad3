//! Postern: end-to-end mutual TLS for TCP services behind HTTP/2 front ends
//! such as Google Cloud Run.
//!
//! # The path a byte takes
//!
//! ```text
//! app ─TCP─▶ client::serve ─▶ Forward::tunnel ─▶ connector::Connector::open ─▶ stream::H2Stream
//!            (one task per        (inner mTLS          (pooled HTTP/2 connections,    (h2 stream as
//!             local socket)        client, tls.rs)      outer TLS, POST per tunnel)    AsyncRead/Write)
//!   ══ front end (Cloud Run, or front.rs in the demo) ══ h2c ══▶
//! server::serve ─▶ server::request ─▶ server_tunnel::run ─▶ tunnel::splice ─TCP─▶ backend
//! (h2 connections,   (healthz, 404/405,   (answer 200, inner mTLS       (bidirectional copy
//!  drain on SIGTERM)  limits)              server + identity check,      with half-close)
//!                                          then dial the backend)
//! ```
//!
//! # Modules
//!
//! - [`cli`]: the `postern` command and its subcommands; each subcommand's
//!   `Args` lives beside its `run` in its own module.
//! - [`server`]: `postern server` — listener, HTTP/2 connections (h2c or TLS),
//!   request dispatch, limits, graceful drain; its flags are in
//!   [`server_args`]. [`server_tunnel`]: one tunnel on the server, from the
//!   `200` through route choice by path and SNI, the inner handshake and the
//!   PROXY header to the summary log line. [`reload`]: the routes and TLS
//!   material, rebuilt on SIGHUP or file change and swapped in whole.
//!   [`watchdog`]: idle timeout, maximum lifetime and live byte counts.
//!   [`metrics`]: Prometheus metrics on their own listener.
//! - [`client`]: `postern client` — local listeners, `--forward`, `--stdio`,
//!   and the client half of a tunnel. [`connector`]: the pool of HTTP/2
//!   connections to the front end.
//! - [`workers`]: single-threaded worker runtimes; an accepted connection
//!   and all it carries stay on one of them (server and client alike).
//! - [`stream`]: an HTTP/2 stream as a byte stream (flow control, half-close,
//!   resets). [`tunnel`]: accepting sockets, the bidirectional copy and its byte counts.
//! - [`tls`]: rustls configurations for the outer and inner layers, the
//!   identity-checking client verifier, swappable certificates. [`pem`]:
//!   loading and checking PEM files. [`identity`]: the peer's verified identity.
//!   [`policy`]: identity patterns, allow-lists and routes.
//!   [`proxy_protocol`]: PROXY protocol v2 headers.
//! - [`token`]: Google ID tokens for private services, cached and refreshed.
//! - [`certs`]: certificate issuance (rcgen) for `postern certs`, the demo and the tests.
//! - [`doctor`]: the step-by-step preflight. [`demo`]: the whole path on
//!   loopback. [`front`]: the TLS-terminating front end the demo stands in for
//!   Cloud Run with. [`backend`]: built-in banner and echo backends.
//! - [`signal`]: SIGTERM/SIGINT handling.

#![forbid(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod connector;
pub mod demo;
pub mod doctor;
pub mod front;
pub mod identity;
pub mod metrics;
pub mod pem;
pub mod policy;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod server_args;
pub mod server_tunnel;
pub mod signal;
pub mod stream;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod watchdog;
pub mod workers;
