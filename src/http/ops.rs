//! Operational endpoints: `/healthz` (the process is up), `/readyz` (its dependencies answer),
//! `/metrics` (Prometheus text).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{Body, json_response};
use crate::app::App;

pub fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Ready when storage answers and, if configured, Redis answers `PING`.
pub async fn readyz(app: &App) -> Response<Body> {
    let storage = match app.store.check().await {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(backend = app.store.backend(), error = %e, "readiness: storage check failed");
            "error"
        }
    };
    let redis = match &app.redis {
        None => "disabled",
        Some(pool) => {
            let timeout = Duration::from_millis(app.config.redis.timeout_ms.max(500));
            let ping = async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                deadpool_redis::redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(_)) => "ok",
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness: redis check failed");
                    "error"
                }
                Err(_) => {
                    tracing::warn!("readiness: redis check timed out");
                    "error"
                }
            }
        }
    };
    let ready = storage == "ok" && redis != "error";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({
            "status": if ready { "ready" } else { "unready" },
            "checks": {"storage": storage, "redis": redis},
        }),
    )
}

pub fn metrics(app: &App) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(app.metrics.render())));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
