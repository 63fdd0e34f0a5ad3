//! The short answers the server gives outside a tunnel's byte stream.

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Response, StatusCode};

/// The header every answer other than a tunnel's `200` carries (what
/// `postern doctor` looks for behind a front end).
pub(crate) const VERSION: &str = "x-postern-version";

/// Answers a non-tunnel request with a short text body.
pub(crate) fn reply(respond: &mut SendResponse<Bytes>, status: StatusCode, body: &'static str) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header(VERSION, env!("CARGO_PKG_VERSION"))
        .body(())
        .unwrap_or_default();
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from_static(body.as_bytes()), true);
    }
}

/// The `200` that opens a tunnel (no body of its own: the stream is the tunnel).
pub(crate) fn ok() -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    response
}
