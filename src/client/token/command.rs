//! Running a token command such as `gcloud auth print-identity-token`.

use std::process::Stdio;
use std::sync::Arc;

use super::error::malformed;
use super::{TokenError, MAX_DETAIL};

/// Runs the token command with the audience in its environment and returns
/// its stdout. The child is killed if the fetch times out (the future is
/// dropped with `kill_on_drop`).
pub(super) async fn run_command(cmd: &str, audience: &str) -> Result<String, TokenError> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("POSTERN_AUDIENCE", audience)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TokenError::Spawn(Arc::new(e)))?;
    if !output.status.success() {
        // Only stderr is quoted: stdout is where a token would be.
        let stderr = first_line(&output.stderr);
        return Err(TokenError::Command {
            status: output.status.to_string(),
            stderr: if stderr.is_empty() {
                "(nothing on stderr)".to_owned()
            } else {
                stderr
            },
        });
    }
    String::from_utf8(output.stdout)
        .map_err(|_| malformed("token command", "its output is not UTF-8"))
}

/// The first non-empty line of `bytes`, lossily decoded and shortened.
pub(super) fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(MAX_DETAIL).collect();
    if line.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    out
}
