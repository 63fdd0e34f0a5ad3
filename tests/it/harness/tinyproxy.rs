//! tinyproxy (Debian's package) as a corporate forward proxy: HTTP CONNECT
//! on an ephemeral loopback port, optionally with Basic authentication.
//! Killed on drop; tests call [`installed`] first and skip loudly without it.

use tokio::process::{Child, Command};

use super::caddy::free_port;
use super::{peer, TempDir};

/// True when `tinyproxy` runs; otherwise prints a loud skip notice for `test`.
pub(crate) fn installed(test: &str) -> bool {
    peer::installed("tinyproxy", "-v", "tinyproxy", test)
}

/// A running tinyproxy; killed on drop.
pub(crate) struct Tinyproxy {
    _child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    dir: TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy; with `auth` (user, password), it answers `407`
    /// to a CONNECT without them.
    pub(crate) async fn start(auth: Option<(&str, &str)>) -> Tinyproxy {
        let dir = TempDir::new("tinyproxy");
        let port = free_port().await;
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogLevel Connect\nMaxClients 100\n\
             Allow 127.0.0.1\nUser nobody\nGroup nogroup\nDisableViaHeader Yes\n"
        );
        if let Some((user, pass)) = auth {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let config = dir.write("tinyproxy.conf", &conf);
        let mut cmd = Command::new("tinyproxy");
        cmd.args(["-d", "-c", &config]);
        let child = peer::start("tinyproxy", &mut cmd, &dir.path("tinyproxy.log"), port).await;
        Tinyproxy {
            _child: child,
            port,
            dir,
        }
    }

    /// Its URL, with `user_info` (`USER:PASSWORD@`) if given.
    pub(crate) fn url(&self, user_info: &str) -> String {
        format!("http://{user_info}127.0.0.1:{}", self.port)
    }

    /// Its log (the CONNECTs it served), for assertions and failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("tinyproxy.log")).unwrap_or_default()
    }
}
