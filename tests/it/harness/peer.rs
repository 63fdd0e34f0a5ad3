//! What every third-party front end run as a child process needs: a check
//! that it is installed (tests skip, loudly, when it is not) and a wait until
//! it listens.

use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::Child;

use super::LIMIT;

/// True when `bin version_arg` runs; otherwise prints a loud skip notice
/// for `test`, naming the Debian package that brings `bin`.
pub fn installed(bin: &str, version_arg: &str, package: &str, test: &str) -> bool {
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

/// Polls until `child` (called `name`) accepts connections on `port`;
/// fails the test with its log if it exits first or takes too long.
pub async fn wait_listening(child: &mut Child, name: &str, port: u16, log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited early ({status}):\n{}", log());
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not start listening on {port}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
