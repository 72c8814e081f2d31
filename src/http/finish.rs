//! `finish`, the one exit for every response: common and security headers, the JSON error
//! body, the `RateLimit` headers, metrics by route and status class, the log line, and the
//! request's one audit event (also emitted, as `499`, for a request dropped before it).

use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};

use super::Body;
use super::ctx::{Ctx, X_REQUEST_ID};
use super::error::Error;
use super::ratelimit;
use super::route::Route;
use crate::app::App;
use crate::audit::{Actor, Event, Resource};
use crate::metrics::status_class;

const X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
const X_FRAME_OPTIONS: HeaderName = HeaderName::from_static("x-frame-options");
const REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");
const CONTENT_SECURITY_POLICY: HeaderName = HeaderName::from_static("content-security-policy");
const STRICT_TRANSPORT_SECURITY: HeaderName = HeaderName::from_static("strict-transport-security");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Emits a request's audit event exactly once: from `finish`, or — if the request future
/// is dropped first — on drop, as `499 client_closed`.
pub(super) struct AuditOnce<'a> {
    pub(super) app: &'a App,
    pub(super) ctx: &'a Ctx,
    pub(super) action: Option<&'static str>,
    pub(super) user_agent: Option<String>,
    pub(super) done: bool,
}

impl AuditOnce<'_> {
    pub(super) fn emit(&mut self, status: u16, error: Option<&Error>, bytes_out: Option<u64>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(action) = self.action {
            let event = audit_event(
                self.ctx,
                action,
                status,
                error,
                bytes_out,
                self.user_agent.take(),
            );
            self.app.audit.emit(&event);
        }
    }
}

impl Drop for AuditOnce<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(action) = self.action {
            let mut e = audit_event(self.ctx, action, 499, None, None, self.user_agent.take());
            e.outcome = "failure".to_owned();
            e.error = Some("client_closed".to_owned());
            self.app.audit.emit(&e);
        }
    }
}

/// The audit event of a finished request. Refusals are recorded under their own action
/// (`auth.failure`, `access.denied`, `quota.exceeded`, `rate.limited`) with the route's
/// action in `attempted`.
fn audit_event(
    ctx: &Ctx,
    action: &'static str,
    status: u16,
    error: Option<&Error>,
    bytes_out: Option<u64>,
    user_agent: Option<String>,
) -> Event {
    let mut n = ctx.note();
    let refusal = match error {
        Some(
            Error::MissingToken
            | Error::InvalidToken(_)
            | Error::TokenExpired
            | Error::InvalidSignature,
        ) => Some("auth.failure"),
        Some(Error::Forbidden(_) | Error::InsufficientScope(_)) => Some("access.denied"),
        Some(Error::NotFound) if n.denied => Some("access.denied"),
        Some(Error::QuotaExceeded(_)) => Some("quota.exceeded"),
        Some(Error::RateLimited(_)) => Some("rate.limited"),
        _ => None,
    };
    let actor = n.actor.take().unwrap_or_else(|| Actor {
        auth: if n.signed_url {
            "signed_url"
        } else {
            "anonymous"
        }
        .to_owned(),
        ..Actor::default()
    });
    let mut e = Event::new(&ctx.request_id, refusal.unwrap_or(action), actor);
    if refusal.is_some() {
        e.attempted = Some(action.to_owned());
    }
    e.resource = Resource {
        image: n.image.take(),
        owner: n.owner.take(),
        user: n.subject.take(),
        api_key: n.api_key.take(),
    };
    e.status = status;
    if let Some(err) = error {
        e.outcome = "failure".to_owned();
        e.error = Some(err.code().to_owned());
    }
    e.client_ip = ctx.client_ip.to_string();
    e.user_agent = user_agent;
    e.bytes_in = n.bytes_in;
    e.bytes_out = bytes_out;
    e.unacknowledged = std::mem::take(&mut n.unacknowledged);
    e
}

/// What `finish` needs to know about the request besides its outcome.
pub(super) struct Finishing<'a> {
    pub(super) app: &'a App,
    pub(super) route: &'a Route,
    pub(super) ctx: &'a Ctx,
    pub(super) start: Instant,
    pub(super) is_head: bool,
}

/// The one exit: the handler's response, or the error's, with every common header; then
/// metrics, the log line and the audit event (`audit`, given status, error and bytes sent).
pub(super) fn finish(
    f: &Finishing<'_>,
    result: Result<Response<Body>, Error>,
    audit: impl FnOnce(u16, Option<&Error>, Option<u64>),
) -> Response<Body> {
    let (mut resp, error) = match result {
        Ok(r) => (r, None),
        Err(e) => (error_response(&e), Some(e)),
    };
    common_headers(f, &mut resp, error.as_ref());
    let status = resp.status().as_u16();
    // hyper adds Content-Length later; a whole body knows its exact size now (a stream does
    // not: `None`).
    let sent = if f.is_head {
        Some(0)
    } else {
        hyper::body::Body::size_hint(resp.body()).exact()
    };
    count(f, status, sent, error.as_ref());
    log_line(f, status, error.as_ref());
    audit(status, error.as_ref(), sent);
    resp
}

/// Request id, security headers, the cacheable `404` of a verified signed URL, `RateLimit`.
fn common_headers(f: &Finishing<'_>, resp: &mut Response<Body>, error: Option<&Error>) {
    let ctx = f.ctx;
    // Errors are `no-store`, except the `404` of a verified signed URL, which a CDN may keep
    // for `cache.error_max_age_secs` so a flood of requests for a deleted image stays there.
    let not_found_age = ctx.not_found_max_age.load(Ordering::Relaxed);
    if matches!(error, Some(Error::NotFound))
        && not_found_age > 0
        && let Ok(v) = HeaderValue::from_str(&format!("public, max-age={not_found_age}"))
    {
        resp.headers_mut().insert(CACHE_CONTROL, v);
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    security_headers(h, ctx.tls.then_some(f.app.config.server.hsts_max_age_secs));
    if let Some(Error::QuotaExceeded(s) | Error::RateLimited(s)) = error {
        ctx.note_limit(s);
    }
    ratelimit_headers(ctx, h);
}

/// `RateLimit-Policy` and, on responses a shared cache will not keep, `RateLimit`.
fn ratelimit_headers(ctx: &Ctx, h: &mut HeaderMap) {
    let limits = std::mem::take(&mut *ctx.limits.lock().unwrap_or_else(|p| p.into_inner()));
    let Some((policy, state)) = ratelimit::header_values(&limits) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&policy) {
        h.insert(RATELIMIT_POLICY, v);
    }
    // A shared cache would replay one client's remaining allowance to everyone: public
    // (CDN-cacheable) responses carry the policy only.
    let public = h
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("public"));
    if !public && let Ok(v) = HeaderValue::from_str(&state) {
        h.insert(RATELIMIT, v);
    }
}

/// Requests, duration and bytes by route and status class; errors by category.
fn count(f: &Finishing<'_>, status: u16, sent: Option<u64>, error: Option<&Error>) {
    let label = f.route.label();
    let m = &f.app.metrics;
    m.http_requests
        .with_label_values(&[label, status_class(status)])
        .inc();
    m.http_duration
        .with_label_values(&[label])
        .observe(f.start.elapsed().as_secs_f64());
    m.http_bytes_out
        .with_label_values(&[label])
        .inc_by(sent.unwrap_or(0));
    if let Some(e) = error {
        m.http_errors
            .with_label_values(&[label, e.category().as_str()])
            .inc();
    }
}

/// One line per request. The full (internal) error goes to the log only, never to the client.
fn log_line(f: &Finishing<'_>, status: u16, error: Option<&Error>) {
    let (ctx, label) = (f.ctx, f.route.label());
    let ms = f.start.elapsed().as_secs_f64() * 1000.0;
    let (user, auth) = {
        let n = ctx.note();
        match &n.actor {
            Some(a) => (a.user.clone().unwrap_or_default(), auth_name(&a.auth)),
            // Signed URLs: the owner the request counts for.
            None if n.signed_url => (n.owner.clone().unwrap_or_default(), "signed_url"),
            None => (String::new(), "anonymous"),
        }
    };
    match error {
        Some(e) if e.status().is_server_error() => {
            tracing::error!(request_id = %ctx.request_id, route = label, status, code = e.code(), error = %e, user = %user.escape_debug(), auth, client_ip = %ctx.client_ip, duration_ms = ms, "request failed");
        }
        Some(e) => {
            tracing::info!(request_id = %ctx.request_id, route = label, status, code = e.code(), user = %user.escape_debug(), auth, client_ip = %ctx.client_ip, duration_ms = ms, "request refused");
        }
        None => {
            tracing::info!(request_id = %ctx.request_id, route = label, status, user = %user.escape_debug(), auth, client_ip = %ctx.client_ip, duration_ms = ms, "request");
        }
    }
}

fn auth_name(s: &str) -> &'static str {
    match s {
        "jwt" => "jwt",
        "api_key" => "api_key",
        "signed_url" => "signed_url",
        _ => "anonymous",
    }
}

/// Headers every response carries. The CSP forbids everything and sandboxes the document, so
/// an image (or an error body) opened directly in a browser can run nothing; HSTS only over
/// TLS (RFC 6797 §7.2: never over plain HTTP).
fn security_headers(h: &mut HeaderMap, hsts_max_age: Option<u64>) {
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
    );
    if let Some(age) = hsts_max_age
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={age}"))
    {
        h.insert(STRICT_TRANSPORT_SECURITY, v);
    }
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
        Error::InsufficientScope(_) => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pixgate\", error=\"insufficient_scope\""),
            );
        }
        Error::MethodNotAllowed(allow) => {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        Error::Overloaded | Error::Timeout | Error::StorageUnavailable(_) => {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Error::QuotaExceeded(s) | Error::RateLimited(s) => {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(s.retry_after_secs()),
            );
        }
        _ => {}
    }
    resp
}

/// A JSON response with `Cache-Control: no-store`.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An empty `204 No Content`.
/// `v` (a JSON object) with `fields` added: how handlers extend a record with what only the
/// API shows (the caller's access, items, members). Anything but an object is left as it is.
pub(crate) fn with_fields<const N: usize>(
    mut v: serde_json::Value,
    fields: [(&str, serde_json::Value); N],
) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        for (k, f) in fields {
            o.insert(k.to_owned(), f);
        }
    }
    v
}

pub(crate) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn security_headers_and_hsts_only_over_tls() {
        let mut h = HeaderMap::new();
        security_headers(&mut h, None);
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            h[CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
        assert!(h.get(STRICT_TRANSPORT_SECURITY).is_none());
        security_headers(&mut h, Some(600));
        assert_eq!(h[STRICT_TRANSPORT_SECURITY], "max-age=600");
    }
}
