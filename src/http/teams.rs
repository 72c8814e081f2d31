//! Teams: `POST/GET /v1/teams`, `GET/DELETE /v1/teams/{id}`, `POST /v1/teams/{id}/members`,
//! `DELETE /v1/teams/{id}/members/{user}`.
//!
//! Anyone may create a team (the `manage` scope for API keys) and becomes its admin. A team is
//! visible to its members only (`404` to anyone else, like a missing team); its admins (and
//! pixgate admins) manage members and delete it; a member may leave. Membership changes reach
//! the other instances' caches through the fleet bus, like key revocations.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::Error;
use super::{Body, Ctx, authenticate_for, json_response, no_content, read_json, with_fields};
use crate::access::model::valid_user;
use crate::access::{Change, Team, TeamRole, account, teams};
use crate::app::App;
use crate::auth::{Action, Principal};
use crate::fleet::Event;

/// A string field of a JSON body.
pub(super) fn text<'a>(v: &'a Value, field: &str) -> Result<Option<&'a str>, Error> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidField(format!("{field}: a string"))),
    }
}

/// Applies `changes` here and sends them to the fleet; answers `resp` with the outcome.
pub(super) async fn changed(
    app: &App,
    changes: Vec<Change>,
    ctx: &Ctx,
    resp: Response<Body>,
) -> Response<Body> {
    for c in &changes {
        app.access.apply(c);
    }
    super::propagate::propagate(app, Event::AccessChanged { changes }, ctx, resp).await
}

pub async fn create(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let p = authenticate_for(app, &parts.headers, ctx, Action::Collaborate).await?;
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    let name = text(&v, "name")?.ok_or_else(|| Error::InvalidField("name: required".into()))?;
    let (team, member) = teams::create(app.access.store.as_ref(), name, &p.user_id).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &team_json(&team, Some(member.role)),
    ))
}

fn team_json(t: &Team, role: Option<TeamRole>) -> Value {
    json!({"id": t.id, "name": t.name, "created_by": t.created_by, "created_at": t.created_at, "role": role})
}

pub async fn list(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let mut items = Vec::new();
    for m in teams::of_user(&app.access.store, &p.user_id).await? {
        if let Some(t) = teams::get(app.access.store.as_ref(), &m.team).await? {
            items.push(team_json(&t, Some(m.role)));
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"items": items})))
}

/// The team and the caller's role in it (read from the record, not a cache: management acts
/// on the current state). `404` unless the caller is a member or a pixgate admin; `403` when
/// `admin` is needed and the caller is a member of another role.
async fn team_for(
    app: &App,
    p: &Principal,
    id: &str,
    admin: bool,
) -> Result<(Team, Option<TeamRole>), Error> {
    let store = app.access.store.as_ref();
    let team = teams::get(store, id).await?.ok_or(Error::NotFound)?;
    let role = teams::membership(store, id, &p.user_id)
        .await?
        .map(|m| m.role);
    let global = p.allow(Action::Admin).is_ok();
    if role.is_none() && !global {
        return Err(Error::NotFound);
    }
    if admin && role != Some(TeamRole::Admin) && !global {
        return Err(Error::Forbidden("managing a team requires its admin role"));
    }
    Ok((team, role))
}

pub async fn get(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let (team, role) = team_for(app, &p, id, false).await?;
    let members: Vec<Value> = teams::members(&app.access.store, id)
        .await?
        .iter()
        .map(|m| json!({"user": m.user, "role": m.role, "added_at": m.added_at}))
        .collect();
    let v = with_fields(team_json(&team, role), [("members", Value::Array(members))]);
    Ok(json_response(StatusCode::OK, &v))
}

/// Deletes the team with its collections, the shares it received and its memberships.
pub async fn delete(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Collaborate).await?;
    // It deletes the team's collections too: the delete action as well.
    p.allow(Action::Delete)?;
    team_for(app, &p, id, true).await?;
    let changes = account::delete_team(&app.access.store, id).await?;
    Ok(changed(app, changes, ctx, no_content()).await)
}

/// `{user, role}`: adds a member or changes their role (`201` new, `200` changed).
pub async fn add_member(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let p = authenticate_for(app, &parts.headers, ctx, Action::Collaborate).await?;
    team_for(app, &p, id, true).await?;
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    let user = text(&v, "user")?
        .filter(|u| valid_user(u))
        .ok_or_else(|| Error::InvalidField("user: a user id".into()))?;
    let role = text(&v, "role")?
        .and_then(TeamRole::parse)
        .ok_or_else(|| Error::InvalidField("role: viewer, editor or admin".into()))?;
    let (m, new) = teams::set_member(&app.access.store, id, user, role, &p.user_id).await?;
    ctx.set_subject(user);
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let resp = json_response(status, &json!({"team": id, "user": m.user, "role": m.role}));
    let change = Change::Member {
        team: id.to_owned(),
        user: user.to_owned(),
    };
    Ok(changed(app, vec![change], ctx, resp).await)
}

/// Removes a member: the team's admins remove anyone, a member removes themselves (leaves).
pub async fn remove_member(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
    raw_user: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Collaborate).await?;
    let user = crate::options::percent_decode(raw_user)
        .filter(|u| valid_user(u))
        .ok_or(Error::NotFound)?;
    team_for(app, &p, id, user != p.user_id).await?;
    ctx.set_subject(&user);
    if !teams::remove_member(&app.access.store, id, &user, false).await? {
        return Err(Error::NotFound);
    }
    let change = Change::Member {
        team: id.to_owned(),
        user,
    };
    Ok(changed(app, vec![change], ctx, no_content()).await)
}
