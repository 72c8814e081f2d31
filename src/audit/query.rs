//! Reading the archive back: filtered, paginated scans by day (`GET /v1/admin/audit`, the
//! `audit.ndjson` of a user's export).
//!
//! Events are found by listing batch keys (`audit/YYYY/MM/DD/…`) from the range's first day and
//! reading each batch; they come out ordered by day, then batch key, then position. Events
//! reach the archive when their batch is sealed (within `audit.flush_seconds`), so the newest
//! ones may not be visible yet. A page reads at most [`MAX_OBJECTS_PER_PAGE`] batches, and may
//! hold fewer items than asked for while still returning a cursor: the cost of one request is
//! bounded, whatever the range.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::AuditError;
use super::Event;
use super::chain;
use crate::storage::{Bucket, ObjectKey, ObjectStore};

pub const MAX_OBJECTS_PER_PAGE: usize = 64;
/// The latest time a query may name (the end of year 9999: days stay four-digit years).
pub const MAX_TIME: u64 = 253_402_300_799;
const DAY: u64 = 86_400;
/// Largest batch object read (a batch of 100,000 events of 4 KiB).
pub const MAX_BATCH_BYTES: u64 = 400 * 1024 * 1024;

/// What to select. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `actor.user`
    pub actor: Option<String>,
    pub action: Option<String>,
    /// `resource.image`
    pub image: Option<String>,
    /// `resource.user` or `resource.owner` (events about an account).
    pub subject: Option<String>,
    /// Inclusive, Unix seconds.
    pub since: u64,
    /// Exclusive, Unix seconds.
    pub until: u64,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        let t = humantime::parse_rfc3339(&e.time)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        eq(&self.actor, e.actor.user.as_deref())
            && eq(&self.action, Some(&e.action))
            && eq(&self.image, e.resource.image.as_deref())
            && self.subject.as_deref().is_none_or(|s| {
                e.resource.user.as_deref() == Some(s) || e.resource.owner.as_deref() == Some(s)
            })
            && t >= self.since
            && t < self.until
    }
}

/// Where a scan stands: the batch key and the number of its records already returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub key: String,
    pub skip: usize,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}~{}", self.key, self.skip)
    }

    pub fn decode(s: &str) -> Result<Cursor, AuditError> {
        let bad = || AuditError::InvalidField("cursor: not a cursor".into());
        let (key, skip) = s.rsplit_once('~').ok_or_else(bad)?;
        chain::parse_key(key).ok_or_else(bad)?;
        Ok(Cursor {
            key: key.to_owned(),
            skip: skip.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of events.
pub struct Page {
    pub items: Vec<Event>,
    pub next: Option<Cursor>,
}

/// Reads a batch and yields its events (records that do not parse are skipped: the archive
/// is verified by `pixgate audit verify`, not here).
pub async fn read_batch(store: &dyn ObjectStore, key: &str) -> Result<Vec<Event>, AuditError> {
    let k = ObjectKey::new(key)?;
    let body = match store.get(Bucket::Audit, &k, MAX_BATCH_BYTES).await {
        Ok(b) => b,
        // Swept meanwhile.
        Err(crate::storage::StorageError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(chain::records(&body)
        .filter_map(|l| serde_json::from_slice::<Event>(l).ok())
        .collect())
}

/// One page of events matching `filter`, at most `limit`, after `cursor`.
///
/// Batches are listed from the first day of the range with one `start_after` listing across
/// day prefixes (keys sort by date), so empty days cost nothing; the scan stops at the first
/// batch of a day after the range.
pub async fn page(
    store: &dyn ObjectStore,
    filter: &Filter,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page, AuditError> {
    let mut items = Vec::new();
    // A batch is filed under the day it opened, and stays open for up to
    // `audit.flush_seconds` (≤ 1 h): events from just after midnight sit in the previous day's
    // batch. One day of margin on each side; the time filter drops the extra events.
    let last_day = day_of(filter.until.saturating_sub(1).saturating_add(DAY));
    let mut queue: std::collections::VecDeque<(String, usize)> = Default::default();
    let mut after = match cursor {
        Some(c) => {
            queue.push_back((c.key.clone(), c.skip));
            c.key.clone()
        }
        // Sorts before every batch of the first day.
        None => format!("audit/{}", day_of(filter.since.saturating_sub(DAY))),
    };
    let mut read = 0usize;
    let mut past_range = false;
    loop {
        if queue.is_empty() {
            if past_range {
                return Ok(Page { items, next: None });
            }
            let listed = store
                .list_page(Bucket::Audit, "audit/", Some(&after), MAX_OBJECTS_PER_PAGE)
                .await?;
            if listed.is_empty() {
                return Ok(Page { items, next: None });
            }
            for k in listed {
                let k = k.as_str().to_owned();
                after.clone_from(&k);
                match chain::parse_key(&k) {
                    Some((day, _, _)) if day <= last_day => queue.push_back((k, 0)),
                    Some(_) => {
                        past_range = true;
                        break;
                    }
                    // Not a batch (retention checkpoints).
                    None => {}
                }
            }
        }
        while let Some((key, skip)) = queue.pop_front() {
            if read >= MAX_OBJECTS_PER_PAGE {
                return Ok(Page {
                    items,
                    next: Some(Cursor { key, skip }),
                });
            }
            read += 1;
            let events = read_batch(store, &key).await?;
            for (i, e) in events.into_iter().enumerate().skip(skip) {
                if filter.matches(&e) {
                    if items.len() == limit {
                        return Ok(Page {
                            items,
                            next: Some(Cursor { key, skip: i }),
                        });
                    }
                    items.push(e);
                }
            }
        }
    }
}

/// `YYYY/MM/DD` of a Unix time.
fn day_of(secs: u64) -> String {
    chain::day(UNIX_EPOCH + Duration::from_secs(secs.min(MAX_TIME)))
}

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, chain::ChainState};
    use bytes::Bytes;

    fn ev(user: &str, action: &str, time: &str) -> String {
        let mut e = Event::new(
            "r",
            action,
            Actor {
                user: Some(user.into()),
                auth: "jwt".into(),
                ..Actor::default()
            },
        );
        e.time = time.into();
        serde_json::to_string(&e).unwrap()
    }

    #[tokio::test]
    async fn pages_cover_every_match_once_across_days_and_batches() {
        let (_dir, store) = crate::storage::temp_store();
        let mut st = ChainState::new("i");
        let mut want = 0;
        for (d, day) in ["2026/11/22", "2026/11/23"].iter().enumerate() {
            for b in 0..3 {
                let events: Vec<String> = (0..5)
                    .map(|i| {
                        let user = if i % 2 == 0 { "alice" } else { "bob" };
                        if user == "alice" {
                            want += 1;
                        }
                        ev(
                            user,
                            "image.read",
                            &format!("2026-11-{}T10:0{b}:0{i}Z", 22 + d),
                        )
                    })
                    .collect();
                let body = chain::seal(&mut st, &events);
                let key = ObjectKey::new(chain::object_key(day, "i", st.seq)).unwrap();
                store
                    .put(Bucket::Audit, &key, Bytes::from(body), "x")
                    .await
                    .unwrap();
            }
        }
        let filter = Filter {
            actor: Some("alice".into()),
            since: 1_795_000_000, // 2026-11-19
            until: 1_796_000_000, // 2026-12-01
            ..Filter::default()
        };
        let mut cursor: Option<Cursor> = None;
        let mut got = Vec::new();
        loop {
            let p = page(store.as_ref(), &filter, cursor.as_ref(), 4)
                .await
                .unwrap();
            assert!(p.items.len() <= 4);
            got.extend(p.items.into_iter().map(|e| e.id));
            match p.next {
                Some(c) => cursor = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(got.len(), want);
        let mut dedup = got.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), got.len(), "no event twice");
        assert!(Cursor::decode("images/x~1").is_err());
        assert!(Cursor::decode("nonsense").is_err());
    }
}
