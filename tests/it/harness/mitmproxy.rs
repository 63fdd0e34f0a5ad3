//! mitmproxy (`mitmdump`, from PyPI) as a TLS-intercepting forward proxy:
//! it answers CONNECT, terminates the client's TLS with a certificate it
//! re-signs with its own CA (generated in its own confdir), and opens its
//! own TLS to the front end, verified against the test PKI's CA. Found in
//! the Python environment .ci/run installs (`target/ci-venv`, or beside
//! `$POSTERN_TEST_PYTHON`); killed on drop; tests call [`find`] first and
//! skip loudly without it.

use std::path::PathBuf;

use tokio::process::{Child, Command};

use super::caddy::free_port;
use super::{peer, TempDir};

/// The `mitmdump` to run, if one is installed; a loud skip notice for
/// `test` otherwise.
pub(crate) fn find(test: &str) -> Option<PathBuf> {
    let beside_python = std::env::var("POSTERN_TEST_PYTHON")
        .ok()
        .and_then(|py| Some(PathBuf::from(py).parent()?.join("mitmdump")));
    let candidates = [
        beside_python,
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/ci-venv/bin/mitmdump"
        ))),
        Some(PathBuf::from("mitmdump")),
    ];
    let found = candidates.into_iter().flatten().find(|bin| {
        std::process::Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: mitmdump (Python package mitmproxy) not installed; {test} did not run \
             (CI installs it via .ci/run into target/ci-venv)"
        );
    }
    found
}

/// A running mitmdump; killed on drop.
pub(crate) struct Mitmproxy {
    _child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    dir: TempDir,
}

impl Mitmproxy {
    /// Starts `bin` in regular (forward proxy) mode, trusting `upstream_ca`
    /// for the front ends it connects to, streaming bodies instead of
    /// buffering them, and dumping every flow and message it relays.
    pub(crate) async fn start(bin: &PathBuf, upstream_ca: &str) -> Mitmproxy {
        let dir = TempDir::new("mitmproxy");
        let port = free_port().await;
        let confdir = dir.root().display().to_string();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &port.to_string(),
        ])
        .args(["--set", &format!("confdir={confdir}")])
        .args([
            "--set",
            &format!("ssl_verify_upstream_trusted_ca={upstream_ca}"),
        ])
        .args(["--set", "stream_large_bodies=1"])
        // Upstream after the client's hello, so its ALPN offer is the client's.
        .args(["--set", "connection_strategy=lazy"])
        .args(["--flow-detail", "3"]);
        let child = peer::start("mitmdump", &mut cmd, &dir.path("mitmdump.log"), port).await;
        Mitmproxy {
            _child: child,
            port,
            dir,
        }
    }

    /// Its URL as a `--proxy`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its CA certificate (PEM), the one it re-signs certificates with.
    pub(crate) fn ca(&self) -> String {
        self.dir.path("mitmproxy-ca-cert.pem").display().to_string()
    }

    /// What it printed (each flow in full detail), for assertions and
    /// failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("mitmdump.log")).unwrap_or_default()
    }
}
