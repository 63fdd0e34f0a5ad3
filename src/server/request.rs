//! Request dispatch: the health check, 404/405/503 refusals, and handing an
//! admitted tunnel request to [`Tunnel`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Method, Request, StatusCode};
use tracing::{debug, warn};

use crate::server::config::Config;
use crate::server::reply::reply;
use crate::server::routes::Routes;
use crate::server::tunnel::Tunnel;
use crate::server::windows::Counted;

/// Dispatches one request: health check, tunnel, or refusal. Only the path
/// is looked at here; the route within it (by inner SNI) is chosen once the
/// ClientHello arrives.
pub(crate) async fn request(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    behind_front: bool,
    config: Arc<Config>,
    conn: Counted,
) {
    let method = req.method().clone();
    let mut path = req.uri().path().to_owned();
    if method == Method::GET && path == "/healthz" {
        return reply(&mut respond, StatusCode::OK, "ok\n");
    }
    let material = config.live.material();
    if method == Method::CONNECT && req.uri().authority().is_none() {
        // RFC 9113 §8.5: a CONNECT without :authority is malformed, and
        // §8.1.1 makes a malformed request a stream error PROTOCOL_ERROR.
        // h2 lets it through, so it is refused here.
        debug!("CONNECT without :authority: reset (malformed)");
        config.metrics.refused("malformed");
        respond.send_reset(Reason::PROTOCOL_ERROR);
        return;
    }
    if method == Method::CONNECT {
        path = connect_path(&material.routes).to_owned();
    }
    let refuse = |respond: &mut SendResponse<Bytes>, status, body, reason| {
        config.metrics.refused(reason);
        reply(respond, status, body);
    };
    if !material.routes.paths().any(|p| p == path) {
        debug!(%method, %path, "no tunnel at this path");
        return refuse(
            &mut respond,
            StatusCode::NOT_FOUND,
            "no tunnel at this path\n",
            "not_found",
        );
    }
    if method != Method::POST && method != Method::CONNECT {
        return refuse(
            &mut respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "tunnels use POST or CONNECT\n",
            "method_not_allowed",
        );
    }
    let source = if behind_front {
        forwarded_for(req.headers()).unwrap_or(peer)
    } else {
        peer
    };
    // A resume brings a new stream to a tunnel that already holds its slot.
    if req
        .headers()
        .contains_key(crate::session::handshake::RESUME)
    {
        return crate::server::resume::resume(req, respond, &config, conn, source);
    }
    // A connection's handshakes are capped (`windows::PREAUTH_HANDSHAKES`);
    // REFUSED_STREAM says nothing was done and the request may be retried.
    if !conn.admit(config.limits.handshake_timeout).await {
        debug!("too many inner handshakes on this connection: REFUSED_STREAM");
        config.metrics.refused("handshake_limit");
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    let Ok(permit) = config.tunnels.clone().try_acquire_owned() else {
        warn!("tunnel limit reached: refusing with 503");
        return refuse(
            &mut respond,
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel limit reached\n",
            "tunnel_limit",
        );
    };
    let tunnel = Tunnel {
        path,
        source,
        material,
        limits: config.limits,
        metrics: config.metrics.clone(),
        observer: config.observer.clone(),
        conn,
        sessions: config.resume.clone(),
        gate: config.live.gate(),
        _permit: permit,
    };
    // Boxed: a task is allocated at the size of its largest state, and
    // requests refused or waiting above should not each cost a tunnel's.
    Box::pin(tunnel.run(req, respond)).await;
}

/// CONNECT has no path: it uses the only path there is, or `/`.
fn connect_path(routes: &Routes) -> &str {
    let mut paths = routes.paths();
    match (paths.next(), paths.next()) {
        (Some(only), None) => only,
        _ => "/",
    }
}

/// The client address a front end appended to `x-forwarded-for` (its last
/// entry: earlier ones come from the client and prove nothing), port 0.
fn forwarded_for(headers: &http::HeaderMap) -> Option<SocketAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    let ip = entry
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_takes_the_last_entry_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(forwarded_for(&h), None);
        h.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("203.0.113.9:0".parse().unwrap()));
        h.insert("x-forwarded-for", "1.2.3.4, garbage".parse().unwrap());
        assert_eq!(forwarded_for(&h), None);
        h.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("[2001:db8::1]:0".parse().unwrap()));
    }
}
