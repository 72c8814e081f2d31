//! Operational endpoints: `/healthz` (the process is up), `/readyz` (its dependencies answer),
//! `/metrics` (Prometheus text).

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use super::{Body, json_response};
use crate::app::App;
use crate::limits::Backend;

pub fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Ready when storage answers. Redis is not required: while it is unreachable the limiter
/// runs per instance (`"status": "degraded"`, still `200`), because taking every instance out
/// of the load balancer over a Redis outage would turn it into an outage of cached reads.
///
/// Answers within `server.readiness_timeout_ms` whatever storage does: a stalled backend is
/// `"storage": "timeout"`, 503 (see [`crate::storage::HealthProbe`]).
pub async fn readyz(app: &App) -> Response<Body> {
    let deadline = std::time::Duration::from_millis(app.config.server.readiness_timeout_ms);
    let storage = match app.health.check_within(deadline).await {
        Ok(()) => "ok",
        Err(crate::storage::StorageError::Timeout) => {
            tracing::warn!(
                backend = app.store.backend(),
                "readiness: storage check did not answer in time"
            );
            "timeout"
        }
        Err(e) => {
            tracing::warn!(backend = app.store.backend(), error = %e, "readiness: storage check failed");
            "error"
        }
    };
    let backend = app.limiter.check().await;
    let redis = match backend {
        Backend::Local => "disabled",
        Backend::Redis => "ok",
        Backend::Fallback => "error",
    };
    let (status, word) = match (storage, redis) {
        ("ok", "error") => (StatusCode::OK, "degraded"),
        ("ok", _) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unready"),
    };
    json_response(
        status,
        &json!({
            "status": word,
            "checks": {"storage": storage, "redis": redis},
            "limiter": backend.as_str(),
        }),
    )
}

pub fn metrics(app: &App) -> Response<Body> {
    let mut resp = Response::new(Body::from(app.metrics.render()));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
