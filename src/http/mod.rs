//! HTTP: routing, request context, and `finish` — the one exit for every response.
//!
//! `finish` writes the common headers (request id, `nosniff`, `no-store` and the JSON error body
//! for errors, `WWW-Authenticate` on 401), counts metrics by route and status class, and logs
//! one line per request. Handlers return `Result<Response, Error>` and never build error
//! responses themselves. Only this layer maps errors to statuses.

mod images;
mod ops;
mod transform;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::app::App;
use crate::auth::{Principal, bearer_token};
use crate::error::Error;
use crate::metrics::{GaugeGuard, status_class};

/// Response body type.
pub type Body = Full<Bytes>;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
const MAX_REQUEST_ID_LEN: usize = 64;

/// Route labels (also metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    ImagesCreate,
    ImagesGet,
    Api,
    Transform,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::ImagesCreate => "images_create",
            Route::ImagesGet => "images_get",
            Route::Api => "api",
            Route::Transform => "transform",
        }
    }
}

/// Per-request facts shared by handlers.
pub struct Ctx {
    pub request_id: String,
    pub client_ip: IpAddr,
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Main,
    /// The separate `/metrics` listener: serves only `/metrics`, `/healthz`.
    Metrics,
}

fn classify(path: &str, listener: Listener, app: &App) -> Route {
    match path {
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics"
            if listener == Listener::Metrics || app.config.server.metrics_listen.is_empty() =>
        {
            Route::Metrics
        }
        _ if listener == Listener::Metrics => Route::Api,
        "/v1/images" => Route::ImagesCreate,
        p if p.starts_with("/v1/images/") => Route::ImagesGet,
        p if p == "/v1" || p.starts_with("/v1/") => Route::Api,
        _ => Route::Transform,
    }
}

/// Serves one request: route, run the handler under the request deadline, finish.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    listener: Listener,
) -> Response<Body> {
    let start = Instant::now();
    let _inflight = GaugeGuard::new(&app.metrics.inflight);
    let ctx = Ctx {
        request_id: request_id(req.headers()),
        client_ip: client_ip(peer.ip(), req.headers(), &app.trusted_proxies),
    };
    let route = classify(req.uri().path(), listener, &app);
    let is_head = req.method() == Method::HEAD;
    let deadline = Duration::from_secs(app.config.server.request_timeout_secs);
    let result = match tokio::time::timeout(deadline, dispatch(&app, route, req, &ctx)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout),
    };
    finish(&app, route, &ctx, start, is_head, result)
}

async fn dispatch(
    app: &App,
    route: Route,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let method = req.method().clone();
    if route != Route::ImagesCreate {
        reject_large_body(req.headers(), app.config.server.max_body_bytes)?;
    }
    let get_like = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Healthz if get_like => Ok(ops::healthz()),
        Route::Readyz if get_like => Ok(ops::readyz(app).await),
        Route::Metrics if get_like => Ok(ops::metrics(app)),
        Route::ImagesCreate => images::create(app, req, ctx).await,
        Route::ImagesGet if get_like => images::get(app, req).await,
        Route::Api => Err(Error::NotFound),
        Route::Transform if get_like => transform::handle(app, req).await,
        _ => Err(Error::MethodNotAllowed("GET, HEAD")),
    }
}

fn finish(
    app: &App,
    route: Route,
    ctx: &Ctx,
    start: Instant,
    is_head: bool,
    result: Result<Response<Body>, Error>,
) -> Response<Body> {
    let label = route.label();
    let (mut resp, error) = match result {
        Ok(r) => (r, None),
        Err(e) => (error_response(&e), Some(e)),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let status = resp.status().as_u16();
    let m = &app.metrics;
    m.http_requests
        .with_label_values(&[label, status_class(status)])
        .inc();
    m.http_duration
        .with_label_values(&[label])
        .observe(start.elapsed().as_secs_f64());
    if !is_head {
        // hyper adds Content-Length later; the body knows its exact size now.
        let sent = hyper::body::Body::size_hint(resp.body())
            .exact()
            .unwrap_or(0);
        m.http_bytes_out.with_label_values(&[label]).inc_by(sent);
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match &error {
        Some(e) => {
            m.http_errors
                .with_label_values(&[label, e.category().as_str()])
                .inc();
            // The full (internal) error goes to the log only, never to the client.
            if e.status().is_server_error() {
                tracing::error!(request_id = %ctx.request_id, route = label, status, code = e.code(), error = %e, client_ip = %ctx.client_ip, duration_ms = ms, "request failed");
            } else {
                tracing::info!(request_id = %ctx.request_id, route = label, status, code = e.code(), client_ip = %ctx.client_ip, duration_ms = ms, "request refused");
            }
        }
        None => {
            tracing::info!(request_id = %ctx.request_id, route = label, status, client_ip = %ctx.client_ip, duration_ms = ms, "request");
        }
    }
    resp
}

/// Renders an error as the standard JSON shape.
fn error_response(e: &Error) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": e.code(), "message": e.public_message()}});
    let mut resp = json_response(e.status(), &body);
    let h = resp.headers_mut();
    match e {
        Error::MissingToken => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pixgate\""),
            );
        }
        Error::InvalidToken(_) | Error::TokenExpired => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pixgate\", error=\"invalid_token\""),
            );
        }
        Error::MethodNotAllowed(allow) => {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        Error::Overloaded | Error::Timeout | Error::StorageUnavailable(_) => {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

/// A JSON response with `Cache-Control: no-store`.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Reads a whole request body of at most `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, Error> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Error::PayloadTooLarge { limit })
        }
        Err(_) => Err(Error::BadRequest("could not read the request body".into())),
    }
}

/// Refuses a declared body larger than `limit` without reading it.
pub(crate) fn reject_large_body(headers: &HeaderMap, limit: u64) -> Result<(), Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(Error::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// The bearer principal of a request, or `MissingToken`.
pub(crate) fn authenticate(app: &App, headers: &HeaderMap) -> Result<Principal, Error> {
    let token = bearer_token(headers)?.ok_or(Error::MissingToken)?;
    app.jwt.verify(token)
}

/// Accepts a client's `X-Request-Id` if it is short and plain, else makes one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(v) => v.to_owned(),
        None => {
            let mut b = [0u8; 12];
            // On the (theoretical) failure of the OS RNG, a zero id is still a valid id.
            let _ = getrandom::fill(&mut b);
            hex::encode(b)
        }
    }
}

/// The client address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` hop that is not itself a trusted proxy. The list is walked from
/// the right and the walk stops at the first malformed entry: everything left of it may have
/// been written by the client.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several headers are one list, in order.
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(s) => entries.extend(s.split(',').map(str::trim)),
            Err(_) => entries.push(""), // an unreadable header ends the trustworthy part
        }
    }
    let mut nearest = peer;
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => nearest = ip,
            Ok(ip) => return ip,
            Err(_) => return nearest,
        }
    }
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted = vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "5.6.7.8".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // A client that is not a trusted proxy cannot spoof its address.
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        // Spoofed left-most entries are ignored: the right-most untrusted hop wins.
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        // A malformed entry stops the walk: nothing left of it is believed.
        h.insert(
            "x-forwarded-for",
            "9.9.9.9, junk, 10.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "9.9.9.9, junk, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Only trusted hops: the left-most of them.
        h.insert("x-forwarded-for", "10.0.0.9, 10.0.0.5".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[]), proxy);
    }

    #[test]
    fn request_ids_are_echoed_only_when_safe() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, "a b\"<script>".parse().unwrap());
        let id = request_id(&h);
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        h.insert(X_REQUEST_ID, "x".repeat(65).parse().unwrap());
        assert_eq!(request_id(&h).len(), 24);
    }

    #[test]
    fn error_responses_have_the_contract_shape() {
        let r = error_response(&Error::TokenExpired);
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        let r = error_response(&Error::Overloaded);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
    }
}
