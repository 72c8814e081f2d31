//! Operator jobs over the whole archive: `pixgate audit verify` and `pixgate sweep`.
//!
//! Verification lists every batch, groups them into chains by instance, and checks each
//! chain in sequence order from its genesis or its retention checkpoint (`chain`). The sweep
//! deletes the batches of days older than `audit.retention_days`; before deleting, it records
//! per chain the newest batch it is about to remove (`audit/checkpoints/{instance}.json`), so
//! the shortened chains still verify. Both read one batch at a time.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::AuditError;
use super::chain::{self, ChainCheck, ChainState, Problem};
use super::query::MAX_BATCH_BYTES;
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

const CHECKPOINTS: &str = "audit/checkpoints/";

/// What verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub chains: usize,
    pub batches: u64,
    pub records: u64,
    pub problems: Vec<Problem>,
}

fn checkpoint_key(instance: &str) -> Result<ObjectKey, AuditError> {
    Ok(ObjectKey::new(format!("{CHECKPOINTS}{instance}.json"))?)
}

async fn checkpoint(
    store: &dyn ObjectStore,
    instance: &str,
) -> Result<Option<ChainState>, AuditError> {
    match store
        .get(Bucket::Audit, &checkpoint_key(instance)?, 64 * 1024)
        .await
    {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(StorageError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every batch key, listed a page at a time (each page has its own storage deadline, so a
/// large archive lists in full).
async fn batch_keys(store: &dyn ObjectStore) -> Result<Vec<String>, AuditError> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_page(Bucket::Audit, "audit/", after.as_deref(), 1000)
            .await?;
        let Some(last) = page.last() else {
            return Ok(keys);
        };
        after = Some(last.as_str().to_owned());
        keys.extend(
            page.into_iter()
                .map(|k| k.as_str().to_owned())
                .filter(|k| chain::parse_key(k).is_some()),
        );
    }
}

async fn batch(store: &dyn ObjectStore, key: &str) -> Result<Bytes, AuditError> {
    Ok(store
        .get(Bucket::Audit, &ObjectKey::new(key)?, MAX_BATCH_BYTES)
        .await?)
}

/// Verifies every chain in the archive.
pub async fn verify(store: &dyn ObjectStore) -> Result<Report, AuditError> {
    let keys = batch_keys(store).await?;
    let mut report = Report::default();
    for (instance, batches) in chain::chains(&keys) {
        let cp = checkpoint(store, &instance).await?;
        let mut check = ChainCheck::new(&instance, cp.as_ref());
        for (seq, key) in batches {
            let body = batch(store, &key).await?;
            check.batch(&key, seq, &body, &mut report.problems);
        }
        report.chains += 1;
        report.batches += check.batches;
        report.records += check.records;
    }
    Ok(report)
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub batches: u64,
    pub checkpoints: u64,
}

/// Deletes the batches of days before `cutoff_day` (`YYYY/MM/DD`, exclusive), after
/// checkpointing each affected chain.
pub async fn sweep(store: &dyn ObjectStore, cutoff_day: &str) -> Result<Swept, AuditError> {
    let keys = batch_keys(store).await?;
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut doomed = Vec::new();
    for k in &keys {
        if let Some((day, instance, seq)) = chain::parse_key(k)
            && day.as_str() < cutoff_day
        {
            doomed.push(k.clone());
            let e = newest.entry(instance).or_insert((0, String::new()));
            if seq > e.0 {
                *e = (seq, k.clone());
            }
        }
    }
    let mut out = Swept::default();
    for (instance, (seq, key)) in newest {
        if checkpoint(store, &instance)
            .await?
            .is_some_and(|c| c.seq >= seq)
        {
            continue;
        }
        let body = batch(store, &key).await?;
        let Some(h) = chain::header(&body) else {
            return Err(AuditError::Internal(format!(
                "audit batch {key} has no header; not sweeping (run pixgate audit verify)"
            )));
        };
        let state = ChainState {
            instance: instance.clone(),
            seq,
            head: h.head,
        };
        let json = serde_json::to_vec(&state).map_err(|e| AuditError::Internal(e.to_string()))?;
        store
            .put(
                Bucket::Audit,
                &checkpoint_key(&instance)?,
                Bytes::from(json),
                "application/json",
            )
            .await?;
        out.checkpoints += 1;
    }
    for k in doomed {
        store.delete(Bucket::Audit, &ObjectKey::new(k)?).await?;
        out.batches += 1;
    }
    Ok(out)
}

/// `YYYY/MM/DD` of the first day kept when keeping `retention_days` days up to `now`.
pub fn cutoff_day(now: std::time::SystemTime, retention_days: u64) -> String {
    let t = now
        .checked_sub(std::time::Duration::from_secs(
            retention_days.saturating_mul(86_400),
        ))
        .unwrap_or(std::time::UNIX_EPOCH);
    chain::day(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sweeping_old_days_keeps_the_rest_verifiable() {
        let (_dir, store) = crate::storage::temp_store();
        let mut st = ChainState::new("i");
        for day in ["2025/01/01", "2025/01/01", "2025/06/01", "2026/11/24"] {
            let body = chain::seal(&mut st, &["{\"a\":1}".to_owned(), "{\"a\":2}".to_owned()]);
            let key = ObjectKey::new(chain::object_key(day, "i", st.seq)).unwrap();
            store
                .put(Bucket::Audit, &key, Bytes::from(body), "x")
                .await
                .unwrap();
        }
        let r = verify(store.as_ref()).await.unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.chains, r.batches, r.records), (1, 4, 8));
        let s = sweep(store.as_ref(), "2025/06/01").await.unwrap();
        assert_eq!(
            s,
            Swept {
                batches: 2,
                checkpoints: 1
            }
        );
        let r = verify(store.as_ref()).await.unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.batches, 2);
        // Removing a batch after the checkpoint is still found.
        let k = ObjectKey::new(chain::object_key("2025/06/01", "i", 3)).unwrap();
        store.delete(Bucket::Audit, &k).await.unwrap();
        let r = verify(store.as_ref()).await.unwrap();
        assert!(!r.problems.is_empty());
        assert_eq!(
            cutoff_day(std::time::UNIX_EPOCH + Duration::from_secs(86_400 * 10), 3),
            "1970/01/08"
        );
    }
}
