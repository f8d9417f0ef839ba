//! The live stats page served next to `/metrics`: one self-contained HTML page (no external
//! asset) that polls `/api/stats`, and `POST /api/backend` for drain, undrain and weight
//! changes, refused unless the request carries the configured admin token.

use http_body_util::{BodyExt, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header::AUTHORIZATION,
    StatusCode,
};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::{
    api::{Request, Response},
    metrics::DaemonSender,
};

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("stats_page.html");

/// Largest admin request body read.
const MAX_BODY: usize = 4096;

/// An admin action from the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    service: String,
    address: std::net::IpAddr,
    action: String,
    #[serde(default)]
    weight: Option<u32>,
}

/// Handles `POST /api/backend`: (status, body). Without a configured token the page is
/// read-only; a wrong or missing token is refused before the body is read.
pub async fn admin(
    req: hyper::Request<Incoming>,
    token: Option<&str>,
    daemon: &DaemonSender,
) -> (StatusCode, String) {
    let Some(token) = token else {
        return (
            StatusCode::FORBIDDEN,
            "read-only: set admin_token in the config to allow changes from the page\n".into(),
        );
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            "wrong or missing admin token\n".into(),
        );
    }
    let body: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n".into()),
    };
    let action: Action = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")),
    };
    let Action {
        service,
        address,
        action,
        weight,
    } = action;
    let request = match action.as_str() {
        "drain" => Request::BackendDrain { service, address },
        "undrain" => Request::BackendUndrain { service, address },
        "weight" => match weight {
            Some(w) => Request::BackendSet {
                service,
                address,
                weight: Some(w),
                role: None,
            },
            None => return (StatusCode::BAD_REQUEST, "weight: give \"weight\"\n".into()),
        },
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown action {other:?}: drain, undrain or weight\n"),
            )
        }
    };
    let (tx, rx) = oneshot::channel();
    if daemon.send((request, tx)).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping\n".into(),
        );
    }
    match rx.await {
        Ok(Response {
            ok: true, message, ..
        }) => (StatusCode::OK, format!("{}\n", message.unwrap_or_default())),
        // Validated like every API change: refused whole, with the reason.
        Ok(Response { error, .. }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{}\n", error.unwrap_or_default()),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping\n".into(),
        ),
    }
}

/// Compares without returning early on the first difference (the token's length is not a
/// secret worth hiding).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!super::same(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!super::same(b"", b"x"));
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        let page = super::PAGE;
        for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(!page.contains(external), "the page loads {external}");
        }
        assert!(page.contains("/api/stats") && page.contains("/api/backend"));
    }
}
