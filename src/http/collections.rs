//! Collections: `POST/GET /v1/collections`, `GET/PATCH/DELETE /v1/collections/{id}`,
//! `POST /v1/collections/{id}/items`, `DELETE /v1/collections/{id}/items/{image}`.
//!
//! A collection is owned by a user or a team. Creating and editing one is content work (the
//! editor role, the `upload` scope for API keys); deleting needs the `delete` scope. Who reaches
//! it: its owner and admins manage it; a team's admins manage the team's collections, editors
//! edit them, viewers read them; shares give read or edit. Reading a collection reads its
//! images (transform, metadata, signed URLs). Only an image's owner (or an admin) puts it in a
//! collection: an edit share of a collection never lets anyone re-share someone else's image
//! (the confused deputy `docs/threat-model.md` describes).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::Error;
use super::teams::{changed, text};
use super::{
    Body, Ctx, authenticate_for, json_response, no_content, query_param, read_json, with_fields,
};
use crate::access::model::MAX_ITEMS;
use crate::access::{Change, Collection, Grantee, Level, TeamRole, account, collections, teams};
use crate::app::App;
use crate::auth::{Action, Principal};
use crate::catalog::CatalogError;
use crate::id::ImageId;

/// A collection as the API shows it, with how far the caller reaches it.
pub(super) fn collection_json(c: &Collection, level: Level) -> Value {
    with_fields(
        serde_json::to_value(c).unwrap_or_default(),
        [("access", json!(level))],
    )
}

/// The collection if the caller reaches it at `need`: `404` when it cannot see it, `403` when
/// it sees it but may not act this way.
pub(super) async fn collection_for(
    app: &App,
    p: &Principal,
    id: &str,
    need: Level,
) -> Result<(Arc<Collection>, Level), Error> {
    let c = app.access.collection(id).await?.ok_or(Error::NotFound)?;
    let level = app.access.collection_level(p, &c).await?;
    if level == Level::None {
        return Err(Error::NotFound);
    }
    if level < need {
        return Err(Error::Forbidden(match need {
            Level::Edit => "changing this collection needs an edit share or the team's editor role",
            _ => "only the collection's owner (or its team's admins) may do this",
        }));
    }
    Ok((c, level))
}

/// `{title, description?, team?}` → `201`.
pub async fn create(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let p = authenticate_for(app, &parts.headers, ctx, Action::Update).await?;
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    let title = text(&v, "title")?.ok_or_else(|| Error::InvalidField("title: required".into()))?;
    let description = text(&v, "description")?.map(str::to_owned);
    let owner = match text(&v, "team")? {
        None => Grantee::User(p.user_id.clone()),
        Some(t) => {
            let store = app.access.store.as_ref();
            let role = teams::membership(store, t, &p.user_id)
                .await?
                .map(|m| m.role);
            // A missing team and another team answer alike (admins too: a team must exist).
            let admin = p.allow(Action::Admin).is_ok() && teams::get(store, t).await?.is_some();
            if role < Some(TeamRole::Editor) && !admin {
                return Err(Error::Forbidden(
                    "a team's collection is created by its editors and admins",
                ));
            }
            Grantee::Team(t.to_owned())
        }
    };
    let c = collections::create(
        app.access.store.as_ref(),
        title,
        description,
        &owner,
        &p.user_id,
    )
    .await?;
    let level = app.access.collection_level(&p, &c).await?;
    let v = with_fields(collection_json(&c, level), [("items", json!([]))]);
    Ok(json_response(StatusCode::CREATED, &v))
}

/// The caller's collections and their teams' (`?shared=1`: what others shared with them).
pub async fn list(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let query = req.uri().query();
    if super::shared::wanted(query)? {
        let limit = super::images::page_limit(query)?;
        let cursor = query_param(query, "cursor")?;
        return list_shared(app, &p, cursor.as_deref(), limit).await;
    }
    let store = &app.access.store;
    let mut items: Vec<Value> = collections::owned_by(store, &Grantee::User(p.user_id.clone()))
        .await?
        .iter()
        .map(|c| collection_json(c, Level::Manage))
        .collect();
    for m in teams::of_user(store, &p.user_id).await? {
        for c in collections::owned_by(store, &Grantee::Team(m.team.clone())).await? {
            items.push(collection_json(&c, m.role.collection_level()));
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"items": items})))
}

pub async fn get(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let (_, level) = collection_for(app, &p, id, Level::Read).await?;
    // The current record (the cached one decided access; its title may be older).
    let c = collections::get(app.access.store.as_ref(), id)
        .await?
        .ok_or(Error::NotFound)?;
    let items: Vec<Value> = collections::items(&app.access.store, id)
        .await?
        .iter()
        .enumerate()
        .map(|(i, it)| json!({"image": it.image, "position": i, "added_by": it.added_by, "added_at": it.added_at}))
        .collect();
    let v = with_fields(collection_json(&c, level), [("items", Value::Array(items))]);
    Ok(json_response(StatusCode::OK, &v))
}

/// `{title?, description?}` (`description: null` clears it).
pub async fn update(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let p = authenticate_for(app, &parts.headers, ctx, Action::Update).await?;
    let (_, level) = collection_for(app, &p, id, Level::Edit).await?;
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    let title = text(&v, "title")?;
    let description = text(&v, "description")?;
    let clears = v.get("description").is_some_and(Value::is_null);
    if title.is_none() && description.is_none() && !clears {
        return Err(Error::InvalidField(
            "body: name at least one of title, description".into(),
        ));
    }
    collections::check_fields(title, description)?;
    let store = app.access.store.as_ref();
    let mut c = collections::get(store, id).await?.ok_or(Error::NotFound)?;
    if let Some(t) = title {
        c.title = t.trim().to_owned();
    }
    if description.is_some() || clears {
        c.description = description.map(str::to_owned);
    }
    c.updated_at = crate::access::model::now_secs();
    collections::save(store, &c).await?;
    let resp = json_response(StatusCode::OK, &collection_json(&c, level));
    let change = Change::Collection { id: c.id.clone() };
    Ok(changed(app, vec![change], ctx, resp).await)
}

pub async fn delete(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Delete).await?;
    let (c, _) = collection_for(app, &p, id, Level::Manage).await?;
    let changes = account::delete_collection(&app.access.store, &c).await?;
    Ok(changed(app, changes, ctx, no_content()).await)
}

/// `{image, position?}`: adds the image (`201`) or moves it (`200`). The caller must own the
/// image (or be an admin); anything else is the same `400`, so ids cannot be probed.
pub async fn add_item(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let p = authenticate_for(app, &parts.headers, ctx, Action::Update).await?;
    collection_for(app, &p, id, Level::Edit).await?;
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    let not_yours = || Error::InvalidField("image: not an image you own".into());
    let image = text(&v, "image")?.ok_or_else(not_yours)?;
    let position = match v.get("position") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .filter(|n| *n <= MAX_ITEMS as u64)
                .ok_or_else(|| Error::InvalidField(format!("position: 0..={MAX_ITEMS}")))?
                as usize,
        ),
    };
    let parsed = ImageId::parse(image).ok_or_else(not_yours)?;
    let meta = match app.catalog.meta(&parsed).await {
        Ok(m) => m,
        Err(CatalogError::NotFound) => return Err(not_yours()),
        Err(e) => return Err(e.into()),
    };
    if !p.owns(&meta.owner) {
        return Err(not_yours());
    }
    let store = &app.access.store;
    let (_, new) = collections::place(store, id, &meta.id, position, &p.user_id).await?;
    let at = collections::items(store, id)
        .await?
        .iter()
        .position(|i| i.image == meta.id);
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let resp = json_response(
        status,
        &json!({"collection": id, "image": meta.id, "position": at}),
    );
    Ok(changed(app, vec![Change::Holders { image: meta.id }], ctx, resp).await)
}

pub async fn remove_item(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
    image: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Update).await?;
    let image = ImageId::parse(image).ok_or(Error::NotFound)?;
    if let Err(refused) = collection_for(app, &p, id, Level::Edit).await {
        // An image's owner takes it out of any collection, whatever they reach of the
        // collection (someone else's, whose edit share they lost, or a team they left): an
        // image stays readable through a collection only while its owner lets it.
        let owns = match app.catalog.meta(&image).await {
            Ok(m) => p.owns(&m.owner),
            Err(CatalogError::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        if !owns {
            return Err(refused);
        }
    }
    if !collections::remove_item(app.access.store.as_ref(), id, image.as_str()).await? {
        return Err(Error::NotFound);
    }
    let change = Change::Holders {
        image: image.as_str().to_owned(),
    };
    Ok(changed(app, vec![change], ctx, no_content()).await)
}

/// Collections shared with the caller (directly or through a team).
pub(super) async fn list_shared(
    app: &App,
    p: &Principal,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Response<Body>, Error> {
    let (shared, next) = super::shared::resources(app, p, cursor, limit, false).await?;
    let mut items = Vec::new();
    for (id, s) in &shared {
        let Some(c) = app.access.collection(id).await? else {
            continue;
        };
        // The caller's own collections, and their teams', are in the plain listing.
        if c.owner.as_deref() == Some(p.user_id.as_str()) {
            continue;
        }
        if let Some(t) = &c.team
            && app.access.role(t, &p.user_id).await?.is_some()
        {
            continue;
        }
        let level = app.access.collection_level(p, &c).await?;
        if level < Level::Read {
            continue;
        }
        items.push(with_fields(
            collection_json(&c, level),
            [("shared", super::shared::via(s))],
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}
