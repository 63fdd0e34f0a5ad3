//! The parsed `--url`: where a client's tunnels go.

use http::Uri;

/// Where tunnels go: the parsed `--url`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The full URL the request is sent to (sets :scheme, :authority, :path).
    pub uri: Uri,
    /// Host name (for SNI, certificate checks and the default inner server name).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the outer hop is TLS (`https`) or h2c (`http`).
    pub tls: bool,
}

impl Target {
    /// `scheme://host[:port]`: the default ID token audience (Cloud Run
    /// checks the token against the service URL, which has no path).
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match self.uri.port_u16() {
            Some(port) => format!("{scheme}://{}:{port}", self.uri.host().unwrap_or_default()),
            None => format!("{scheme}://{}", self.uri.host().unwrap_or_default()),
        }
    }

    /// Parses `https://host[:port][/path]` or `http://…` (h2c).
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: scheme must be https:// or http:// (h2c)")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(format!("{url:?}: query strings are not supported"));
        }
        Ok(Target {
            uri,
            host,
            port,
            tls,
        })
    }
}
