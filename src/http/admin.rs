//! Admin actions. `POST /v1/admin/users/{id}/revoke-tokens` — incident response: every JWT of
//! the user issued until now is refused from now on (durable record), and every API key of the
//! user is revoked. The user id is the percent-encoded path segment.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Body, Ctx, authorize, json_response, percent_decode};
use crate::app::App;
use crate::auth::Action;
use crate::error::Error;
use crate::signature::unix_now;

pub async fn revoke_tokens(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    raw_user: &str,
) -> Result<Response<Body>, Error> {
    let principal = authorize(app, req.headers(), ctx, Action::Admin).await?;
    let user = percent_decode(raw_user)
        .filter(|u| !u.is_empty() && u.len() <= 255 && !u.chars().any(char::is_control))
        .ok_or_else(|| Error::InvalidField("user: not a user id".into()))?;
    let now = unix_now();
    app.auth.revocations.revoke(&user, now).await?;
    let keys = app.auth.api_keys.revoke_all(&user).await?;
    tracing::warn!(request_id = %ctx.request_id, user = %user.escape_debug(), by = %principal.user_id.escape_debug(), api_keys = keys, "tokens revoked");
    Ok(json_response(
        StatusCode::OK,
        &json!({"user_id": user, "not_before": now, "api_keys_revoked": keys}),
    ))
}
