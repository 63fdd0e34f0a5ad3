//! The trace a tunnel request belongs to: `X-Cloud-Trace-Context:
//! TRACE_ID/SPAN_ID;o=1` (Google's front end sets it) or W3C `traceparent:
//! 00-TRACE_ID-SPAN_ID-FLAGS`, and the project that turns the ID into the
//! resource name Cloud Logging groups by (`projects/P/traces/ID`).

use std::sync::OnceLock;
use std::time::Duration;

use http::HeaderMap;

/// The span field that carries a trace ID; the JSON formatter turns it into
/// `logging.googleapis.com/trace`.
pub const TRACE_FIELD: &str = "trace";

static PROJECT: OnceLock<String> = OnceLock::new();

/// The request's trace ID (32 lowercase hex digits), from
/// `X-Cloud-Trace-Context` or else `traceparent`; `None` when neither
/// carries a valid, non-zero one.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let cloud = headers
        .get("x-cloud-trace-context")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(['/', ';']).next());
    let w3c = || {
        let value = headers.get("traceparent")?.to_str().ok()?;
        let mut parts = value.trim().split('-');
        match (parts.next(), parts.next()) {
            // Version ff is invalid (W3C Trace Context §3.2.2.3).
            (Some(version), Some(id)) if version.len() == 2 && version != "ff" => Some(id),
            _ => None,
        }
    };
    [cloud, w3c()]
        .into_iter()
        .flatten()
        .map(|id| id.trim().to_ascii_lowercase())
        .find(|id| is_trace_id(id))
}

fn is_trace_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')
}

/// `projects/PROJECT/traces/ID` once the project is known; the bare ID
/// otherwise (Cloud Logging keeps it, searchable, but cannot link it to
/// Cloud Trace without the project).
pub(super) fn resource_name(id: &str) -> String {
    match PROJECT.get() {
        Some(project) => format!("projects/{project}/traces/{id}"),
        None => id.to_owned(),
    }
}

/// Finds the project trace names are written with: `GOOGLE_CLOUD_PROJECT`
/// if set, else, on Cloud Run (`K_SERVICE` set), the metadata server's
/// `project/project-id`, waiting at most `limit` for it. Called once at
/// start-up; without a project, trace IDs are logged bare.
pub async fn discover_project(limit: Duration) {
    if let Some(project) = env_nonempty("GOOGLE_CLOUD_PROJECT") {
        let _ = PROJECT.set(project);
        return;
    }
    if env_nonempty("K_SERVICE").is_none() {
        return;
    }
    let host = crate::client::default_metadata_host();
    match tokio::time::timeout(limit, crate::client::metadata_project_id(&host)).await {
        Ok(Ok(project)) => {
            let _ = PROJECT.set(project);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no project for trace names: logging bare trace IDs")
        }
        Err(_) => tracing::warn!(
            "the metadata server did not name the project in time: logging bare trace IDs"
        ),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn reads_both_headers_and_prefers_googles() {
        let cloud = format!("{}/1;o=1", ID.to_uppercase());
        assert_eq!(
            trace_id(&headers(&[("x-cloud-trace-context", &cloud)])).as_deref(),
            Some(ID)
        );
        let w3c = format!("00-{ID}-00f067aa0ba902b7-01");
        assert_eq!(
            trace_id(&headers(&[("traceparent", &w3c)])).as_deref(),
            Some(ID)
        );
        let other = "0af7651916cd43dd8448eb211c80319c";
        let both = headers(&[("x-cloud-trace-context", other), ("traceparent", &w3c)]);
        assert_eq!(trace_id(&both).as_deref(), Some(other));
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "xyz/1",
            "00000000000000000000000000000000/1",
            "4bf92f35/1",
        ] {
            assert_eq!(
                trace_id(&headers(&[("x-cloud-trace-context", bad)])),
                None,
                "{bad}"
            );
        }
        let ff = format!("ff-{ID}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(&headers(&[("traceparent", &ff)])), None);
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
