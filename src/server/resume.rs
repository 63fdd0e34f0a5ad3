//! Resume requests: a cut tunnel's client naming its session on a new
//! stream. The session is looked up in the process's
//! [`Registry`](crate::session::Registry); if every check passes the stream
//! becomes the session's new carrier, and the tunnel's own task (backend
//! connection, inner TLS) carries on where it was. The new carrier counts
//! on its connection as an authenticated tunnel's request for as long as it
//! carries: a valid proof authenticates the session as well as the inner
//! handshake did, so the connection neither idles out under it nor keeps
//! the pre-authentication windows. A refusal changes
//! nothing in the session and is answered with its own status and a
//! `postern-resume-refused` header naming the reason. Refusals are logged
//! with the peer's address, at most one line per
//! [`REFUSAL_LOG_INTERVAL`] saying how many were not logged since the last:
//! anyone can send bogus resumes, and each costs only a lookup and an HMAC,
//! which a line per refusal would not (the metrics count every one).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};
use tracing::{debug, info, warn};

use crate::server::config::Config;
use crate::server::reply::{ok, VERSION};
use crate::server::windows::Counted;
use crate::session::handshake::RESUME_REFUSED;
use crate::session::ResumeRequest;
use crate::transport::stream::H2Stream;

/// Answers one resume request from `peer`; `conn` is this request on its
/// connection, handed to the carrier if the resume is accepted.
pub(crate) fn resume(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    config: &Config,
    conn: Counted,
    peer: SocketAddr,
) {
    let metrics = &config.metrics;
    let Some(registry) = &config.resume else {
        // Resume is off here, so no session of this process can match.
        metrics.resumed(false, "unknown_session");
        return refuse(&mut respond, StatusCode::NOT_FOUND, "unknown_session");
    };
    let request = match ResumeRequest::from_headers(req.headers()) {
        Ok(Some(request)) => request,
        Ok(None) => return refuse(&mut respond, StatusCode::BAD_REQUEST, "malformed"),
        Err(why) => {
            debug!(%why, "malformed resume request");
            metrics.resumed(false, "malformed");
            return refuse(&mut respond, StatusCode::BAD_REQUEST, "malformed");
        }
    };
    let mut body = Some(req.into_body());
    let answered = registry.resume_with(&request, |answer| {
        let mut response = ok();
        answer.to_headers(response.headers_mut());
        let send = respond.send_response(response, false).ok()?;
        // The proof is checked by now: the connection earns the windows of
        // an authenticated tunnel, and keeps the request open, while this
        // stream is the session's carrier (it drops with the stream).
        conn.establish();
        Some(H2Stream::server(send, body.take()?).with_guard(conn))
    });
    match answered {
        Ok((_, Some(moved))) => {
            // A carrier still up (a move) is read to its end by the session
            // and ended after the client's END_STREAM.
            metrics.resumed(true, "ok");
            info!(session = %request.id, generation = request.generation + 1, moved, "session resumed");
        }
        Ok((_, None)) => debug!(session = %request.id, "resume stream gone before its answer"),
        Err(refusal) => {
            metrics.resumed(false, refusal.label());
            match REFUSALS.admit(Instant::now()) {
                Some(suppressed) => warn!(
                    session = %request.id,
                    %peer,
                    reason = refusal.label(),
                    detail = %refusal,
                    suppressed,
                    "resume refused"
                ),
                None => {
                    debug!(session = %request.id, %peer, reason = refusal.label(), "resume refused")
                }
            }
            refuse(&mut respond, refusal.status(), refusal.label());
        }
    }
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode, label: &'static str) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header(RESUME_REFUSED, label)
        .header(VERSION, env!("CARGO_PKG_VERSION"))
        .body(())
        .unwrap_or_default();
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from(format!("resume refused: {label}\n")), true);
    }
}

/// At most one WARN line per this interval for refused resumes.
pub(crate) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

static REFUSALS: Throttle = Throttle::new(REFUSAL_LOG_INTERVAL);

/// One log line per interval; what falls in between is only counted.
struct Throttle {
    interval: Duration,
    /// When the last line was logged, and the events not logged since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when the event at `now` is to be logged (with the
    /// count of those not logged since the last line), else `None`.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0));
        for i in 1..=5 {
            assert_eq!(t.admit(start + Duration::from_secs(i)), None);
        }
        assert_eq!(t.admit(start + Duration::from_secs(10)), Some(5));
        assert_eq!(t.admit(start + Duration::from_secs(11)), None);
        assert_eq!(t.admit(start + Duration::from_secs(30)), Some(1));
    }
}
