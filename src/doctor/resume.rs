//! The doctor's resume step: does the server offer sessions, and does a
//! resume make it through the front end to the instance that holds the
//! session? It opens a tunnel that asks for a session, runs the inner
//! handshake over it (which keys the resume), then moves the session to a
//! second request, as the client does before `--max-request-age`, and checks
//! that an echo still crosses it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::requests::open_tunnel;
use super::{ms, Report};
use crate::client::resume::{offered, Cookies};
use crate::client::Forward;
use crate::session::{handshake, ResumeKey, ResumeResponse};
use crate::transport::stream::H2Stream;

const STEP: &str = "resume";

pub(super) async fn resume(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    forward: &Forward,
    r: &mut Report,
) -> anyhow::Result<()> {
    let mut asking = headers.clone();
    asking.insert(
        handshake::SESSION,
        HeaderValue::from_static(handshake::VERSION),
    );
    let opened = async {
        let (send_stream, response) = open_tunnel(send, uri, &asking).await?;
        anyhow::Ok((send_stream, response.await?))
    };
    let (send_stream, response) = match opened.await {
        Ok(x) => x,
        Err(e) => return Err(r.fail(STEP, e, "the tunnel request failed; see the steps above")),
    };
    if response.status() != StatusCode::OK {
        return Err(r.fail(
            STEP,
            format!(
                "a tunnel asking for a session was answered {}",
                response.status()
            ),
            "check the server's log",
        ));
    }
    let head = response.headers().clone();
    let cookies = Cookies::default();
    cookies.update(&head);
    let stream = H2Stream::server(send_stream, response.into_body());
    let config = crate::session::Config::default();
    let Ok(mut session) = offered(&head, stream, &config) else {
        r.skip(
            STEP,
            "the server does not offer resume (started with --no-resume, or older than resume): tunnels end when their request does",
        );
        return Ok(());
    };
    let handle = session.handle();
    let driver = handle.clone();
    tokio::spawn(async move { driver.drive().await });
    let result = match &forward.inner {
        Some((tls_config, name)) => {
            let mut tls = match TlsConnector::from(tls_config.clone())
                .connect(name.clone(), &mut session)
                .await
            {
                Ok(tls) => tls,
                Err(e) => {
                    return Err(r.fail(
                        STEP,
                        e,
                        "the inner handshake failed over a session; see the mTLS step",
                    ))
                }
            };
            let id = handle.id().expect("offered sessions have an id");
            match ResumeKey::exported(tls.get_ref().1, &id) {
                Ok(key) => handle.set_key(key),
                Err(e) => {
                    return Err(r.fail(STEP, e, "the inner TLS could not export a resume key"))
                }
            }
            let moved = move_session(send, uri, headers, &handle, &cookies).await;
            match moved {
                Ok(took) => ping(&mut tls).await.map(|answered| (took, answered)),
                Err(e) => Err(e),
            }
        }
        None => {
            let moved = move_session(send, uri, headers, &handle, &cookies).await;
            match moved {
                Ok(took) => ping(&mut session).await.map(|answered| (took, answered)),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok((took, answered)) => {
            let after = if answered {
                "the backend answered across it"
            } else {
                "a byte was sent across it (the backend sent nothing back within 2 s)"
            };
            r.ok(
                STEP,
                format!(
                    "offered; the session moved to a second request in {}; {after}",
                    ms(took)
                ),
            );
            Ok(())
        }
        Err(Refused(status)) if status == StatusCode::NOT_FOUND => Err(r.fail(
            STEP,
            "the resume reached an instance that does not know the session (404)",
            "deploy with --session-affinity so that a tunnel's requests reach one instance",
        )),
        Err(Refused(status)) => Err(r.fail(
            STEP,
            format!("the resume was refused with {status}"),
            "check the server's log for 'resume refused' and its reason",
        )),
        Err(Failed(e)) => Err(r.fail(
            STEP,
            e,
            "the resume request failed; check the front end and the server's log",
        )),
    }
}

/// What could stop the move.
enum Failure {
    Refused(StatusCode),
    Failed(anyhow::Error),
}
use Failure::{Failed, Refused};

/// Resumes the session on a new request while the first is still up. A
/// `404` is asked again twice, as the client does: the server keys the
/// session when it has read our last handshake message, which may come
/// after this request on another stream.
async fn move_session(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    handle: &crate::session::SessionHandle,
    cookies: &Cookies,
) -> Result<Duration, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        match move_once(send, uri, headers, handle, cookies).await {
            Err(Refused(StatusCode::NOT_FOUND)) if tries < 3 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn move_once(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    handle: &crate::session::SessionHandle,
    cookies: &Cookies,
) -> Result<Duration, Failure> {
    let started = Instant::now();
    let request = handle
        .resume_request()
        .ok_or_else(|| Failed(anyhow::anyhow!("the session ended before it could move")))?;
    let mut resuming = headers.clone();
    cookies.apply(&mut resuming);
    request.to_headers(&mut resuming);
    let (send_stream, response) = open_tunnel(send, uri, &resuming)
        .await
        .map_err(|e| Failed(e.into()))?;
    let response = response.await.map_err(|e| Failed(e.into()))?;
    if response.status() != StatusCode::OK {
        return Err(Refused(response.status()));
    }
    let answer = ResumeResponse::from_headers(response.headers())
        .map_err(|e| Failed(anyhow::anyhow!("the server's resume answer: {e}")))?;
    let stream = H2Stream::server(send_stream, response.into_body());
    handle
        .complete_resume(stream, &request, &answer)
        .map_err(|e| Failed(anyhow::anyhow!("the server's resume answer: {e}")))?;
    Ok(started.elapsed())
}

/// A byte to the backend over the moved session, and whether anything
/// came back within 2 s (an echo or a banner does; other backends may wait
/// for more). An error means the moved session does not carry data.
async fn ping<S>(io: &mut S) -> Result<bool, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(b"\n").await.map_err(|e| Failed(e.into()))?;
    io.flush().await.map_err(|e| Failed(e.into()))?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), io.read(&mut byte)).await {
        Ok(Ok(n)) => Ok(n > 0),
        Err(_) => Ok(false),
        Ok(Err(e)) => Err(Failed(anyhow::anyhow!("after the move: {e}"))),
    }
}
