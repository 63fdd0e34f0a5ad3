//! Application Default Credentials: ID tokens minted from a service
//! account key (the OAuth 2.0 JWT-bearer grant, RFC 7523), and ID tokens
//! for another service account through IAM Credentials' `generateIdToken`,
//! called with the caller's own credentials.
//!
//! Written here rather than taken from `google-cloud-auth` (1.19, its
//! `idtoken` feature): that crate always posts service account assertions to
//! `oauth2.googleapis.com` (the key file's `token_uri` is ignored and the
//! override is private), so it cannot be tested against a local endpoint;
//! it needs Rust 1.91 and adds about 80 crates to our 156 (`reqwest`,
//! `hyper`, `tower`, `google-cloud-gax`, `jsonwebtoken`, a second `sha2`,
//! `jiff`, the ICU/IDNA tables). The grant is one RS256 signature, made
//! with the aws-lc-rs key provider rustls already carries, and one POST.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::sign::SigningKey;
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{json, Value};

use super::command::first_line;
use super::https::{check_url, post};
use super::metadata::{http_get, percent_encode};
use super::TokenError;

/// Google's OAuth 2.0 token endpoint, when a key file names none.
pub(super) const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// IAM Credentials, when `POSTERN_IAM_CREDENTIALS_URL` is not set.
pub(super) const DEFAULT_IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";
/// The scope of the caller's access token for `generateIdToken`.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME: u64 = 3600;

/// A service account key file (`"type": "service_account"`).
pub struct ServiceAccount {
    /// The file it was read from.
    pub path: PathBuf,
    /// `client_email`: the account the tokens are for.
    pub email: String,
    key_id: Option<String>,
    token_uri: String,
    key: Arc<dyn SigningKey>,
}

/// A user's refresh token (`"type": "authorized_user"`, from `gcloud auth
/// application-default login`): good for access tokens, not for ID tokens
/// with an arbitrary audience.
pub struct AuthorizedUser {
    path: PathBuf,
    client_id: String,
    client_secret: String,
    refresh_token: String,
    token_uri: String,
}

/// Whose access token calls IAM Credentials.
#[derive(Clone)]
pub enum Caller {
    /// A service account key.
    Key(Arc<ServiceAccount>),
    /// A user's refresh token.
    User(Arc<AuthorizedUser>),
    /// The metadata server's default service account (`host` as in
    /// [`super::TokenSource::Metadata`]).
    Metadata(String),
}

impl Caller {
    /// A short description for `Debug` output: never a secret.
    pub fn describe(&self) -> String {
        match self {
            Caller::Key(sa) => format!("service account key {}", sa.path.display()),
            Caller::User(u) => format!("user credentials {}", u.path.display()),
            Caller::Metadata(host) => format!("metadata server {host}"),
        }
    }
}

/// The ADC file: `GOOGLE_APPLICATION_CREDENTIALS` when set, else gcloud's
/// `application_default_credentials.json` when it exists; `None` means the
/// metadata server, as Google's client libraries do.
pub(super) fn adc_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        if !path.is_empty() {
            return Some(PathBuf::from(path));
        }
    }
    let config = std::env::var_os("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/gcloud")))?;
    let file = config.join("application_default_credentials.json");
    file.is_file().then_some(file)
}

/// Reads a credentials file: a service account key or user credentials.
/// Read once at start-up (the flag is checked before any tunnel). Errors
/// name the file and the field, never a value from it.
// Read at start-up, before any tunnel runs.
#[allow(clippy::disallowed_methods)]
pub(super) fn load(path: &Path) -> Result<Caller, TokenError> {
    let bad = |reason: &str| TokenError::KeyFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    // serde_json's messages can quote the input: only the position is kept.
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        bad(&format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let field = |name: &str| -> Result<String, TokenError> {
        match json.get(name).and_then(Value::as_str) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            _ => Err(bad(&format!("no {name:?} field"))),
        }
    };
    let token_uri = match json.get("token_uri").and_then(Value::as_str) {
        Some(uri) => {
            check_url(uri).map_err(|e| bad(&format!("token_uri: {e}")))?;
            uri.to_owned()
        }
        None => DEFAULT_TOKEN_URI.to_owned(),
    };
    match json.get("type").and_then(Value::as_str) {
        Some("service_account") => {
            let pem = field("private_key")?;
            let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|_| bad("private_key is not a PEM private key"))?;
            let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
                .map_err(|_| bad("private_key is not a usable private key"))?;
            if key.algorithm() != SignatureAlgorithm::RSA {
                return Err(bad("private_key is not an RSA key (RS256 needs one)"));
            }
            Ok(Caller::Key(Arc::new(ServiceAccount {
                path: path.to_owned(),
                email: field("client_email")?,
                key_id: json
                    .get("private_key_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                token_uri,
                key,
            })))
        }
        Some("authorized_user") => Ok(Caller::User(Arc::new(AuthorizedUser {
            path: path.to_owned(),
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            refresh_token: field("refresh_token")?,
            token_uri,
        }))),
        Some(other) => Err(bad(&format!(
            "credentials of type {other:?} are not supported (service_account or authorized_user)"
        ))),
        None => Err(bad("no \"type\" field: not a credentials file")),
    }
}

/// An ID token for `audience` from the key itself (JWT-bearer grant with
/// `target_audience`).
pub(super) async fn id_token_from_key(
    sa: &ServiceAccount,
    audience: &str,
) -> Result<String, TokenError> {
    let reply = grant(sa, json!({ "target_audience": audience })).await?;
    string_field(&reply, "id_token", "token endpoint", &sa.token_uri)
}

/// An ID token for `target`'s account and `audience`, asked of IAM
/// Credentials (at `iam`) with the caller's access token; the caller needs
/// `iam.serviceAccounts.getOpenIdToken` on `target`.
pub(super) async fn impersonate(
    caller: &Caller,
    target: &str,
    iam: &str,
    audience: &str,
) -> Result<String, TokenError> {
    let access = access_token(caller).await?;
    let url = format!(
        "{}/v1/projects/-/serviceAccounts/{}:generateIdToken",
        iam.trim_end_matches('/'),
        percent_encode(target).replace("%40", "@")
    );
    let body = json!({ "audience": audience, "includeEmail": true }).to_string();
    let bearer = format!("Bearer {access}");
    let reply = call(
        "IAM Credentials",
        &url,
        &[("Authorization", &bearer)],
        "application/json",
        body.as_bytes(),
    )
    .await?;
    string_field(&reply, "token", "IAM Credentials", &url)
}

/// The caller's OAuth access token for the cloud-platform scope.
async fn access_token(caller: &Caller) -> Result<String, TokenError> {
    match caller {
        Caller::Key(sa) => {
            let reply = grant(sa, json!({ "scope": CLOUD_PLATFORM })).await?;
            string_field(&reply, "access_token", "token endpoint", &sa.token_uri)
        }
        Caller::User(user) => {
            let form = format!(
                "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                percent_encode(&user.client_id),
                percent_encode(&user.client_secret),
                percent_encode(&user.refresh_token)
            );
            let reply = call(
                "token endpoint",
                &user.token_uri,
                &[],
                "application/x-www-form-urlencoded",
                form.as_bytes(),
            )
            .await?;
            string_field(&reply, "access_token", "token endpoint", &user.token_uri)
        }
        Caller::Metadata(host) => {
            let path = "/computeMetadata/v1/instance/service-accounts/default/token";
            let err = |reason: String| TokenError::Metadata {
                host: host.clone(),
                reason,
            };
            let (status, body) = http_get(host, path, &[("Metadata-Flavor", "Google")])
                .await
                .map_err(err)?;
            if status != 200 {
                return Err(TokenError::MetadataStatus {
                    host: host.clone(),
                    status,
                    detail: first_line(&body),
                });
            }
            let reply: Value = serde_json::from_slice(&body)
                .map_err(|_| err("the access token reply is not JSON".to_owned()))?;
            match reply.get("access_token").and_then(Value::as_str) {
                Some(token) => Ok(token.to_owned()),
                None => Err(err("the reply has no access_token".to_owned())),
            }
        }
    }
}

/// The JWT-bearer grant: an assertion signed with the key, `extra` claims
/// saying what is asked for, posted to the key's `token_uri`.
async fn grant(sa: &ServiceAccount, extra: Value) -> Result<Value, TokenError> {
    let assertion = assertion(sa, extra)?;
    let form = format!(
        "grant_type={}&assertion={assertion}",
        percent_encode(JWT_BEARER)
    );
    call(
        "token endpoint",
        &sa.token_uri,
        &[],
        "application/x-www-form-urlencoded",
        form.as_bytes(),
    )
    .await
}

/// The signed assertion (RS256): issuer and subject the account, audience
/// the token endpoint, valid for an hour from now.
fn assertion(sa: &ServiceAccount, extra: Value) -> Result<String, TokenError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut header = json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = &sa.key_id {
        header["kid"] = kid.as_str().into();
    }
    let mut claims = json!({
        "iss": sa.email,
        "sub": sa.email,
        "aud": sa.token_uri,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    });
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let failed = || TokenError::KeyFile {
        path: sa.path.clone(),
        reason: "signing the assertion failed".to_owned(),
    };
    let signer = sa
        .key
        .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
        .ok_or_else(failed)?;
    let signature = signer.sign(input.as_bytes()).map_err(|_| failed())?;
    Ok(format!("{input}.{}", b64(&signature)))
}

/// POSTs to a Google endpoint and returns its JSON reply; any status but
/// 200 is an error quoting only Google's error description.
async fn call(
    name: &'static str,
    url: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Result<Value, TokenError> {
    let (status, reply) = post(url, headers, content_type, body)
        .await
        .map_err(|reason| TokenError::Endpoint {
            name,
            url: url.to_owned(),
            reason,
        })?;
    let json: Option<Value> = serde_json::from_slice(&reply).ok();
    if status != 200 {
        return Err(TokenError::EndpointStatus {
            name,
            url: url.to_owned(),
            status,
            detail: json.as_ref().map_or_else(
                || "(no JSON error description)".to_owned(),
                error_description,
            ),
        });
    }
    json.ok_or_else(|| TokenError::Endpoint {
        name,
        url: url.to_owned(),
        reason: "the reply is not JSON".to_owned(),
    })
}

/// OAuth's `error_description` (or `error`), or Google APIs'
/// `error.message`, on one shortened line.
fn error_description(reply: &Value) -> String {
    let text = reply
        .get("error_description")
        .and_then(Value::as_str)
        .or_else(|| reply.pointer("/error/message").and_then(Value::as_str))
        .or_else(|| reply.get("error").and_then(Value::as_str))
        .unwrap_or("(no error description)");
    first_line(text.as_bytes())
}

fn string_field(
    reply: &Value,
    field: &str,
    name: &'static str,
    url: &str,
) -> Result<String, TokenError> {
    match reply.get(field).and_then(Value::as_str) {
        Some(value) => Ok(value.to_owned()),
        None => Err(TokenError::Endpoint {
            name,
            url: url.to_owned(),
            reason: format!("the reply has no {field}"),
        }),
    }
}
