//! Postern: end-to-end mutual TLS for TCP services behind HTTP/2 front ends
//! such as Google Cloud Run.
//!
//! # The path a byte takes
//!
//! ```text
//! app ─TCP─▶ client::Forward ─▶ inner TLS client ─▶ session::Session ─▶ client::Connector::open ─▶ transport::stream::H2Stream
//!            (one task per       (tls::config)       (frames, replay,   (pooled HTTP/2 connections,  (an h2 stream as
//!             local socket)                           resume; unless     outer TLS, POST per tunnel)   AsyncRead/Write)
//!                                                     --no-resume)
//!   ══ front end (Cloud Run, or demo::front) ══ h2c ══▶   (or, with --transport websocket:
//!   H2Stream ─▶ client::gateway ══ WebSocket ══▶ server::http1 ─▶ an in-process h2c connection)
//! server::serve ─▶ server::request ─▶ server::tunnel ─────────────────▶ transport::splice ─TCP─▶ backend
//!                                     (or server::destination: the client's named destination,
//!                                      checked by destination::policy, dialled by destination::dial)
//! (accept loop,     (healthz, 404/405,  (answer 200, the session, inner    (bidirectional copy
//!  h2 connections,   limits)             TLS server, identity checked in    with half-close)
//!  drain)                                the verifier, then the backend)
//! ```
//!
//! # Layout: one folder per layer
//!
//! - `main.rs` parses, sets up logging and the runtime, and maps errors to
//!   an exit code. [`cmd`]: flags only — `Cli`, `Command`, one file per
//!   tool's `Args` (and its `run` where that is a thin adapter), `parse`
//!   (flags from an argv, for the demo, bench and tests); the server's and
//!   the client's and the bench's `Args` live with them (`server/args`,
//!   `client/args`, `bench/args`).
//!   `duration`: the one duration parser, a leaf every command's flags use.
//! - `transport`: below both TLS layers — `stream` (an HTTP/2 stream as a
//!   byte stream: flow control, half-close, resets; owned writes and chunk
//!   reads, so a session's payloads pass uncopied), `settings` (the one
//!   place for windows, frame and header sizes), `splice` (the
//!   bidirectional copy and its counts, in turns that yield to the
//!   worker's other tasks and offer the CPU to other threads), `accept`
//!   (the one accept loop), `ended` (why an outer connection ended, in the
//!   user's words), `workers` (single-threaded runtimes; a connection and all it carries
//!   stay on one), `busy_poll` (how long a woken worker keeps polling
//!   before it sleeps, `--busy-poll`), `socket` (options of the outer TCP sockets, and the
//!   buffer their reads go through), `websocket` (the WebSocket transport:
//!   one HTTP/2 stream carried over one WebSocket, ends and resets mapped to
//!   messages and close codes), `rewind` (bytes read ahead put back).
//! - `session`: the resumable session layer beneath the inner TLS and
//!   above the HTTP/2 stream — `frame` (the framing), `replay` (the bounded
//!   replay buffer), `carrier` (what a session runs over), `carried` (how a
//!   tunnel ends what it runs over, stream or session, on both sides: the
//!   one `Carried` trait, `LINGER`, `FINISH_LIMIT`), `core` (one
//!   session over many carriers; `core/handle` its control handle, `core/life` how one is made and ended,
//!   `core/link` one carrier's frames in and out,
//!   `core/receive` what arriving frames do, `core/retired` a carrier a
//!   move replaced, read to its end, `core/app` the application's reads
//!   and writes), `out`
//!   (frames staged for the carrier), `wake` (who is woken), `handshake`
//!   (ids, keys, resume proofs), `limits`
//!   (refusals, limits on detached sessions), `budget` (the process-wide
//!   bound on what all sessions hold, `--buffer-budget-mib`), `registry`
//!   (the server's sessions by id).
//! - [`tls`]: `provider` (the crypto provider), `config` (outer and inner
//!   rustls configs), `early` (the server's outer TLS stream, which serves
//!   0-RTT data before the handshake ends), `verify` (identity-checking
//!   verifiers), `intercept` (the outer verifier that names the issuer
//!   it refuses: a TLS-intercepting proxy's CA), `slot`
//!   (swappable certificates), `failure` (classified handshake failures),
//!   `pem` (loading and checking PEM files).
//! - [`authz`]: `identity` (the peer's verified identity), `pattern`
//!   (identity patterns), `allow` (allow-lists).
//! - `destination`: destinations chosen per tunnel, shared by both
//!   sides — `wire` (the request and answer inside the inner TLS, ALPN
//!   `postern-dest/1`), `policy` (`[destinations]`: rules by identity,
//!   ranges, names, ports; one lookup, every answer checked), `net` (CIDR
//!   ranges), `deny` (the built-in deny list and the spellings it sees
//!   through), `gate` (per-identity limits, kept across reloads), `dial`
//!   (Happy Eyeballs under the dial timeout).
//! - [`server`]: `args`, `config`, `serve` (connections and drain),
//!   `request` (dispatch), `reply`, `tunnel` (one tunnel from the `200` to
//!   the backend), `report` (its summary line), `watchdog` (idle timeout,
//!   lifetime), `routes` and `config_file` (routing by path and SNI),
//!   `reload` (material swapped on SIGHUP or file change), `destination`
//!   (a tunnel that names its destination: request, policy, limits, dial,
//!   answer, then the copy), `metrics`,
//!   `proxy_protocol` (PROXY v2 to backends), `backend` (built-in backends),
//!   `http1` (HTTP/1.1 on the same port: the WebSocket upgrade, bridged to
//!   an in-process HTTP/2 connection served as any other; refusals),
//!   `windows` (receive windows earned by authentication, the buffer
//!   budget), `resume` (resume requests).
//! - [`client`]: `run`, `Forward` and the local listeners (`mod.rs`), `args`
//!   (its flags and the forward they describe), `connector`
//!   (the pool of HTTP/2 connections), `reach` (`--transport`, `--proxy`), `proxy/` (forward
//!   proxy egress: the environment and `NO_PROXY` through hyper-util's
//!   matcher, `connect` the HTTP CONNECT and its one-line refusals), `gateway`
//!   (`--transport websocket`: an in-process HTTP/2 server turning each
//!   tunnel stream into a WebSocket to the front end), `resolve` (the front end's addresses,
//!   looked up at most every 30 s), `target` (the parsed `--url`),
//!   `token/` (Google ID tokens: sources, cache, metadata server, command,
//!   service-account keys and impersonation), `resume` (asking for a session,
//!   cookies, moving a session to a new stream), `stdio` (`--stdio`: one
//!   tunnel over stdin/stdout, drained on SIGHUP/SIGTERM/SIGINT),
//!   `destination` (a tunnel's destination request and the wait for its
//!   answer), `socks5` (`--socks5`) and `http_connect` (`--http-proxy`),
//!   the listeners whose clients name their own.
//! - [`pki`]: certificate issuance (rcgen) — `ca`, `leaf`, `crl`, `files`
//!   (0600 key files and the flags that use a certificate directory) — for
//!   `postern certs`, the demo, the bench and the tests.
//! - Tools: [`doctor`] (the step-by-step preflight: `requests`, `measure`,
//!   `resume` — a session moved through the front end), [`demo`] (the whole
//!   path on loopback, with `front`, the TLS-terminating front end standing
//!   in for Cloud Run), [`mod@bench`] (the benchmark: `args`, `procs`, `relay` (the
//!   delay relay, which can also cut its connections), `floor` (two plain
//!   TCP relays, the floor under the CPU and idle rows), `traffic`,
//!   `scenarios/` with `beside` and `resume`, `report`).
//! - [`logging`]: human or Cloud Logging JSON lines, trace headers.
//! - `signal`: SIGTERM/SIGINT (shutdown) and SIGHUP (reload). `testing`:
//!   hooks for Postern's own tests and fuzz targets, compiled only with the
//!   `testing` feature (their dev-dependency on Postern turns it on).
//!
//! `transport`, `session`, `destination`, `duration` and `signal` are the
//! crate's own; the public surface is the commands and what embeds them
//! (`server`, `client`, `tls`, `pki`, `authz`, `cmd`, the tools).

#![forbid(unsafe_code)]
// `unreachable_pub` checks the surface with the test hooks in (the build
// `cargo clippy --all-targets` checks): an item the tests reach through
// `testing` is `pub`, everything else the crate's own.
#![cfg_attr(not(feature = "testing"), allow(unreachable_pub))]

pub mod authz;
pub mod bench;
pub mod client;
pub mod cmd;
pub mod demo;
pub(crate) mod destination;
pub mod doctor;
pub(crate) mod duration;
pub mod logging;
pub mod pki;
pub mod server;
pub(crate) mod session;
pub(crate) mod signal;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub(crate) mod transport;

pub use transport::accept::raise_fd_limit;
