//! The real `postern` binary as a child process, for tests that must kill it
//! or measure it in isolation: its memory (VmRSS/VmHWM) and open file
//! descriptors come from /proc/PID, untouched by the test's own allocations.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::{server_flags, strs, Pki, LIMIT};

/// A running `postern` subcommand; killed on drop.
pub struct Proc {
    pub child: Child,
    /// The address it logged as listening on.
    pub addr: SocketAddr,
    /// The last log lines (JSON), for failure messages.
    pub log: Arc<Mutex<VecDeque<String>>>,
    /// The thread draining stderr; it ends when the process does.
    reader: Option<std::thread::JoinHandle<()>>,
}

const KEEP_LINES: usize = 2000;

impl Proc {
    /// Starts `postern <sub> <args…>` with JSON logs and waits for the line
    /// carrying `addr_field` (the listening address).
    pub fn start(sub: &str, args: &[&str], addr_field: &str) -> Proc {
        Proc::start_with_env(sub, args, addr_field, &[])
    }

    /// [`Proc::start`] with extra environment variables (allocator tuning).
    pub fn start_with_env(
        sub: &str,
        args: &[&str],
        addr_field: &str,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .envs(env.iter().copied())
            .arg("--log-format")
            .arg("json")
            .arg(sub)
            .args(args)
            .env("POSTERN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postern");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        let field = addr_field.to_owned();
        // Keep draining stderr for the child's whole life: a full pipe would
        // block its logging and so the server itself.
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(sender) = &tx {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(a) = v.get(&field).and_then(|a| a.as_str()) {
                            let _ = sender.send(a.parse::<SocketAddr>().expect("logged address"));
                            tx = None;
                        }
                    }
                }
                let mut k = keep.lock().unwrap();
                if k.len() == KEEP_LINES {
                    k.pop_front();
                }
                k.push_back(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let lines: Vec<String> = log.lock().unwrap().iter().cloned().collect();
                panic!(
                    "postern {sub} did not report its address; log:\n{}",
                    lines.join("\n")
                );
            }
        };
        Proc {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the graceful stop.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself and returns its status and
    /// whole kept log; the limit only turns a hang into a failure.
    pub async fn exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = tokio::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait postern") {
                break status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("postern did not exit:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The pipe is closed now: let the reader keep the last lines.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log_text())
    }

    /// Every kept log line, as one text.
    pub fn log_text(&self) -> String {
        let lines: Vec<String> = self.log.lock().unwrap().iter().cloned().collect();
        lines.join("\n")
    }

    /// `VmRSS` in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:")
    }

    /// `VmHWM` (peak RSS) in KiB.
    pub fn peak_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// Number of open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Log lines containing `needle`, once there is one (or after
    /// [`LIMIT`], empty): a line may be logged just after the effect a test
    /// saw, and the log is read on another thread.
    pub async fn wait_log_lines(&self, needle: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let lines = self.log_lines(needle);
            if !lines.is_empty() || tokio::time::Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Starts `postern server` on an ephemeral loopback port with inner mTLS on.
pub fn server(pki: &Pki, backend: SocketAddr, extra: &[&str]) -> Proc {
    server_on(pki, backend, "127.0.0.1:0", extra)
}

/// Like [`server`], on a given listen address (to restart on the same port).
pub fn server_on(pki: &Pki, backend: SocketAddr, listen: &str, extra: &[&str]) -> Proc {
    let backend = backend.to_string();
    let flags = server_flags(pki);
    let mut args = vec!["--listen", listen, "--backend", &backend];
    args.extend(strs(&flags));
    args.extend_from_slice(extra);
    Proc::start("server", &args, "addr")
}

/// Client flags for the test PKI (h2c straight to a server).
pub fn client_flags(pki: &Pki) -> Vec<String> {
    super::client_flags(pki, &[])
}
