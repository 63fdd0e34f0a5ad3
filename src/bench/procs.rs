//! The benchmark's child processes: `postern server` and `postern client`
//! run as separate processes of this same binary, as they are deployed, so
//! their CPU time and memory can be read from /proc.

// The benchmark's driver reads its children's /proc files between
// measurements; no tunnel runs on its runtime.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::pki::{self, CertDir, KeyAlg};

/// Throwaway certificates in a private temporary directory, removed on drop.
pub(super) struct Pki {
    certs: CertDir,
}

impl Pki {
    /// Issues a CA, a `localhost` server and a client certificate.
    pub(super) fn new() -> anyhow::Result<Pki> {
        let dir = std::env::temp_dir().join(format!("postern-bench-{}", std::process::id()));
        let bundle = pki::bundle(
            &["localhost".into()],
            &["spiffe://postern.bench/client".into()],
            KeyAlg::EcdsaP256,
        )?;
        let certs = CertDir::write(&dir, &bundle).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        Ok(Pki { certs })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.certs.dir());
    }
}

/// A running child process, killed when dropped (also on error paths).
pub(super) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// The address it listens on, read from its start-up log line.
    pub addr: SocketAddr,
}

impl Proc {
    /// Starts `postern server` with outer TLS (ALPN h2) and inner mTLS in
    /// front of `backend`.
    pub(super) async fn server(pki: &Pki, backend: SocketAddr) -> anyhow::Result<Proc> {
        Self::server_with("server", pki, backend, &[]).await
    }

    /// [`Proc::server`] with more flags; `name` names its log.
    pub(super) async fn server_with(
        name: &str,
        pki: &Pki,
        backend: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let mut args = vec![
            "server".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--backend".into(),
            backend.to_string(),
            "--drain-timeout".into(),
            "1".into(),
        ];
        args.extend(pki.certs.server_flags(true));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::start(name, pki, &args, "server listening", "addr").await
    }

    /// Starts `postern client` forwarding to `https://localhost:PORT/`;
    /// `extra` are more flags (e.g. `--max-streams-per-connection 1`).
    pub(super) async fn client(
        name: &str,
        pki: &Pki,
        port: u16,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let mut args = vec![
            "client".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--url".into(),
            format!("https://localhost:{port}/"),
        ];
        args.extend(pki.certs.client_flags());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::start(name, pki, &args, "client forwarding", "listen").await
    }

    /// Starts `postern client` with exactly `args` after the subcommand
    /// and the certificate flags; ready once it logs its first listener.
    pub(super) async fn client_args(
        name: &str,
        pki: &Pki,
        args: &[String],
    ) -> anyhow::Result<Proc> {
        let mut all = vec!["client".to_owned()];
        all.extend(args.iter().cloned());
        all.extend(pki.certs.client_flags());
        Self::start(name, pki, &all, "client forwarding", "listen").await
    }

    /// Starts `postern server --config FILE` (written into the certificate
    /// directory from `toml`).
    pub(super) async fn server_config(name: &str, pki: &Pki, toml: &str) -> anyhow::Result<Proc> {
        let path = pki.certs.dir().join(format!("{name}.toml"));
        std::fs::write(&path, toml).with_context(|| path.display().to_string())?;
        let mut args = vec![
            "server".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--config".into(),
            path.display().to_string(),
            "--drain-timeout".into(),
            "1".into(),
        ];
        args.extend(pki.certs.server_flags(true));
        Self::start(name, pki, &args, "server listening", "addr").await
    }

    async fn start(
        name: &str,
        pki: &Pki,
        args: &[String],
        ready_message: &str,
        addr_field: &str,
    ) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("locating the postern binary")?;
        let log = pki.certs.dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let child = Command::new(exe)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("POSTERN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting postern {name}"))?;
        let mut proc = Proc {
            name: name.to_owned(),
            child,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        proc.addr = proc.wait_ready(ready_message, addr_field).await?;
        Ok(proc)
    }

    /// Polls the child's JSON log for its "listening" line, then its port.
    async fn wait_ready(&mut self, message: &str, field: &str) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let needle = format!("\"message\":\"{message}\"");
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "postern {} exited ({status}): {}",
                    self.name,
                    self.log_tail()
                );
            }
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let found = text.lines().find(|l| l.contains(&needle)).and_then(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get(field)?.as_str()?.parse::<SocketAddr>().ok()
            });
            if let Some(addr) = found {
                // The log line follows bind(); a connect proves accept is live.
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Ok(addr);
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "postern {} not ready after 15 s: {}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of the child's log, for error messages.
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// The name it was started with.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds used so far.
    pub(super) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.cpu().map(Cpu::total)
    }

    /// User and system CPU time, in seconds.
    pub(super) fn cpu(&self) -> anyhow::Result<Cpu> {
        cpu_of(Path::new(&format!("/proc/{}/stat", self.pid())))
    }

    /// Resident set size in KiB.
    pub(super) fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second in /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// User and system CPU time, in seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Cpu {
    /// utime: the process's own code (TLS, HTTP/2, copies in user space).
    pub user: f64,
    /// stime: the kernel on its behalf (socket reads and writes, wake-ups).
    pub system: f64,
}

impl Cpu {
    /// User + system.
    pub(super) fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, other: Cpu) -> Cpu {
        Cpu {
            user: self.user - other.user,
            system: self.system - other.system,
        }
    }
}

/// utime and stime from a process's or a thread's `stat` file.
pub(super) fn cpu_of(path: &Path) -> anyhow::Result<Cpu> {
    let stat = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let path = path.display();
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("{path}: no field {}", i + 3))
    };
    // Fields 14 and 15 of the man page; the slice starts at field 3.
    Ok(Cpu {
        user: field(11)? / TICKS,
        system: field(12)? / TICKS,
    })
}

/// VmRSS of `pid` from /proc/PID/status, in KiB.
pub(super) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path}: no VmRSS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_after_a_command_name_with_spaces() {
        let dir = std::env::temp_dir().join(format!("postern-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stat = dir.join("stat");
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        std::fs::write(
            &stat,
            "42 (a (b) c) S 1 42 42 0 -1 4194560 10 0 0 0 250 75 0 0\n",
        )
        .unwrap();
        let cpu = cpu_of(&stat).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            cpu,
            Cpu {
                user: 2.5,
                system: 0.75
            }
        );
        assert_eq!(cpu.total(), 3.25);
    }
}
