//! What every third-party front end run as a child process needs: a check
//! that it is installed (tests skip, loudly, when it is not), and a start
//! that keeps its output in a log file and waits until it listens.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::LIMIT;

/// True when `bin version_arg` runs; otherwise prints a loud skip notice
/// for `test`, naming the Debian package that brings `bin`.
pub(crate) fn installed(bin: &str, version_arg: &str, package: &str, test: &str) -> bool {
    let ok = std::process::Command::new(bin)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "SKIPPED: {bin} not installed; {test} did not run (CI installs it via .ci/run; \
             locally: apt-get install {package})"
        );
    }
    ok
}

/// Spawns `cmd` (a front end called `name`) with its stdout and stderr in
/// the file `log`, killed when the returned child is dropped, and polls until
/// it accepts connections on `port`; fails the test with its log if it exits
/// first or takes too long.
pub(crate) async fn start(name: &str, cmd: &mut Command, log: &Path, port: u16) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{name} log: {e}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited early ({status}):\n{}", text());
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return child;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not start listening on {port}:\n{}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
