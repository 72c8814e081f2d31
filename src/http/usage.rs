//! `GET /v1/usage`: the caller's quotas and request rate — limits, what is used, when units
//! come back — without spending anything but the request itself. Admins may ask for a user
//! with `?owner=`.

use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::error::Error;
use super::{Body, Ctx, acting_for, authenticate, json_response};
use crate::app::App;
use crate::limits::{DEFAULT_PLAN, Status};

pub async fn get(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let principal = authenticate(app, &parts.headers, ctx).await?;
    let user = acting_for(&principal, parts.uri.query())?;
    ctx.set_subject(&user);
    let plan = if user == principal.user_id {
        principal.plan.clone()
    } else {
        app.limiter.plan_of(&user).await
    };
    let now = SystemTime::now();
    let mut quotas = Map::new();
    let mut rates = Map::new();
    for s in app.limiter.usage(&user, plan.as_deref()).await {
        let target = if s.policy.kind.is_quota() {
            &mut quotas
        } else {
            &mut rates
        };
        target.insert(s.policy.kind.name().to_owned(), entry(&s, now));
    }
    let body = json!({
        "user": user,
        "plan": plan.as_deref().unwrap_or(DEFAULT_PLAN),
        "limiter": app.limiter.backend().as_str(),
        "quotas": quotas,
        "rate_limits": rates,
    });
    Ok(json_response(StatusCode::OK, &body))
}

fn entry(s: &Status, now: SystemTime) -> Value {
    let reset_in = s.reset_ms.div_ceil(1000);
    let resets_at = (s.used > 0).then(|| {
        humantime::format_rfc3339_seconds(now + Duration::from_secs(reset_in)).to_string()
    });
    json!({
        "limit": s.policy.limit,
        "used": s.used,
        "remaining": s.remaining(),
        "window_secs": s.policy.window_ms / 1000,
        "reset_in_secs": reset_in,
        "resets_at": resets_at,
    })
}
