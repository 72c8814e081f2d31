//! pixgate's own API keys for server-to-server callers.
//!
//! A key is `pxg_live_` + base64url(32 random bytes), shown once at creation. Only its SHA-256
//! is stored — durably, in the object store (Redis is never the owner of a key):
//!
//! - `apikeys/{sha256}.json` — the lookup record, the only object authentication reads;
//! - `users/{user}/apikeys/{id}.json` — the owner's index (listing, revocation);
//! - `users/{user}/apikeys/{id}.used` — last-used time, written at most once a minute per key
//!   in the background, never on the request's path.
//!
//! Creation writes the index first, then the lookup record (a key that cannot be listed can
//! never exist); revocation deletes the lookup record first (the key stops working), then the
//! rest. Lookups are cached per instance for `auth.revocation_cache_secs` (unknown hashes too,
//! so repeating one bad key costs one lookup): a key revoked through another instance stops
//! working here within that bound; through this instance, at once. Random well-formed keys
//! each cost one storage read; the failed-authentication limiter (quotas issue) bounds them.
//!
//! A key's scopes are intersected with its creator's role at creation and again on every use;
//! a key can never create a key with scopes it does not hold. A key keeps its creator's role:
//! demoting a user at the identity provider does not reach their keys — revoking the user's
//! tokens (`revoke-tokens`) does. Raw keys are never logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuthError;
use super::{AuthMethod, Principal, Role, Scopes};
use crate::id::{random_hex, user_segment};
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

/// Every pixgate API key starts with this (so secret scanners and the authenticator know it).
pub const API_KEY_PREFIX: &str = "pxg_live_";
/// base64url of 32 bytes, unpadded.
const SECRET_LEN: usize = 43;
/// Networks one API key may be bound to.
pub const MAX_NETWORKS: usize = 32;
pub(crate) const MAX_RECORD_BYTES: u64 = 16 * 1024;
const MAX_NAME_LEN: usize = 100;
const CACHE_ENTRIES: usize = 10_000;
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// What is stored about a key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public identifier (`key_` + 24 hex), used to list and revoke.
    pub id: String,
    pub owner: String,
    /// The creator's role at creation: the key's ceiling.
    pub role: Role,
    pub plan: Option<String>,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    /// The last four characters of the key, to tell keys apart in a list.
    pub hint: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// Issue time of the credential that created the key (Unix seconds): an admin revoking
    /// the owner's tokens voids the key with them, even one created through an instance that
    /// had not yet seen the revocation.
    #[serde(default)]
    pub issued_at: Option<u64>,
    /// Networks the key may be used from (empty: anywhere), as the client address pixgate
    /// derives (`server.trusted_proxies`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
}

impl ApiKeyRecord {
    /// The JSON shown to the owner (no hash).
    pub fn public_json(&self, last_used: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "scopes": self.scopes,
            "allowed_cidrs": self.allowed_cidrs,
            "created_at": self.created_at,
            "last_used_at": last_used,
            "hint": self.hint,
        })
    }
}

struct Cached {
    at: Instant,
    record: Option<Arc<ApiKeyRecord>>,
}

/// API keys over the object store, with a per-instance lookup cache.
pub struct ApiKeys {
    store: Arc<dyn ObjectStore>,
    ttl: Duration,
    max_per_user: usize,
    // std Mutexes: held only for map operations, never across an `.await`.
    cache: Mutex<LruCache<String, Cached>>,
    last_used: Mutex<LruCache<String, Instant>>,
}

fn lookup_key(hash: &str) -> Result<ObjectKey, AuthError> {
    Ok(ObjectKey::new(format!("apikeys/{hash}.json"))?)
}

fn index_prefix(owner: &str) -> String {
    format!("users/{}/apikeys/", user_segment(owner))
}

fn index_key(owner: &str, id: &str, ext: &str) -> Result<ObjectKey, AuthError> {
    Ok(ObjectKey::new(format!(
        "{}{id}.{ext}",
        index_prefix(owner)
    ))?)
}

/// The owner's record of the key a lookup record names. A lookup record is valid only while
/// this exists: `lookup` checks it on every use; `pixgate fsck` removes lookup records
/// without it.
pub(crate) fn owner_record_key(record: &ApiKeyRecord) -> Result<ObjectKey, AuthError> {
    if !valid_id(&record.id) {
        return Err(AuthError::Corrupt(
            "API key record with a malformed key id".into(),
        ));
    }
    index_key(&record.owner, &record.id, "json")
}

fn hash_of(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Whether `id` looks like a key id (checked before it is used in an object key).
fn valid_id(id: &str) -> bool {
    id.len() == 28
        && id.starts_with("key_")
        && id[4..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ApiKeys {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration, max_per_user: usize) -> ApiKeys {
        let cap = std::num::NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN);
        ApiKeys {
            store,
            ttl,
            max_per_user,
            cache: Mutex::new(LruCache::new(cap)),
            last_used: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The principal of a raw key; `invalid_token` for malformed, unknown or revoked keys.
    pub async fn authenticate(&self, raw: &str) -> Result<Principal, AuthError> {
        let secret = raw.strip_prefix(super::API_KEY_PREFIX).unwrap_or("");
        // Shape first: garbage never reaches storage.
        if secret.len() != SECRET_LEN
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthError::InvalidToken("malformed API key".into()));
        }
        let hash = hash_of(raw);
        let record = self
            .lookup(&hash)
            .await?
            .ok_or_else(|| AuthError::InvalidToken("unknown or revoked API key".into()))?;
        self.note_use(&record);
        let scopes = Scopes::parse(record.scopes.iter().map(String::as_str))
            .map_err(|e| AuthError::Internal(format!("stored API key {}: {e}", record.id)))?;
        let networks = record
            .allowed_cidrs
            .iter()
            .map(|c| c.parse::<ipnet::IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuthError::Internal(format!("stored API key {}: {e}", record.id)))?;
        Ok(Principal {
            user_id: record.owner.clone(),
            role: record.role,
            plan: record.plan.clone(),
            method: AuthMethod::ApiKey {
                key_id: record.id.clone(),
                scopes,
                networks,
            },
            issued_at: record.issued_at,
        })
    }

    async fn lookup(&self, hash: &str) -> Result<Option<Arc<ApiKeyRecord>>, AuthError> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(hash)
                && c.at.elapsed() < self.ttl
            {
                return Ok(c.record.clone());
            }
        }
        let record = match self
            .store
            .get(Bucket::Originals, &lookup_key(hash)?, MAX_RECORD_BYTES)
            .await
        {
            Ok(bytes) => Some(Arc::new(
                serde_json::from_slice::<ApiKeyRecord>(&bytes)
                    .map_err(|e| AuthError::Internal(format!("corrupt API key record: {e}")))?,
            )),
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        // A key is valid only while its owner's index lists it: a lookup record written after
        // the owner's keys were revoked (a creation racing `revoke_all`, an account erasure)
        // authenticates nothing, and is removed.
        let record = match record {
            Some(r) if !self.listed(&r).await? => {
                let _ = self
                    .store
                    .delete(Bucket::Originals, &lookup_key(hash)?)
                    .await;
                None
            }
            other => other,
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(
            hash.to_owned(),
            Cached {
                at: Instant::now(),
                record: record.clone(),
            },
        );
        Ok(record)
    }

    /// Whether the owner's index still lists `record`.
    async fn listed(&self, record: &ApiKeyRecord) -> Result<bool, AuthError> {
        match self
            .store
            .get(
                Bucket::Originals,
                &index_key(&record.owner, &record.id, "json")?,
                MAX_RECORD_BYTES,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the last use in the background, at most once a minute per key.
    fn note_use(&self, record: &ApiKeyRecord) {
        {
            let mut seen = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
            if seen
                .get(&record.id)
                .is_some_and(|t| t.elapsed() < LAST_USED_EVERY)
            {
                return;
            }
            seen.put(record.id.clone(), Instant::now());
        }
        let Ok(key) = index_key(&record.owner, &record.id, "used") else {
            return;
        };
        let store = self.store.clone();
        let id = record.id.clone();
        tokio::spawn(async move {
            let body = Bytes::from(now_rfc3339());
            if let Err(e) = store.put(Bucket::Originals, &key, body, "text/plain").await {
                tracing::warn!(key_id = %id, error = %e, "could not record API key use");
            }
        });
    }

    /// Creates a key for `creator` with the requested scopes (intersected with what the
    /// creator holds). Returns the raw key — the only time it exists outside the caller.
    pub async fn create(
        &self,
        creator: &Principal,
        name: &str,
        requested: Scopes,
        networks: &[ipnet::IpNet],
    ) -> Result<(String, ApiKeyRecord), AuthError> {
        if networks.len() > MAX_NETWORKS {
            return Err(AuthError::InvalidField(format!(
                "allowed_cidrs: at most {MAX_NETWORKS}"
            )));
        }
        if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(AuthError::InvalidField(format!(
                "name: at most {MAX_NAME_LEN} characters, no control characters"
            )));
        }
        let scopes = requested.intersect(creator.scopes());
        if scopes.is_empty() {
            return Err(AuthError::InvalidField(
                "scopes: none of the requested scopes is available to the caller".into(),
            ));
        }
        let existing = self.index(&creator.user_id).await?;
        if existing.len() >= self.max_per_user {
            return Err(AuthError::TooManyApiKeys {
                limit: self.max_per_user as u64,
            });
        }
        let rng = |e: std::io::Error| AuthError::Internal(format!("random: {e}"));
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| AuthError::Internal(format!("random: {e}")))?;
        let raw = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let record = ApiKeyRecord {
            id: format!("key_{}", random_hex(12).map_err(rng)?),
            owner: creator.user_id.clone(),
            role: creator.role,
            plan: creator.plan.clone(),
            name: name.to_owned(),
            scopes: scopes.names().into_iter().map(String::from).collect(),
            created_at: now_rfc3339(),
            hint: raw[raw.len() - 4..].to_owned(),
            hash: hash_of(&raw),
            issued_at: creator.issued_at,
            allowed_cidrs: networks.iter().map(|n| n.trunc().to_string()).collect(),
        };
        let json = Bytes::from(
            serde_json::to_vec(&record).map_err(|e| AuthError::Internal(e.to_string()))?,
        );
        let index = index_key(&record.owner, &record.id, "json")?;
        let lookup = lookup_key(&record.hash)?;
        self.store
            .put(Bucket::Originals, &index, json.clone(), "application/json")
            .await?;
        if let Err(e) = self
            .store
            .put(Bucket::Originals, &lookup, json, "application/json")
            .await
        {
            // A timed-out PUT may have landed: remove both, lookup first.
            for k in [&lookup, &index] {
                if let Err(cleanup) = self.store.delete(Bucket::Originals, k).await {
                    tracing::warn!(key_id = %record.id, error = %cleanup, "could not clean up a failed API key");
                }
            }
            return Err(e.into());
        }
        // A revocation of the owner's keys that ran between our two writes removed the index
        // record but could not see the lookup record yet: the key must not live on unlisted.
        if self.record(&record.owner, &record.id).await?.is_none() {
            self.store.delete(Bucket::Originals, &lookup).await?;
            return Err(AuthError::InvalidToken("credential revoked".into()));
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(&record.hash);
        Ok((raw, record))
    }

    /// The owner's key ids (from the index).
    async fn index(&self, owner: &str) -> Result<Vec<String>, AuthError> {
        let keys = self
            .store
            .list(Bucket::Originals, &index_prefix(owner))
            .await?;
        Ok(keys
            .iter()
            .filter_map(|k| k.as_str().rsplit('/').next())
            .filter_map(|leaf| leaf.strip_suffix(".json"))
            .filter(|id| valid_id(id))
            .map(String::from)
            .collect())
    }

    async fn record(&self, owner: &str, id: &str) -> Result<Option<ApiKeyRecord>, AuthError> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self
            .store
            .get(
                Bucket::Originals,
                &index_key(owner, id, "json")?,
                MAX_RECORD_BYTES,
            )
            .await
        {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                AuthError::Internal(format!("corrupt API key record {id}: {e}"))
            })?)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The owner's keys with their last-used times, oldest first.
    pub async fn list(
        &self,
        owner: &str,
    ) -> Result<Vec<(ApiKeyRecord, Option<String>)>, AuthError> {
        let mut out = Vec::new();
        for id in self.index(owner).await? {
            let Some(record) = self.record(owner, &id).await? else {
                continue; // revoked meanwhile
            };
            let used = match self
                .store
                .get(Bucket::Originals, &index_key(owner, &id, "used")?, 64)
                .await
            {
                Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                Err(StorageError::NotFound) => None,
                Err(e) => return Err(e.into()),
            };
            out.push((record, used));
        }
        out.sort_by(|a, b| a.0.created_at.cmp(&b.0.created_at));
        Ok(out)
    }

    /// Drops this instance's cached lookups of `owner`'s keys (a key of theirs was revoked
    /// through another instance): their next use reads the store.
    pub fn forget_owner(&self, owner: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<String> = cache
            .iter()
            .filter(|(_, c)| c.record.as_ref().is_some_and(|r| r.owner == owner))
            .map(|(h, _)| h.clone())
            .collect();
        for h in doomed {
            cache.pop(&h);
        }
    }

    /// Drops every cached lookup (events may have been missed).
    pub fn forget_all(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Revokes one key of `owner`; `false` if there is no such key.
    pub async fn revoke(&self, owner: &str, id: &str) -> Result<bool, AuthError> {
        let Some(record) = self.record(owner, id).await? else {
            return Ok(false);
        };
        // The lookup record first: from here on the key authenticates nowhere (modulo other
        // instances' caches).
        self.store
            .delete(Bucket::Originals, &lookup_key(&record.hash)?)
            .await?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(
            record.hash.clone(),
            Cached {
                at: Instant::now(),
                record: None,
            },
        );
        for ext in ["used", "json"] {
            self.store
                .delete(Bucket::Originals, &index_key(owner, id, ext)?)
                .await?;
        }
        Ok(true)
    }

    /// Deletes `owner`'s last-use markers whose key is gone (a use on another instance, still
    /// trusting its cache, can write one after a revocation); returns how many.
    pub async fn remove_orphan_markers(&self, owner: &str) -> Result<usize, AuthError> {
        let listed = self
            .store
            .list(Bucket::Originals, &index_prefix(owner))
            .await?;
        let names: std::collections::HashSet<&str> = listed.iter().map(|k| k.as_str()).collect();
        let mut n = 0;
        for k in &listed {
            if let Some(stem) = k.as_str().strip_suffix(".used")
                && !names.contains(format!("{stem}.json").as_str())
            {
                self.store.delete(Bucket::Originals, k).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Revokes every key of `owner`; returns how many there were.
    pub async fn revoke_all(&self, owner: &str) -> Result<usize, AuthError> {
        let mut n = 0;
        for id in self.index(owner).await? {
            if self.revoke(owner, &id).await? {
                n += 1;
            }
        }
        // Last-used markers whose index record is already gone (a use racing a revocation).
        for k in self
            .store
            .list(Bucket::Originals, &index_prefix(owner))
            .await?
        {
            self.store.delete(Bucket::Originals, &k).await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::CodeOf;
    use crate::storage::FsStore;

    fn keys() -> (tempfile::TempDir, ApiKeys) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        (dir, ApiKeys::new(store, Duration::from_secs(30), 3))
    }

    #[tokio::test]
    async fn a_key_its_owner_no_longer_lists_authenticates_nothing() {
        // A creation racing `revoke_all` (an account erasure): the lookup record lands after
        // the owner's index was emptied.
        let (_dir, keys) = keys();
        let alice = Principal::jwt("alice", Role::Editor, None);
        let (raw, rec) = keys.create(&alice, "ci", Scopes::READ, &[]).await.unwrap();
        keys.store
            .delete(
                Bucket::Originals,
                &index_key("alice", &rec.id, "json").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            keys.authenticate(&raw).await.unwrap_err().code(),
            "invalid_token"
        );
        // The orphan lookup record is removed as well.
        assert!(matches!(
            keys.store
                .get(Bucket::Originals, &lookup_key(&rec.hash).unwrap(), 1 << 16)
                .await,
            Err(StorageError::NotFound)
        ));
    }

    #[tokio::test]
    async fn orphan_use_markers_are_removed_and_live_ones_kept() {
        let (_dir, keys) = keys();
        let alice = Principal::jwt("alice", Role::Editor, None);
        let (_raw, rec) = keys.create(&alice, "ci", Scopes::READ, &[]).await.unwrap();
        let live = index_key("alice", &rec.id, "used").unwrap();
        let orphan = index_key("alice", "key_0123456789abcdef01234567", "used").unwrap();
        for k in [&live, &orphan] {
            keys.store
                .put(Bucket::Originals, k, Bytes::from_static(b"t"), "text/plain")
                .await
                .unwrap();
        }
        assert_eq!(keys.remove_orphan_markers("alice").await.unwrap(), 1);
        let left = keys
            .store
            .list(Bucket::Originals, &index_prefix("alice"))
            .await
            .unwrap();
        assert!(left.contains(&live) && !left.contains(&orphan));
    }

    #[tokio::test]
    async fn lifecycle_with_scope_intersection() {
        let (dir, keys) = keys();
        let viewer = Principal::jwt("alice", Role::Viewer, Some("pro".into()));
        let (raw, rec) = keys
            .create(&viewer, "ci", Scopes::READ | Scopes::UPLOAD, &[])
            .await
            .unwrap();
        assert!(raw.starts_with(API_KEY_PREFIX) && raw.len() == API_KEY_PREFIX.len() + 43);
        assert_eq!(rec.scopes, vec!["read"], "upload is beyond a viewer");
        let p = keys.authenticate(&raw).await.unwrap();
        assert_eq!((p.user_id.as_str(), p.role), ("alice", Role::Viewer));
        assert_eq!(p.plan.as_deref(), Some("pro"));
        // The raw key is stored nowhere.
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                    assert!(!text.contains(&raw[API_KEY_PREFIX.len()..]), "{path:?}");
                }
            }
        }
        let listed = keys.list("alice").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(keys.revoke("alice", &rec.id).await.unwrap());
        assert_eq!(
            keys.authenticate(&raw).await.unwrap_err().code(),
            "invalid_token"
        );
        assert!(!keys.revoke("alice", &rec.id).await.unwrap());
        assert!(keys.list("alice").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_cannot_escalate_and_are_capped() {
        let (_dir, keys) = keys();
        let editor = Principal::jwt("bob", Role::Editor, None);
        let (raw, _) = keys.create(&editor, "", Scopes::MANAGE, &[]).await.unwrap();
        let via_key = keys.authenticate(&raw).await.unwrap();
        // A manage-only key cannot mint an upload key.
        assert_eq!(
            keys.create(&via_key, "", Scopes::UPLOAD, &[])
                .await
                .unwrap_err()
                .code(),
            "invalid_field"
        );
        keys.create(&editor, "", Scopes::ALL, &[]).await.unwrap();
        keys.create(&editor, "", Scopes::ALL, &[]).await.unwrap();
        assert_eq!(
            keys.create(&editor, "", Scopes::ALL, &[])
                .await
                .unwrap_err()
                .code(),
            "too_many_api_keys"
        );
        assert_eq!(keys.revoke_all("bob").await.unwrap(), 3);
        assert_eq!(
            keys.authenticate(&raw).await.unwrap_err().code(),
            "invalid_token"
        );
    }

    #[tokio::test]
    async fn malformed_keys_never_reach_storage() {
        let (_dir, keys) = keys();
        for raw in [
            "pxg_live_",
            "pxg_live_short",
            &format!("pxg_live_{}", "a".repeat(42) + "/"),
        ] {
            assert_eq!(
                keys.authenticate(raw).await.unwrap_err().code(),
                "invalid_token"
            );
        }
        assert!(keys.cache.lock().unwrap().is_empty());
        assert!(!valid_id("key_../../x"));
    }
}
