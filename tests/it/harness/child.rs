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
pub(crate) struct Proc {
    pub child: Child,
    sub: String,
    /// The address it logged as listening on.
    pub addr: SocketAddr,
    /// The last log lines (JSON), for failure messages.
    pub log: Arc<Mutex<VecDeque<String>>>,
    /// The thread draining stderr; it ends when the process does.
    reader: Option<std::thread::JoinHandle<()>>,
}

const KEEP_LINES: usize = 2000;

/// How to start a `postern` subcommand: the one way the tests start the
/// binary. Its environment is cleared of what would change its logging
/// (Cloud Run's variables, `POSTERN_LOG_FORMAT`) unless set here.
pub(crate) struct Launch {
    sub: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    json: bool,
}

impl Launch {
    /// `postern --log-format json <sub> <args…>`.
    pub(crate) fn new(sub: &str, args: &[&str]) -> Launch {
        Launch {
            sub: sub.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            json: true,
        }
    }

    /// Sets an environment variable of the child.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Leaves the log format to the binary (its default, or the flags and
    /// environment given).
    pub(crate) fn own_log_format(mut self) -> Launch {
        self.json = false;
        self
    }

    /// Starts it and waits for the (JSON) log line carrying `addr_field`,
    /// the listening address.
    pub(crate) fn start(self, addr_field: &str) -> Proc {
        let (mut proc, rx) = self.spawn(Some(addr_field.to_owned()));
        match rx.recv_timeout(LIMIT) {
            Ok(a) => proc.addr = a,
            Err(_) => panic!(
                "postern {} did not report its address; log:\n{}",
                proc.sub,
                proc.log_text()
            ),
        }
        proc
    }

    /// Starts it and waits until it accepts connections on `port` of
    /// 127.0.0.1 (for logs that are not JSON, or give no address).
    pub(crate) async fn start_on(self, port: u16) -> Proc {
        let (mut proc, _) = self.spawn(None);
        proc.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let addr = proc.addr;
        let up = super::poll(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() });
        assert!(
            up.await,
            "postern {} never listened on {port}:\n{}",
            proc.sub,
            proc.log_text()
        );
        proc
    }

    fn spawn(self, addr_field: Option<String>) -> (Proc, mpsc::Receiver<SocketAddr>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
        if self.json {
            cmd.args(["--log-format", "json"]);
        }
        cmd.arg(&self.sub)
            .args(&self.args)
            .env_remove("K_SERVICE")
            .env_remove("GOOGLE_CLOUD_PROJECT")
            .env_remove("POSTERN_LOG_FORMAT")
            // The machine's proxies are not the test's (tests set their own).
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("POSTERN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn postern");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        // Keep draining stderr for the child's whole life: a full pipe would
        // block its logging and so the server itself.
        let reader = std::thread::spawn(move || {
            let mut tx = addr_field.map(|field| (tx, field));
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((sender, field)) = &tx {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(a) = v.get(field).and_then(|a| a.as_str()) {
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
        let proc = Proc {
            child,
            sub: self.sub,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            reader: Some(reader),
        };
        (proc, rx)
    }
}

impl Proc {
    /// Starts `postern <sub> <args…>` with JSON logs and waits for the line
    /// carrying `addr_field` (the listening address).
    pub(crate) fn start(sub: &str, args: &[&str], addr_field: &str) -> Proc {
        Launch::new(sub, args).start(addr_field)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited (it is reaped if so).
    pub(crate) fn exited(&mut self) -> bool {
        self.child.try_wait().expect("wait postern").is_some()
    }

    /// SIGTERM: the graceful stop.
    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself and returns its status and
    /// whole kept log; the limit only turns a hang into a failure.
    pub(crate) async fn exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
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
    pub(crate) fn log_text(&self) -> String {
        let lines: Vec<String> = self.log.lock().unwrap().iter().cloned().collect();
        lines.join("\n")
    }

    /// Every kept log line, each parsed as JSON (panics on one that is not).
    pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
        json_lines(&self.log_text())
    }

    /// `VmRSS` in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:")
    }

    /// `VmHWM` (peak RSS) in KiB.
    pub(crate) fn peak_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// Number of open file descriptors.
    pub(crate) fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Log lines containing `needle`, once there is one (or after
    /// [`LIMIT`], empty): a line may be logged just after the effect a test
    /// saw, and the log is read on another thread.
    pub(crate) async fn wait_log_lines(&self, needle: &str) -> Vec<String> {
        super::poll(|| async { !self.log_lines(needle).is_empty() }).await;
        self.log_lines(needle)
    }

    /// Log lines containing `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> Vec<String> {
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

/// Each line of `log`, parsed as JSON (panics on one that is not).
pub(crate) fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
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
pub(crate) fn server(pki: &Pki, backend: SocketAddr, extra: &[&str]) -> Proc {
    server_on(pki, backend, "127.0.0.1:0", extra)
}

/// Like [`server`], on a given listen address (to restart on the same port).
pub(crate) fn server_on(pki: &Pki, backend: SocketAddr, listen: &str, extra: &[&str]) -> Proc {
    let backend = backend.to_string();
    let flags = server_flags(pki);
    let mut args = vec!["--listen", listen, "--backend", &backend];
    args.extend(strs(&flags));
    args.extend_from_slice(extra);
    Proc::start("server", &args, "addr")
}

/// Client flags for the test PKI (h2c straight to a server).
pub(crate) fn client_flags(pki: &Pki) -> Vec<String> {
    super::client_flags(pki, &[])
}
