//! Guards handlers call before acting: authenticate the bearer credential (with the
//! failed-authentication limit and the per-user request rate), allow an action, act for
//! another user (admins), charge a quota to the caller.

use http::HeaderMap;

use super::ctx::Ctx;
use super::error::Error;
use super::extract::query_param;
use crate::app::App;
use crate::auth::{Action, AuthError, Principal};
use crate::limits::Charge;

/// The bearer principal of a request (JWT or API key), or `MissingToken`; recorded as the
/// request's actor and charged one request of its per-user rate.
///
/// A presented credential is tried only if the client IP is under the failed-authentication
/// limit, and a credential that fails (invalid, revoked, unknown API key; not merely expired)
/// counts against that limit. No credential at all is not an attempt: `401` with no I/O.
pub(crate) async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Result<Principal, Error> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        ctx.limit(app.limiter.guard_auth(ctx.client_ip).await)?;
    }
    let p = match app.auth.authenticate(headers).await {
        Ok(p) => p,
        Err(e) => {
            // Guesses count; an expired token does not: its signature is valid, and clients
            // (single-page apps above all) routinely send a few before refreshing — counting
            // them would lock whole offices out for 15 minutes.
            if matches!(e, AuthError::InvalidToken(_)) {
                app.limiter.auth_failed(ctx.client_ip).await;
            }
            return Err(e.into());
        }
    };
    // A key bound to networks, used from elsewhere (a leaked key): a failed authentication.
    if let crate::auth::AuthMethod::ApiKey { networks, .. } = &p.method
        && !networks.is_empty()
        && !networks
            .iter()
            .any(|n| n.contains(&ctx.client_ip.to_canonical()))
    {
        app.limiter.auth_failed(ctx.client_ip).await;
        return Err(
            AuthError::InvalidToken("API key used outside its allowed_cidrs".into()).into(),
        );
    }
    ctx.set_principal(&p);
    ctx.limit(
        app.limiter
            .user_request(&p.user_id, p.plan.as_deref())
            .await,
    )?;
    Ok(p)
}

/// Charges one unit of `kind` to the calling principal (admins bypass per
/// `limits.admin_bypass`), recording the limit's state for the response headers.
pub(crate) async fn charge_caller(
    app: &App,
    ctx: &Ctx,
    kind: crate::limits::Kind,
    p: &Principal,
) -> Result<Charge, Error> {
    let admin = p.role == crate::auth::Role::Admin;
    ctx.limit(
        app.limiter
            .charge(kind, &p.user_id, p.plan.as_deref(), admin)
            .await,
    )
}

/// Authenticates the caller for `action`: the principal, or `401`, or `403` when its role or
/// scopes do not allow the action.
pub(crate) async fn authenticate_for(
    app: &App,
    headers: &HeaderMap,
    ctx: &Ctx,
    action: Action,
) -> Result<Principal, Error> {
    let p = authenticate(app, headers, ctx).await?;
    p.allow(action)?;
    Ok(p)
}

/// The user a request acts for: the caller, or — for admins only — `?owner=`.
pub(crate) fn acting_for(principal: &Principal, query: Option<&str>) -> Result<String, Error> {
    match query_param(query, "owner")? {
        Some(owner) if owner != principal.user_id => {
            principal.allow(Action::Admin)?;
            if owner.is_empty() || owner.len() > 255 || owner.chars().any(char::is_control) {
                return Err(Error::InvalidField("owner: not a user id".into()));
            }
            Ok(owner)
        }
        _ => Ok(principal.user_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_act_for_others() {
        use crate::auth::Role;
        let alice = Principal::jwt("alice", Role::Editor, None);
        assert_eq!(acting_for(&alice, None).unwrap(), "alice");
        assert_eq!(acting_for(&alice, Some("owner=alice")).unwrap(), "alice");
        assert_eq!(
            acting_for(&alice, Some("owner=bob")).unwrap_err().code(),
            "forbidden"
        );
        let admin = Principal::jwt("root", Role::Admin, None);
        assert_eq!(acting_for(&admin, Some("owner=b%C3%B6b")).unwrap(), "böb");
        assert_eq!(
            acting_for(&admin, Some("owner=a%0Ab")).unwrap_err().code(),
            "invalid_field"
        );
    }
}
