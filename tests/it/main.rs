//! The end-to-end tests: one binary, one module per area, over one shared
//! harness (`harness/`). Every test runs the real path on loopback ports:
//! in-process pieces started from their real flags, or the built `postern`
//! binary as a child process, with Caddy/curl/openssl as peers where named.

// Test harness code: blocking file I/O and sleeps are fine outside the
// runtimes under test.
#![allow(clippy::disallowed_methods)]

mod harness;

mod attacks;
mod bench;
mod budget;
mod caddy;
mod cli;
mod destinations;
mod doctor;
mod faults;
mod fuzz_corpus;
mod haproxy;
mod hardening;
mod http;
mod identity;
mod integrity;
mod lifecycle;
mod limits;
mod operations;
mod owned;
mod pem;
mod preauth;
mod proxy;
mod reload;
mod resume;
mod resumed;
mod routes;
mod scheduling;
mod stdio;
mod tokens;
mod tunnel;
mod websocket;
