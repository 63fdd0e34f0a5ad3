//! The client's half of resume: what it asks for, the cookies it keeps, and
//! the [`Keeper`] that runs beside a tunnel's copy, noticing cuts and moving
//! the session to a new stream (a new connection when needed).
//!
//! A cut is retried with backoff for the grace period; a server that does
//! not know the session (`404`: it restarted, or the resume reached an
//! instance that never had it) is asked a few times, since behind a load
//! balancer the next try may reach the right instance; any other refusal
//! ends the session at once. A move that is refused leaves the session
//! where it was, but one answered with a `200` that does not verify ends
//! it: the server may already have left the old stream. Whenever a session
//! ends this way the local connection is closed with a log line saying why.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::forward::{Forward, ResumePolicy};
use crate::session::{handshake, Phase, ResumeResponse, Session, SessionHandle};
use crate::transport::stream::{H2Stream, Refused};

/// How many `404`s a resume takes before it gives up.
const UNKNOWN_TRIES: u32 = 3;
/// The first and the longest wait between resume attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The cookies a front end set (Cloud Run's session affinity, for one),
/// sent back on every request of the tunnel.
#[derive(Default)]
pub(crate) struct Cookies(Mutex<Vec<(String, String)>>);

impl Cookies {
    /// Takes the `Set-Cookie` headers of a response (name and value only:
    /// attributes such as Path or Max-Age do not matter for one tunnel).
    pub(crate) fn update(&self, headers: &HeaderMap) {
        let mut jar = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for value in headers.get_all(http::header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
            jar.retain(|(n, _)| *n != name);
            jar.push((name, value));
        }
    }

    /// Adds a `Cookie` header with every cookie kept, if any.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let jar = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if jar.is_empty() {
            return;
        }
        let line = jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        if let Ok(value) = HeaderValue::try_from(line) {
            headers.insert(http::header::COOKIE, value);
        }
    }
}

/// What one resume attempt came to.
enum Attempt {
    Resumed,
    /// The session ended meanwhile.
    Over,
    /// `404`: not known where the request landed.
    Unknown,
    /// Refused for good: the session stays where it was, if anywhere.
    Fatal(String),
    /// A `200` whose answer does not verify. The server may have moved
    /// the session to the stream that answered, and stopped writing on
    /// the old one: the session cannot go on anywhere.
    Rejected(String),
    /// The stream or connection failed, or the front end answered an error.
    Retry(String),
}

/// Keeps one session attached for as long as it lives.
pub(crate) struct Keeper<'a> {
    pub(crate) forward: &'a Forward,
    pub(crate) handle: SessionHandle,
    pub(crate) cookies: Cookies,
    pub(crate) policy: ResumePolicy,
}

impl Keeper<'_> {
    /// Runs until the session ends: drives it (so a cut is noticed even
    /// while the application is quiet), resumes after cuts, and moves it
    /// before `max_request_age`.
    pub(crate) async fn run(&self) {
        let keep = async {
            let mut watch = self.handle.watch();
            let mut since = Instant::now();
            loop {
                // Copied out: a borrow held on would block the phase's writer.
                let phase = *watch.borrow_and_update();
                match phase {
                    Phase::Ended => return,
                    Phase::Detached => {
                        self.resume().await;
                        since = Instant::now();
                        continue;
                    }
                    Phase::Attached { .. } => {}
                }
                let age = async {
                    match self.policy.max_request_age {
                        Some(age) => tokio::time::sleep_until(since + age).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = watch.changed() => if changed.is_err() { return },
                    () = age => {
                        // Make-before-break: the old stream ends only once
                        // the new one carries the session.
                        match self.attempt().await {
                            Attempt::Resumed => debug!("session moved to a fresh stream"),
                            Attempt::Over => return,
                            Attempt::Rejected(why) => {
                                return self.end("session moved and not resumed", why)
                            }
                            _ => debug!("moving the session failed; it stays where it is"),
                        }
                        since = Instant::now();
                    }
                }
            }
        };
        tokio::join!(self.handle.drive(), keep);
    }

    /// Retries until the session is attached again, or gives it up.
    async fn resume(&self) {
        let started = Instant::now();
        let mut unknown = 0;
        let mut backoff = BACKOFF.0;
        loop {
            let why = match self.attempt().await {
                Attempt::Resumed => {
                    info!(resumes = self.handle.stats().resumes, "tunnel resumed");
                    return;
                }
                Attempt::Over => return,
                Attempt::Unknown => {
                    unknown += 1;
                    if unknown >= UNKNOWN_TRIES {
                        return self.give_up(
                            "the server does not know this session (it restarted, or the \
                             resume reached another instance)"
                                .into(),
                        );
                    }
                    "unknown session".to_owned()
                }
                Attempt::Fatal(why) | Attempt::Rejected(why) => return self.give_up(why),
                Attempt::Retry(why) => why,
            };
            if started.elapsed() + backoff >= self.policy.session.grace {
                return self.give_up(format!(
                    "not resumed within {:?} (last try: {why})",
                    self.policy.session.grace
                ));
            }
            debug!(reason = %why, retry_in = ?backoff, "resume failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    fn give_up(&self, why: String) {
        self.end("tunnel cut and not resumed", why)
    }

    /// Ends the session and with it the local connection, saying why.
    fn end(&self, what: &str, why: String) {
        warn!(reason = %why, "{what}: closing the local connection");
        self.handle.abandon(format!("{what}: {why}"));
    }

    /// One resume request on a new stream.
    async fn attempt(&self) -> Attempt {
        let Some(request) = self.handle.resume_request() else {
            return Attempt::Over;
        };
        let mut headers = match self.forward.request_headers().await {
            Ok(h) => h,
            Err(e) => return Attempt::Retry(format!("{e:#}")),
        };
        self.cookies.apply(&mut headers);
        request.to_headers(&mut headers);
        let mut stream = match self.forward.connector.open(&headers).await {
            Ok(s) => s,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        let head = match stream.response().await {
            Ok(head) => head,
            Err(e) => {
                let status = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<Refused>())
                    .map(|r| r.status.as_u16());
                return match status {
                    Some(404) => Attempt::Unknown,
                    Some(s @ (400 | 403 | 409 | 416)) => {
                        Attempt::Fatal(format!("resume refused with HTTP {s} ({})", label(s)))
                    }
                    _ => Attempt::Retry(e.to_string()),
                };
            }
        };
        self.cookies.update(&head);
        let answer = match ResumeResponse::from_headers(&head) {
            Ok(a) => a,
            Err(e) => return Attempt::Rejected(format!("the server's resume answer: {e}")),
        };
        // A stream still up (a move) is ended by the session: our
        // END_STREAM, then the server's last frames and its END_STREAM.
        match self.handle.complete_resume(stream, &request, &answer) {
            Ok(_) => Attempt::Resumed,
            Err(refusal) => Attempt::Rejected(format!("the server's resume answer: {refusal}")),
        }
    }
}

fn label(status: u16) -> &'static str {
    match status {
        400 => "malformed",
        403 => "wrong_proof",
        409 => "already_attached",
        _ => "offset_outside_window",
    }
}

/// The session id a `200` offers, if any.
pub(crate) fn session_id(head: &HeaderMap) -> Option<crate::session::SessionId> {
    head.get(handshake::SESSION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// What the server's `200` offered: a session (id, and key on a plain
/// tunnel), or nothing (today's byte stream).
pub(crate) fn offered(
    head: &HeaderMap,
    stream: H2Stream,
    config: &crate::session::Config,
) -> Result<Session, H2Stream> {
    let Some(id) = session_id(head) else {
        return Err(stream);
    };
    let session = Session::new(config.clone(), stream, Some(id));
    if let Some(key) = head
        .get(handshake::SESSION_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::session::ResumeKey::from_header(v).ok())
    {
        session.handle().set_key(key);
    }
    Ok(session)
}
