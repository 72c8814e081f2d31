//! What spans several access records: an image's delete, a collection's or a team's delete, a
//! user's erasure and export. Each returns the [`Change`]s the other instances must hear of.

use std::sync::Arc;

use serde_json::{Value, json};

use super::collections;
use super::model::{
    AccessError, Change, Collection, Grantee, MAX_RECEIVED, MAX_SHARES, Resource, Share,
};
use super::records;
use super::shares;
use super::teams;
use crate::storage::{Bucket, ObjectStore};

/// Before an image's prefix is removed (`catalog::Catalog::delete`, `pixgate fsck --repair`
/// finishing one): its items leave every collection, and the copies of its shares go (the
/// shares themselves and the back-references are under the image's prefix, removed with it).
/// A damaged share record goes with the prefix; its copies stay as garbage that grants nothing
/// (every copy is checked against its authority).
pub async fn detach_image(store: &dyn ObjectStore, image: &str) -> Result<(), AccessError> {
    for cid in collections::holders(store, image).await? {
        records::remove(store, &records::item(&cid, image)).await?;
    }
    let r = Resource::Image(image.to_owned());
    for k in records::keys(store, &records::shares_prefix(&r), MAX_SHARES).await? {
        match records::read::<Share>(store, k.as_str()).await {
            Ok(Some(s)) => {
                records::remove(store, &records::received(&s.grantee, &s.id)).await?;
                records::remove(store, &records::granted(&s.created_by, &s.id)).await?;
            }
            Ok(None) => {}
            Err(AccessError::Corrupt(m)) => {
                tracing::warn!(image, error = %m, "a share record of a deleted image is damaged");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deletes a collection: its shares, its items (with their back-references), its record and
/// anything else under its prefix, then its owner's index entry (last: a collection is found
/// by its owner's erasure until it is wholly gone). One change: the record's (an image's
/// collection that no longer exists grants nothing, whatever a cache holds of its holders).
pub async fn delete_collection(
    store: &Arc<dyn ObjectStore>,
    c: &Collection,
) -> Result<Vec<Change>, AccessError> {
    let r = Resource::Collection(c.id.clone());
    for s in shares::of(store, &r).await? {
        shares::revoke(store.as_ref(), &s).await?;
    }
    for item in collections::items(store, &c.id).await? {
        collections::remove_item(store.as_ref(), &c.id, &item.image).await?;
    }
    records::remove(store.as_ref(), &records::collection_record(&c.id)).await?;
    for k in store
        .list(Bucket::Originals, &records::resource_prefix(&r))
        .await?
    {
        store.delete(Bucket::Originals, &k).await?;
    }
    let owner = collections::owner_of(c);
    records::remove(
        store.as_ref(),
        &format!("{}{}", records::owned_collections_prefix(&owner), c.id),
    )
    .await?;
    Ok(vec![Change::Collection { id: c.id.clone() }])
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
/// deleted; a team they created keeps no trace of it in `created_by`), the shares they granted
/// and the shares they received. Other users' images, collections and teams stay. Each index
/// is worked through until it is empty, whatever its bound.
pub async fn erase_user(
    store: &Arc<dyn ObjectStore>,
    user: &str,
) -> Result<Vec<Change>, AccessError> {
    let mut changes = Vec::new();
    loop {
        let owned = collections::owned_by(store, &Grantee::User(user.to_owned())).await?;
        if owned.is_empty() {
            break;
        }
        for c in owned {
            changes.extend(delete_collection(store, &c).await?);
        }
    }
    loop {
        let teams_of =
            records::keys(store.as_ref(), &records::user_teams_prefix(user), 1000).await?;
        if teams_of.is_empty() {
            break;
        }
        for k in teams_of {
            let team = records::leaf(&k).to_owned();
            changes.extend(leave_for_good(store, &team, user).await?);
        }
    }
    for prefix in [
        records::granted_prefix(user),
        records::received_prefix(&Grantee::User(user.to_owned())),
    ] {
        loop {
            let listed = records::keys(store.as_ref(), &prefix, 1000).await?;
            if listed.is_empty() {
                break;
            }
            for k in listed {
                match records::read::<Share>(store.as_ref(), k.as_str()).await {
                    Ok(Some(s)) => {
                        shares::revoke(store.as_ref(), &s).await?;
                        changes.push(Change::Shares {
                            resource: s.resource,
                        });
                    }
                    // Gone meanwhile, or damaged: it names nothing readable.
                    Ok(None) | Err(AccessError::Corrupt(_)) => {}
                    Err(e) => return Err(e),
                }
                // The copy itself, whatever it said (progress is certain).
                store.delete(Bucket::Originals, &k).await?;
            }
        }
    }
    Ok(changes)
}

/// The erased user leaves `team`: the membership (even the last admin's); a team left without
/// members is deleted; in one that stays, their id goes from the team's `created_by`, the
/// other members' `added_by` and the team's collections' `created_by` (items they added were
/// their own images, gone with them).
async fn leave_for_good(
    store: &Arc<dyn ObjectStore>,
    team: &str,
    user: &str,
) -> Result<Vec<Change>, AccessError> {
    teams::remove_member(store, team, user, true).await?;
    let mut changes = vec![Change::Member {
        team: team.to_owned(),
        user: user.to_owned(),
    }];
    let members = teams::members(store, team).await?;
    if members.is_empty() {
        changes.extend(delete_team(store, team).await?);
        return Ok(changes);
    }
    if let Some(mut t) = teams::get(store.as_ref(), team).await?
        && t.created_by == user
    {
        t.created_by = String::new();
        records::write(store.as_ref(), &records::team_record(team), &t).await?;
    }
    for mut m in members.into_iter().filter(|m| m.added_by == user) {
        m.added_by = String::new();
        teams::rewrite_member(store.as_ref(), &m).await?;
    }
    for mut c in collections::owned_by(store, &Grantee::Team(team.to_owned())).await? {
        if c.created_by == user {
            c.created_by = String::new();
            collections::save(store.as_ref(), &c).await?;
            changes.push(Change::Collection { id: c.id });
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::model::ShareAccess;

    #[tokio::test]
    async fn a_deleted_image_leaves_every_collection_and_index() {
        let (_dir, store) = crate::storage::temp_store();
        let img = "0123456789abcdef0123456789abcdef";
        let owner = Grantee::User("ann".into());
        let c = collections::create(store.as_ref(), "C", None, &owner, "ann")
            .await
            .unwrap();
        collections::place(&store, &c.id, img, None, "ann")
            .await
            .unwrap();
        let r = Resource::Image(img.into());
        let bob = Grantee::User("bob".into());
        shares::create(&store, r, bob.clone(), ShareAccess::Read, "ann")
            .await
            .unwrap();
        detach_image(store.as_ref(), img).await.unwrap();
        assert!(collections::items(&store, &c.id).await.unwrap().is_empty());
        for prefix in [
            records::received_prefix(&bob),
            records::granted_prefix("ann"),
        ] {
            assert!(
                records::keys(store.as_ref(), &prefix, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
