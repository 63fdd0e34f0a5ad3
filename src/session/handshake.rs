//! The resume handshake: session ids, resume keys, the proofs that bind a
//! resume to the session's key, and the HTTP headers that carry them.
//!
//! The proof is HMAC-SHA256 (aws-lc-rs, the crypto provider rustls already
//! uses) keyed by a per-session secret:
//! - with the inner TLS, keying material exported from the inner session
//!   (RFC 8446 §7.5, RFC 5705 for TLS 1.2), which the front end never sees:
//!   a front end or anyone who has seen the headers cannot forge a resume;
//! - on a plain tunnel, 32 random bytes the server returns in the `200`'s
//!   headers: this keeps out anyone who has not seen that response (other
//!   clients of the service, anyone who learns a session id from logs), but
//!   not the front end, which sees the headers and, on a plain tunnel, every
//!   byte anyway.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue};

/// Request header asking for resume (value [`VERSION`]); response header
/// carrying the new session's id.
pub const SESSION: &str = "postern-session";
/// Response header on a plain tunnel's `200`: the resume key.
pub const SESSION_KEY: &str = "postern-session-key";
/// Request header naming the session to resume.
pub const RESUME: &str = "postern-resume";
/// Request header: how many carriers the session has had (the one to replace).
pub const RESUME_GENERATION: &str = "postern-resume-generation";
/// Request and response header: units the sender has received so far.
pub const RESUME_RECEIVED: &str = "postern-resume-received";
/// Request and response header: the sender's proof.
pub const RESUME_PROOF: &str = "postern-resume-proof";
/// Response header on a refused resume: the reason's label.
pub const RESUME_REFUSED: &str = "postern-resume-refused";

/// The value of [`SESSION`] in a request: this version of the framing.
pub const VERSION: &str = "1";

/// The exporter label for the inner TLS resume key (RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-postern-resume";

const REQUEST_LABEL: &[u8] = b"postern resume request";
const RESPONSE_LABEL: &[u8] = b"postern resume response";

/// A session's id: 16 random bytes, base64url without padding on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh random id.
    pub fn random() -> SessionId {
        let mut id = [0u8; 16];
        fill_random(&mut id);
        SessionId(id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_fixed(s).map(SessionId)
    }
}

/// The secret a session's resume proofs are keyed with. Never logged.
#[derive(Clone)]
pub struct ResumeKey([u8; 32]);

impl fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

impl ResumeKey {
    /// A random key, for plain tunnels (sent in [`SESSION_KEY`]).
    pub fn random() -> ResumeKey {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        ResumeKey(key)
    }

    /// The key exported from an established inner TLS connection, with the
    /// session id as context; both ends derive the same bytes.
    pub fn exported<D>(
        tls: &rustls::ConnectionCommon<D>,
        id: &SessionId,
    ) -> Result<ResumeKey, rustls::Error> {
        let key = tls.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(&id.0))?;
        Ok(ResumeKey(key))
    }

    /// The header value of a plain tunnel's key.
    pub fn to_header(&self) -> HeaderValue {
        // base64url is always a valid header value.
        HeaderValue::from_str(&B64.encode(self.0)).unwrap_or(HeaderValue::from_static(""))
    }

    /// Parses [`SESSION_KEY`].
    pub fn from_header(value: &str) -> Result<ResumeKey, String> {
        decode_fixed(value).map(ResumeKey)
    }

    fn tag(&self, label: &[u8], id: &SessionId, generation: u64, received: u64) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, &message(label, id, generation, received));
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn verify(
        &self,
        label: &[u8],
        id: &SessionId,
        generation: u64,
        received: u64,
        proof: &[u8; 32],
    ) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        // Constant time.
        hmac::verify(&key, &message(label, id, generation, received), proof).is_ok()
    }
}

/// `label || 0x00 || id (16) || generation (u64 BE) || received (u64 BE)`.
fn message(label: &[u8], id: &SessionId, generation: u64, received: u64) -> Vec<u8> {
    let mut msg = Vec::with_capacity(label.len() + 33);
    msg.extend_from_slice(label);
    msg.push(0);
    msg.extend_from_slice(&id.0);
    msg.extend_from_slice(&generation.to_be_bytes());
    msg.extend_from_slice(&received.to_be_bytes());
    msg
}

/// What a client sends to resume: the session, the carrier generation it
/// replaces, what it has received, and its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The session.
    pub id: SessionId,
    /// Carriers the session has had so far, as the client knows it.
    pub generation: u64,
    /// Units the client has received (bytes, plus one for a received FIN).
    pub received: u64,
    /// HMAC over the above.
    pub proof: [u8; 32],
}

impl ResumeRequest {
    /// A signed request.
    pub fn new(key: &ResumeKey, id: SessionId, generation: u64, received: u64) -> Self {
        let proof = key.tag(REQUEST_LABEL, &id, generation, received);
        ResumeRequest {
            id,
            generation,
            received,
            proof,
        }
    }

    /// Whether `key` signed this request.
    pub fn verify(&self, key: &ResumeKey) -> bool {
        key.verify(
            REQUEST_LABEL,
            &self.id,
            self.generation,
            self.received,
            &self.proof,
        )
    }

    /// Adds the request headers.
    pub fn to_headers(&self, headers: &mut HeaderMap) {
        put(headers, RESUME, self.id.to_string());
        put(headers, RESUME_GENERATION, self.generation.to_string());
        put(headers, RESUME_RECEIVED, self.received.to_string());
        put(headers, RESUME_PROOF, B64.encode(self.proof));
    }

    /// Reads a resume request: `Ok(None)` when [`RESUME`] is absent, an
    /// error naming the header when one is malformed or missing.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<ResumeRequest>, String> {
        let Some(id) = text(headers, RESUME)? else {
            return Ok(None);
        };
        Ok(Some(ResumeRequest {
            id: id.parse().map_err(|e| format!("{RESUME}: {e}"))?,
            generation: number(headers, RESUME_GENERATION)?,
            received: number(headers, RESUME_RECEIVED)?,
            proof: proof(headers)?,
        }))
    }
}

/// What the server answers an accepted resume with, in the `200`'s headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeResponse {
    /// Units the server has received.
    pub received: u64,
    /// HMAC over the session id, the new generation and `received`.
    pub proof: [u8; 32],
}

impl ResumeResponse {
    /// A signed response for the carrier generation `generation` (the new one).
    pub fn new(key: &ResumeKey, id: &SessionId, generation: u64, received: u64) -> Self {
        let proof = key.tag(RESPONSE_LABEL, id, generation, received);
        ResumeResponse { received, proof }
    }

    /// Whether `key` signed this response for `id` at `generation`.
    pub fn verify(&self, key: &ResumeKey, id: &SessionId, generation: u64) -> bool {
        key.verify(RESPONSE_LABEL, id, generation, self.received, &self.proof)
    }

    /// Adds the response headers.
    pub fn to_headers(&self, headers: &mut HeaderMap) {
        put(headers, RESUME_RECEIVED, self.received.to_string());
        put(headers, RESUME_PROOF, B64.encode(self.proof));
    }

    /// Reads the response headers; an error names the header at fault.
    pub fn from_headers(headers: &HeaderMap) -> Result<ResumeResponse, String> {
        Ok(ResumeResponse {
            received: number(headers, RESUME_RECEIVED)?,
            proof: proof(headers)?,
        })
    }
}

fn put(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| format!("{name}: not ASCII")))
        .transpose()
}

/// ASCII digits only, at most `u64::MAX`: `u64`'s own parser would also take
/// a leading `+`, which the protocol does not allow.
fn number(headers: &HeaderMap, name: &str) -> Result<u64, String> {
    let value = text(headers, name)?.ok_or_else(|| format!("{name}: missing"))?;
    let bad = || format!("{name}: {value:?} is not a decimal number of at most 2^64-1");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

fn proof(headers: &HeaderMap) -> Result<[u8; 32], String> {
    let value = text(headers, RESUME_PROOF)?.ok_or_else(|| format!("{RESUME_PROOF}: missing"))?;
    decode_fixed(value).map_err(|e| format!("{RESUME_PROOF}: {e}"))
}

fn decode_fixed<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let bytes = B64
        .decode(s)
        .map_err(|_| format!("{s:?} is not base64url without padding"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, expected {N}", b.len()))
}

fn fill_random(out: &mut [u8]) {
    use aws_lc_rs::rand::SecureRandom as _;
    // The system RNG does not fail where aws-lc runs; were it to, going on
    // with a predictable id or key would be worse than stopping.
    aws_lc_rs::rand::SystemRandom::new()
        .fill(out)
        .expect("system random number generator failed");
}
