//! The IP blocklist (incident containment): admins block addresses and networks, with a reason
//! and an optional expiry; a blocked client gets `403 blocked` before any other work.
//!
//! Place in the architecture: beside revocations in `auth`. Durable records
//! `blocks/{id}.json` in the originals bucket; every instance holds the whole list in memory
//! (at most [`MAX_BLOCKS`]) and checks each request's client address against it without I/O.
//! A change reaches the other instances through the fleet bus at once (`fleet::Event::Blocked`
//! / `Unblocked`, acknowledged like a revocation) and, for an instance that missed it, by the
//! reload every `auth.revocation_cache_secs` (the same documented bound): one listing, plus a
//! read of each record not held yet (records are immutable).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

/// Blocks held at once (a list this long is scanned in tens of microseconds).
pub const MAX_BLOCKS: usize = 10_000;
const MAX_RECORD_BYTES: u64 = 4096;
/// Longest reason kept.
pub const MAX_REASON_CHARS: usize = 500;

/// One block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// `blk_` + 24 hex.
    pub id: String,
    /// The network, normalised (`203.0.113.0/24`, `2001:db8::1/128`).
    pub cidr: String,
    pub reason: String,
    /// Who blocked it (the admin's user id).
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; `None`: until unblocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Block {
    fn network(&self) -> Option<ipnet::IpNet> {
        self.cidr.parse().ok()
    }

    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key(id: &str) -> Result<ObjectKey, AuthError> {
    Ok(ObjectKey::new(format!("blocks/{id}.json"))?)
}

fn valid_id(id: &str) -> bool {
    id.strip_prefix("blk_")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The list, in memory, over the object store.
pub struct Blocklist {
    store: Arc<dyn ObjectStore>,
    ttl: Duration,
    // A std RwLock: held only to scan or swap the list, never across an `.await`.
    entries: RwLock<(Instant, Vec<(ipnet::IpNet, Block)>)>,
    refreshing: AtomicBool,
}

impl Blocklist {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration) -> Blocklist {
        Blocklist {
            store,
            ttl,
            entries: RwLock::new((Instant::now(), Vec::new())),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Whether `ip` is under a live block. No I/O: a stale list is reloaded in the background
    /// (`self` in an `Arc`), the current one answers meanwhile.
    pub fn is_blocked(self: &Arc<Self>, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let now = now_secs();
        let (stale, hit) = {
            let guard = self.entries.read().unwrap_or_else(|p| p.into_inner());
            let hit = guard
                .1
                .iter()
                .any(|(net, b)| b.live(now) && net.contains(&ip));
            (guard.0.elapsed() >= self.ttl, hit)
        };
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.reload().await {
                    tracing::warn!(error = %e, "could not reload the IP blocklist");
                }
                this.refreshing.store(false, Ordering::Release);
            });
        }
        hit
    }

    /// Brings the list in line with the records (start-up, and when it is older than the TTL).
    /// Records never change once written (a block is added or removed, never edited), so only
    /// records not held yet are read: a steady list costs one listing per TTL, not one read per
    /// block.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let keys = self.store.list(Bucket::Originals, "blocks/").await?;
        let held: std::collections::HashMap<String, (ipnet::IpNet, Block)> = {
            let guard = self.entries.read().unwrap_or_else(|p| p.into_inner());
            guard
                .1
                .iter()
                .map(|e| (e.1.id.clone(), e.clone()))
                .collect()
        };
        let mut fresh = Vec::new();
        for k in keys.iter().take(MAX_BLOCKS) {
            let id = k
                .as_str()
                .trim_start_matches("blocks/")
                .trim_end_matches(".json");
            if let Some(e) = held.get(id) {
                fresh.push(e.clone());
                continue;
            }
            match self.store.get(Bucket::Originals, k, MAX_RECORD_BYTES).await {
                Ok(b) => {
                    let block: Block = serde_json::from_slice(&b)
                        .map_err(|e| AuthError::Internal(format!("block record {k}: {e}")))?;
                    if let Some(net) = block.network() {
                        fresh.push((net, block));
                    }
                }
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), fresh);
        Ok(())
    }

    /// Every block, live or expired, oldest first.
    pub fn list(&self) -> Vec<Block> {
        let guard = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Block> = guard.1.iter().map(|(_, b)| b.clone()).collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    /// Stores a block (durable before it answers) and applies it here.
    pub async fn add(
        &self,
        net: ipnet::IpNet,
        reason: &str,
        created_by: &str,
        expires_in: Option<u64>,
    ) -> Result<Block, AuthError> {
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(AuthError::InvalidField(format!(
                "reason: at most {MAX_REASON_CHARS} characters, no control characters"
            )));
        }
        if self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .len()
            >= MAX_BLOCKS
        {
            return Err(AuthError::InvalidField(format!(
                "at most {MAX_BLOCKS} blocks: remove some first"
            )));
        }
        let now = now_secs();
        let id = format!(
            "blk_{}",
            crate::id::random_hex(12).map_err(|e| AuthError::Internal(e.to_string()))?
        );
        let block = Block {
            id,
            cidr: net.trunc().to_string(),
            reason: reason.to_owned(),
            created_by: created_by.to_owned(),
            created_at: now,
            expires_at: expires_in.map(|s| now.saturating_add(s)),
        };
        let json = serde_json::to_vec(&block).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.store
            .put(
                Bucket::Originals,
                &key(&block.id)?,
                Bytes::from(json),
                "application/json",
            )
            .await?;
        self.apply_added(&block);
        Ok(block)
    }

    /// Removes a block; `false` if there was none.
    pub async fn remove(&self, id: &str) -> Result<bool, AuthError> {
        if !valid_id(id) {
            return Ok(false);
        }
        let k = key(id)?;
        let existed = match self
            .store
            .get(Bucket::Originals, &k, MAX_RECORD_BYTES)
            .await
        {
            Ok(_) => true,
            Err(StorageError::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        self.store.delete(Bucket::Originals, &k).await?;
        self.apply_removed(id);
        Ok(existed)
    }

    /// Removes every expired block record (`pixgate sweep`): an expired block holds a client
    /// address for no purpose. Instances drop it from memory at their next reload (it is
    /// ignored there already). Returns how many went.
    pub async fn sweep_expired(store: &dyn ObjectStore) -> Result<usize, AuthError> {
        let now = now_secs();
        let mut removed = 0;
        for k in store.list(Bucket::Originals, "blocks/").await? {
            let expired = match store.get(Bucket::Originals, &k, MAX_RECORD_BYTES).await {
                Ok(b) => serde_json::from_slice::<Block>(&b).is_ok_and(|b| !b.live(now)),
                Err(StorageError::NotFound) => false,
                Err(e) => return Err(e.into()),
            };
            if expired {
                store.delete(Bucket::Originals, &k).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A block made through another instance (fleet event).
    pub fn apply_added(&self, block: &Block) {
        let Some(net) = block.network() else { return };
        let mut guard = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if !guard.1.iter().any(|(_, b)| b.id == block.id) && guard.1.len() < MAX_BLOCKS {
            guard.1.push((net, block.clone()));
        }
    }

    /// A block removed through another instance (fleet event).
    pub fn apply_removed(&self, id: &str) {
        let mut guard = self.entries.write().unwrap_or_else(|p| p.into_inner());
        guard.1.retain(|(_, b)| b.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocks_apply_at_once_expire_and_survive_a_reload() {
        let (_dir, store) = crate::storage::temp_store();
        let list = Arc::new(Blocklist::new(store.clone(), Duration::from_secs(30)));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = |s: &str| crate::config::types::parse_cidr(s).unwrap();
        let b = list
            .add(net("203.0.113.9/24"), "scan", "root", None)
            .await
            .unwrap();
        assert_eq!(b.cidr, "203.0.113.0/24");
        assert!(list.is_blocked(ip("203.0.113.77")));
        assert!(list.is_blocked(ip("::ffff:203.0.113.77")), "IPv4-mapped");
        assert!(!list.is_blocked(ip("198.51.100.1")));
        let short = list
            .add(net("2001:db8::/32"), "", "root", Some(0))
            .await
            .unwrap();
        assert!(!list.is_blocked(ip("2001:db8::5")), "expired at once");
        // Another instance's view, from storage alone.
        let other = Arc::new(Blocklist::new(store, Duration::from_secs(30)));
        other.reload().await.unwrap();
        assert!(other.is_blocked(ip("203.0.113.1")));
        assert_eq!(other.list().len(), 2);
        assert!(list.remove(&b.id).await.unwrap());
        assert!(!list.remove(&b.id).await.unwrap());
        assert!(!list.remove("../etc").await.unwrap());
        assert!(!list.is_blocked(ip("203.0.113.77")));
        other.apply_removed(&b.id);
        assert!(!other.is_blocked(ip("203.0.113.1")));
        assert_eq!(other.list(), vec![short.clone()]);
        // A reload keeps what it holds and drops what is gone from storage.
        other.reload().await.unwrap();
        assert_eq!(other.list(), vec![short.clone()]);
        // The sweep removes the expired record only.
        assert_eq!(
            Blocklist::sweep_expired(other.store.as_ref())
                .await
                .unwrap(),
            1
        );
        other.reload().await.unwrap();
        assert!(
            other.list().is_empty(),
            "the live one was lifted, the expired one swept"
        );
        let live = list
            .add(net("192.0.2.0/24"), "", "root", Some(3600))
            .await
            .unwrap();
        assert_eq!(
            Blocklist::sweep_expired(other.store.as_ref())
                .await
                .unwrap(),
            0
        );
        other.reload().await.unwrap();
        assert_eq!(other.list(), vec![live]);
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(
            list.add(net("10.0.0.0/8"), &long, "root", None)
                .await
                .is_err()
        );
    }
}
