//! Where access records live in the originals bucket, and reading and writing them as JSON.
//!
//! | key | what |
//! |---|---|
//! | `teams/{team}/team.json` | the team |
//! | `teams/{team}/members/{hash(user)}.json` | a membership (the authority) |
//! | `users/{hash(user)}/teams/{team}.json` | the user's memberships (listing, erasure) |
//! | `images/{image}/shares/{share}.json`, `collections/{col}/shares/{share}.json` | a share (the authority; goes with its resource) |
//! | `users/{hash(user)}/received/{share}.json`, `teams/{team}/received/{share}.json` | shares a grantee received (`?shared=1`) |
//! | `users/{hash(user)}/granted/{share}.json` | shares a user created (export, erasure) |
//! | `collections/{col}/collection.json` | a collection |
//! | `collections/{col}/items/{image}.json` | an item and its sort key |
//! | `users/{hash(user)}/collections/{col}`, `teams/{team}/collections/{col}` | collections an owner has |
//! | `images/{image}/in/{col}` | the collections an image is in (goes with the image) |

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{AccessError, Grantee, MAX_RECORD_BYTES, Resource};
use crate::id::user_segment;
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

pub fn key(s: String) -> Result<ObjectKey, AccessError> {
    Ok(ObjectKey::new(s)?)
}

pub fn team_record(team: &str) -> String {
    format!("teams/{team}/team.json")
}

pub fn members_prefix(team: &str) -> String {
    format!("teams/{team}/members/")
}

pub fn member(team: &str, user: &str) -> String {
    format!("teams/{team}/members/{}.json", user_segment(user))
}

pub fn user_teams_prefix(user: &str) -> String {
    format!("users/{}/teams/", user_segment(user))
}

pub fn user_team(user: &str, team: &str) -> String {
    format!("users/{}/teams/{team}.json", user_segment(user))
}

/// The prefix a resource's own records live under (removed with the resource).
pub fn resource_prefix(r: &Resource) -> String {
    match r {
        Resource::Image(id) => format!("images/{id}/"),
        Resource::Collection(id) => format!("collections/{id}/"),
    }
}

pub fn shares_prefix(r: &Resource) -> String {
    format!("{}shares/", resource_prefix(r))
}

pub fn share(r: &Resource, id: &str) -> String {
    format!("{}{id}.json", shares_prefix(r))
}

pub fn received_prefix(g: &Grantee) -> String {
    match g {
        Grantee::User(u) => format!("users/{}/received/", user_segment(u)),
        Grantee::Team(t) => format!("teams/{t}/received/"),
    }
}

pub fn received(g: &Grantee, id: &str) -> String {
    format!("{}{id}.json", received_prefix(g))
}

pub fn granted_prefix(user: &str) -> String {
    format!("users/{}/granted/", user_segment(user))
}

pub fn granted(user: &str, id: &str) -> String {
    format!("{}{id}.json", granted_prefix(user))
}

pub fn collection_record(id: &str) -> String {
    format!("collections/{id}/collection.json")
}

pub fn items_prefix(id: &str) -> String {
    format!("collections/{id}/items/")
}

pub fn item(id: &str, image: &str) -> String {
    format!("collections/{id}/items/{image}.json")
}

/// Where an owner's collections are indexed: a user's, or a team's.
pub fn owned_collections_prefix(owner: &Grantee) -> String {
    match owner {
        Grantee::User(u) => format!("users/{}/collections/", user_segment(u)),
        Grantee::Team(t) => format!("teams/{t}/collections/"),
    }
}

pub fn holders_prefix(image: &str) -> String {
    format!("images/{image}/in/")
}

/// The last path segment of `key` without `.json`.
pub fn leaf(key: &ObjectKey) -> &str {
    let s = key.as_str();
    let s = s.rsplit('/').next().unwrap_or(s);
    s.strip_suffix(".json").unwrap_or(s)
}

/// The record at `k`, or `None` if there is none.
pub async fn read<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    k: &str,
) -> Result<Option<T>, AccessError> {
    match store
        .get(Bucket::Originals, &key(k.to_owned())?, MAX_RECORD_BYTES)
        .await
    {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AccessError::Corrupt(format!("{k}: {e}"))),
        Err(StorageError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `v` at `k` (durable when it returns).
pub async fn write<T: Serialize>(
    store: &dyn ObjectStore,
    k: &str,
    v: &T,
) -> Result<(), AccessError> {
    let json = serde_json::to_vec(v).map_err(|e| AccessError::Internal(e.to_string()))?;
    store
        .put(
            Bucket::Originals,
            &key(k.to_owned())?,
            Bytes::from(json),
            "application/json",
        )
        .await?;
    Ok(())
}

/// Writes an index marker (an empty JSON object: the key is the fact).
pub async fn mark(store: &dyn ObjectStore, k: &str) -> Result<(), AccessError> {
    write(store, k, &serde_json::json!({})).await
}

pub async fn remove(store: &dyn ObjectStore, k: &str) -> Result<(), AccessError> {
    store.delete(Bucket::Originals, &key(k.to_owned())?).await?;
    Ok(())
}

/// At most `max` keys under `prefix`, sorted (page by page: a store answers at most 1,000
/// keys per listing).
pub async fn keys(
    store: &dyn ObjectStore,
    prefix: &str,
    max: usize,
) -> Result<Vec<ObjectKey>, AccessError> {
    keys_after(store, prefix, None, max).await
}

/// [`keys`] that sort after `after` (a full key).
pub async fn keys_after(
    store: &dyn ObjectStore,
    prefix: &str,
    after: Option<&str>,
    max: usize,
) -> Result<Vec<ObjectKey>, AccessError> {
    let mut out: Vec<ObjectKey> = Vec::new();
    let mut cursor = after.map(str::to_owned);
    while out.len() < max {
        let want = (max - out.len()).min(1000);
        let page = store
            .list_page(Bucket::Originals, prefix, cursor.as_deref(), want)
            .await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.as_str().to_owned());
        let short = page.len() < want;
        out.extend(page);
        if short {
            break;
        }
    }
    Ok(out)
}

/// Every record under `prefix` (at most `max`), read at most 16 at a time; records gone
/// between the listing and the read are skipped.
pub async fn read_all<T: DeserializeOwned + Send + 'static>(
    store: &std::sync::Arc<dyn ObjectStore>,
    prefix: &str,
    max: usize,
) -> Result<Vec<T>, AccessError> {
    let listed: Vec<String> = keys(store.as_ref(), prefix, max)
        .await?
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    read_keys(store, &listed).await
}

/// The records at `listed`, in order, read at most 16 at a time; missing ones are skipped.
pub async fn read_keys<T: DeserializeOwned + Send + 'static>(
    store: &std::sync::Arc<dyn ObjectStore>,
    listed: &[String],
) -> Result<Vec<T>, AccessError> {
    let mut out = Vec::with_capacity(listed.len());
    for chunk in listed.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for (i, k) in chunk.iter().enumerate() {
            let (store, k) = (store.clone(), k.clone());
            set.spawn(async move { (i, read::<T>(store.as_ref(), &k).await) });
        }
        let mut got = Vec::with_capacity(chunk.len());
        while let Some(joined) = set.join_next().await {
            let (i, r) = joined.map_err(|e| AccessError::Internal(format!("read task: {e}")))?;
            if let Some(v) = r? {
                got.push((i, v));
            }
        }
        got.sort_by_key(|(i, _)| *i);
        out.extend(got.into_iter().map(|(_, v)| v));
    }
    Ok(out)
}
