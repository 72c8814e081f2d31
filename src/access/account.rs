//! What spans several access records: an image's delete, a collection's or a team's delete, a
//! user's erasure and export. Each returns the [`Change`]s the other instances must hear of.

use std::sync::Arc;

use serde_json::{Value, json};

use super::collections;
use super::model::{
    AccessError, Change, Collection, Grantee, MAX_RECEIVED, MAX_TEAMS_PER_USER, Resource, Share,
};
use super::records;
use super::shares;
use super::teams;
use crate::storage::{Bucket, ObjectStore};

/// Before an image's prefix is removed (`catalog::Catalog::delete`): its items leave every
/// collection, and the copies of its shares go (the shares themselves and the back-references
/// are under the image's prefix, removed with it).
pub async fn detach_image(store: &Arc<dyn ObjectStore>, image: &str) -> Result<(), AccessError> {
    for cid in collections::holders(store.as_ref(), image).await? {
        records::remove(store.as_ref(), &records::item(&cid, image)).await?;
    }
    match shares::forget_resource(store, &Resource::Image(image.to_owned())).await {
        // A damaged share record goes with the image's prefix; its copies stay as garbage
        // that grants nothing (every copy is checked against its authority).
        Err(AccessError::Corrupt(m)) => {
            tracing::warn!(image, error = %m, "a share record of a deleted image is damaged");
            Ok(())
        }
        r => r,
    }
}

/// Deletes a collection: its shares, its items (with their back-references), its owner's
/// index entry, then its record.
pub async fn delete_collection(
    store: &Arc<dyn ObjectStore>,
    c: &Collection,
) -> Result<Vec<Change>, AccessError> {
    let r = Resource::Collection(c.id.clone());
    for s in shares::of(store, &r).await? {
        shares::revoke(store.as_ref(), &s).await?;
    }
    let mut changes = vec![Change::Collection { id: c.id.clone() }];
    for item in collections::items(store, &c.id).await? {
        collections::remove_item(store.as_ref(), &c.id, &item.image).await?;
        changes.push(Change::Holders { image: item.image });
    }
    let owner = collections::owner_of(c);
    records::remove(
        store.as_ref(),
        &format!("{}{}", records::owned_collections_prefix(&owner), c.id),
    )
    .await?;
    // The record last, then anything left under the prefix (records that did not parse).
    for k in store
        .list(Bucket::Originals, &records::resource_prefix(&r))
        .await?
    {
        store.delete(Bucket::Originals, &k).await?;
    }
    Ok(changes)
}

/// Deletes a team: its collections, the shares it received, its members, its record.
pub async fn delete_team(
    store: &Arc<dyn ObjectStore>,
    team: &str,
) -> Result<Vec<Change>, AccessError> {
    let mut changes = Vec::new();
    for c in collections::owned_by(store, &Grantee::Team(team.to_owned())).await? {
        changes.extend(delete_collection(store, &c).await?);
    }
    changes.extend(revoke_received(store, &Grantee::Team(team.to_owned())).await?);
    teams::remove(store, team).await?;
    changes.push(Change::Team {
        team: team.to_owned(),
    });
    Ok(changes)
}

/// Revokes every share `g` received.
async fn revoke_received(
    store: &Arc<dyn ObjectStore>,
    g: &Grantee,
) -> Result<Vec<Change>, AccessError> {
    let mut changes = Vec::new();
    let copies: Vec<Share> =
        records::read_all(store, &records::received_prefix(g), MAX_RECEIVED).await?;
    for s in copies {
        shares::revoke(store.as_ref(), &s).await?;
        changes.push(Change::Shares {
            resource: s.resource,
        });
    }
    Ok(changes)
}

/// Erasure: the user's collections, their memberships (a team left without members is
/// deleted), the shares they granted and the shares they received. Other users' images,
/// collections and teams stay.
pub async fn erase_user(
    store: &Arc<dyn ObjectStore>,
    user: &str,
) -> Result<Vec<Change>, AccessError> {
    let mut changes = Vec::new();
    for c in collections::owned_by(store, &Grantee::User(user.to_owned())).await? {
        changes.extend(delete_collection(store, &c).await?);
    }
    for k in records::keys(
        store.as_ref(),
        &records::user_teams_prefix(user),
        MAX_TEAMS_PER_USER,
    )
    .await?
    {
        let team = records::leaf(&k).to_owned();
        teams::remove_member(store, &team, user, true).await?;
        changes.push(Change::Member {
            team: team.clone(),
            user: user.to_owned(),
        });
        if teams::members(store, &team).await?.is_empty() {
            changes.extend(delete_team(store, &team).await?);
        }
    }
    let granted: Vec<Share> =
        records::read_all(store, &records::granted_prefix(user), MAX_RECEIVED).await?;
    for s in granted {
        shares::revoke(store.as_ref(), &s).await?;
        changes.push(Change::Shares {
            resource: s.resource,
        });
    }
    changes.extend(revoke_received(store, &Grantee::User(user.to_owned())).await?);
    Ok(changes)
}

/// The user's part of the access records, for the export: teams (with their role), the
/// collections they own (with items), shares given and received (directly or through a team).
pub async fn export_user(store: &Arc<dyn ObjectStore>, user: &str) -> Result<Value, AccessError> {
    let memberships = teams::of_user(store, user).await?;
    let mut team_list = Vec::new();
    let mut grantees = vec![Grantee::User(user.to_owned())];
    for m in &memberships {
        let name = teams::get(store.as_ref(), &m.team).await?.map(|t| t.name);
        team_list.push(json!({"id": m.team, "name": name, "role": m.role, "added_at": m.added_at}));
        grantees.push(Grantee::Team(m.team.clone()));
    }
    let mut cols = Vec::new();
    for c in collections::owned_by(store, &Grantee::User(user.to_owned())).await? {
        let items = collections::items(store, &c.id).await?;
        let images: Vec<&str> = items.iter().map(|i| i.image.as_str()).collect();
        let mut v = serde_json::to_value(&c).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("items".into(), json!(images));
        }
        cols.push(v);
    }
    let given = shares::indexed(store, &records::granted_prefix(user), MAX_RECEIVED).await?;
    let mut received = Vec::new();
    for g in &grantees {
        received.extend(shares::indexed(store, &records::received_prefix(g), MAX_RECEIVED).await?);
    }
    Ok(json!({
        "teams": team_list,
        "collections": cols,
        "shares_given": given,
        "shares_received": received,
    }))
}
