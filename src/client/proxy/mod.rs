//! Forward proxy egress: whether the front end is reached through a proxy
//! (`--proxy`, else `HTTPS_PROXY`/`https_proxy`, `ALL_PROXY`,
//! `HTTP_PROXY` for `http://` URLs, with `NO_PROXY`), and the tunnel through
//! it (`connect`: HTTP CONNECT). Which proxy applies and the `NO_PROXY` rules
//! (host names, `.domain` suffixes, CIDR ranges, `*`) are hyper-util's
//! matcher, read as curl reads them.

mod connect;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderValue;
use hyper_util::client::proxy::matcher::Matcher;
use tokio::net::TcpStream;
use tracing::debug;

use super::target::Target;

/// How the client reaches the front end's address.
#[derive(Default)]
pub struct Egress {
    /// `None`: straight to the front end.
    matcher: Option<Matcher>,
    /// `Proxy-Authorization` from `--proxy-credentials` (beats the URL's).
    credentials: Option<HeaderValue>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Egress")
            .field("proxied", &self.matcher.is_some())
            .finish()
    }
}

/// The proxy a target is reached through, and why.
#[derive(Debug, Clone)]
pub struct Hop {
    /// `host:port` of the proxy (no credentials: safe to print).
    pub proxy: String,
    /// `Proxy-Authorization` to send, if any.
    auth: Option<HeaderValue>,
}

impl Egress {
    /// From `--proxy` (a URL, or `none` to ignore the environment) and the
    /// environment; `credentials` as `USER:PASSWORD`.
    pub fn new(proxy: Option<&str>, credentials: Option<&str>) -> anyhow::Result<Egress> {
        let no = std::env::var("NO_PROXY")
            .or_else(|_| std::env::var("no_proxy"))
            .unwrap_or_default();
        let matcher = match proxy {
            Some("none") => None,
            Some(url) => {
                check_url(url).with_context(|| "--proxy")?;
                Some(Matcher::builder().all(url).no(no).build())
            }
            None => {
                for var in [
                    "HTTPS_PROXY",
                    "https_proxy",
                    "ALL_PROXY",
                    "all_proxy",
                    "HTTP_PROXY",
                    "http_proxy",
                ] {
                    if let Ok(url) = std::env::var(var) {
                        if !url.is_empty() {
                            check_url(&url).with_context(|| format!("${var}"))?;
                        }
                    }
                }
                Some(Matcher::from_env())
            }
        };
        let credentials = credentials
            .map(|c| {
                let (user, pass) = c.split_once(':').context(
                    "--proxy-credentials: expected USER:PASSWORD (a colon between them)",
                )?;
                basic(user, pass).context("--proxy-credentials: not a valid header value")
            })
            .transpose()?;
        Ok(Egress {
            matcher,
            credentials,
        })
    }

    /// The proxy `target` is reached through, if any.
    pub fn hop(&self, target: &Target) -> Option<Hop> {
        let uri: http::Uri = format!(
            "{}://{}:{}/",
            if target.tls { "https" } else { "http" },
            bracketed(&target.host),
            target.port
        )
        .parse()
        .ok()?;
        let intercept = self.matcher.as_ref()?.intercept(&uri)?;
        let proxy = intercept.uri();
        let port = proxy.port_u16().unwrap_or(match proxy.scheme_str() {
            Some("https") => 443,
            _ => 1080,
        });
        let host = proxy.host()?.trim_start_matches('[').trim_end_matches(']');
        Some(Hop {
            proxy: format!("{}:{port}", bracketed(host)),
            auth: self
                .credentials
                .clone()
                .or_else(|| intercept.basic_auth().cloned()),
        })
    }

    /// A TCP connection carrying bytes to `target`: straight to one of
    /// `addrs`, or through the proxy (CONNECT answered `200`).
    pub async fn connect(
        &self,
        target: &Target,
        addrs: &[SocketAddr],
        limit: Duration,
    ) -> std::io::Result<TcpStream> {
        match self.hop(target) {
            None => TcpStream::connect(addrs).await,
            Some(hop) => {
                debug!(proxy = %hop.proxy, "through the proxy");
                let authority = format!("{}:{}", bracketed(&target.host), target.port);
                connect::tunnel(&hop, &authority, limit)
                    .await
                    .map(|(sock, _)| sock)
            }
        }
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn basic(user: &str, pass: &str) -> anyhow::Result<HeaderValue> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut value = HeaderValue::try_from(format!("Basic {token}"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Proxies Postern dials: `http://` with CONNECT.
fn check_url(url: &str) -> anyhow::Result<()> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| anyhow::anyhow!("not a URL (expected http://[USER:PASSWORD@]HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("http") => Ok(()),
        Some(other) => anyhow::bail!(
            "{other}:// proxies are not supported (yet); use an http:// proxy with CONNECT"
        ),
        None => anyhow::bail!("no scheme (expected http://HOST:PORT)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn no_proxy_rules_bypass_the_proxy_as_curl_reads_them() {
        // Built without the environment, so the test sees only its own rules.
        let egress = |no: &str| Egress {
            matcher: Some(
                Matcher::builder()
                    .all("http://u:p@proxy.example:3128")
                    .no(no)
                    .build(),
            ),
            credentials: None,
        };
        let hop = egress("").hop(&target("https://svc.run.app/")).unwrap();
        assert_eq!(hop.proxy, "proxy.example:3128");
        assert!(hop.auth.is_some(), "user info becomes Basic auth");
        for (no, url) in [
            ("svc.run.app", "https://svc.run.app/"),
            (".run.app", "https://svc.run.app/"),
            ("10.0.0.0/8", "https://10.1.2.3/"),
            ("*", "https://anything.example/"),
        ] {
            assert!(egress(no).hop(&target(url)).is_none(), "{no} covers {url}");
        }
        assert!(egress("other.app")
            .hop(&target("https://svc.run.app/"))
            .is_some());
        assert!(Egress::new(Some("none"), None)
            .unwrap()
            .hop(&target("https://a.b/"))
            .is_none());
    }

    #[test]
    fn bad_proxy_settings_say_what_is_wrong() {
        let e = Egress::new(Some("ftp://p:1"), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("--proxy: ftp:// proxies"),
            "{e:#}"
        );
        let e = Egress::new(Some("http://p:1"), Some("nocolon")).unwrap_err();
        assert!(format!("{e:#}").contains("USER:PASSWORD"), "{e:#}");
    }
}
