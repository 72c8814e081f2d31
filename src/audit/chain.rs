//! The archive's hash chain: sealing batches and verifying them. Pure (no I/O).
//!
//! A batch object is NDJSON: a header line
//! `{"batch":{"schema":…,"instance":…,"seq":N,"prev_head":…,"head":…,"count":n}}` and then
//! `n` record lines. A record is the event's JSON with `"prev"` first: the hex SHA-256 of the
//! previous record line of the same chain (the genesis value, 64 zeros, for the first record
//! of a chain). `head` is the hash of the batch's last record line and `prev_head` the `prev`
//! of its first, so each batch names the chain head before and after it. Batches of one
//! chain are numbered `1, 2, …` without gaps, and the number is in the object key.
//!
//! Hashes cover the stored bytes of each line exactly, so verification needs no canonical
//! form: an edited record breaks the link to it from the next record (or the batch's head), a
//! removed or reordered record breaks a link, a removed batch leaves a gap in the numbers and a
//! broken link. Retention removes whole days; `pixgate sweep` records, per chain, the
//! last batch it removed and its head (`audit/checkpoints/{instance}.json`) and verification
//! starts each chain there. Not detectable from the archive alone: removing the newest
//! batches of a chain (no later batch links to them). The writer logs every batch head on
//! the `audit` log stream, and `chain.json` in the spool directory holds the latest one, so
//! the tail can be checked against either.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The batch header schema.
pub const BATCH_SCHEMA: &str = "pixgate.audit-batch/1";

/// Hex SHA-256 of one stored line (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// A batch header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub schema: String,
    pub instance: String,
    pub seq: u64,
    pub prev_head: String,
    pub head: String,
    pub count: u64,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    batch: BatchHeader,
}

#[derive(Deserialize)]
struct Prev {
    prev: String,
}

/// Where a chain stands: the last sealed batch and its head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    pub instance: String,
    pub seq: u64,
    pub head: String,
}

impl ChainState {
    /// A new chain at its genesis.
    pub fn new(instance: &str) -> ChainState {
        ChainState {
            instance: instance.to_owned(),
            seq: 0,
            head: GENESIS.to_owned(),
        }
    }
}

/// Seals `events` (serialised event objects) as the next batch of `state`; returns the
/// object body and advances `state`.
pub fn seal(state: &mut ChainState, events: &[String]) -> Vec<u8> {
    let mut records = Vec::with_capacity(events.iter().map(|e| e.len() + 80).sum());
    let prev_head = state.head.clone();
    let mut prev = state.head.clone();
    for e in events {
        let body = e.strip_prefix('{').unwrap_or(e);
        let line = format!("{{\"prev\":\"{prev}\",{body}");
        prev = line_hash(line.as_bytes());
        records.extend_from_slice(line.as_bytes());
        records.push(b'\n');
    }
    state.seq += 1;
    state.head = prev.clone();
    let header = HeaderLine {
        batch: BatchHeader {
            schema: BATCH_SCHEMA.to_owned(),
            instance: state.instance.clone(),
            seq: state.seq,
            prev_head,
            head: prev,
            count: events.len() as u64,
        },
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&records);
    out
}

/// The archive's day of a time: `YYYY/MM/DD` (UTC).
pub fn day(t: std::time::SystemTime) -> String {
    // `YYYY-MM-DDThh:mm:ssZ`
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}/{}/{}", &s[0..4], &s[5..7], &s[8..10])
}

/// The archive key of a batch: `audit/YYYY/MM/DD/{instance}-{seq:010}.ndjson` (`day` is
/// `YYYY/MM/DD`).
pub fn object_key(day: &str, instance: &str, seq: u64) -> String {
    format!("audit/{day}/{instance}-{seq:010}.ndjson")
}

/// `(day, instance, seq)` of an archive key, if it is one.
pub fn parse_key(key: &str) -> Option<(String, String, u64)> {
    let rest = key.strip_prefix("audit/")?;
    let (day, leaf) = rest.rsplit_once('/')?;
    let d: Vec<&str> = day.split('/').collect();
    let day_ok = d.len() == 3
        && [4, 2, 2]
            .iter()
            .zip(&d)
            .all(|(n, s)| s.len() == *n && s.bytes().all(|b| b.is_ascii_digit()));
    let stem = leaf.strip_suffix(".ndjson")?;
    let (instance, seq) = stem.rsplit_once('-')?;
    if !day_ok || seq.len() != 10 || !valid_instance(instance) {
        return None;
    }
    Some((day.to_owned(), instance.to_owned(), seq.parse().ok()?))
}

/// Instance names: 1–64 of `[a-z0-9_]` (no `-`: it separates the sequence number).
pub fn valid_instance(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The header of a batch object (its first line).
pub fn header(body: &[u8]) -> Option<BatchHeader> {
    let first = body.split(|b| *b == b'\n').next()?;
    serde_json::from_slice::<HeaderLine>(first)
        .ok()
        .map(|h| h.batch)
}

/// The record lines of a batch object (after the header), without their `prev`.
pub fn records(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == b'\n')
        .skip(1)
        .filter(|l| !l.is_empty())
}

/// One problem found by verification, located by object key and line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} line {}: {}", self.key, l, self.what),
            None => write!(f, "{}: {}", self.key, self.what),
        }
    }
}

/// Verification state of one chain, fed its batches in sequence order.
pub struct ChainCheck {
    instance: String,
    expect_seq: u64,
    expect_prev: String,
    pub batches: u64,
    pub records: u64,
    checkpoint_seq: u64,
}

impl ChainCheck {
    /// A chain starting at its genesis, or after a retention checkpoint.
    pub fn new(instance: &str, checkpoint: Option<&ChainState>) -> ChainCheck {
        ChainCheck {
            instance: instance.to_owned(),
            expect_seq: checkpoint.map_or(1, |c| c.seq + 1),
            expect_prev: checkpoint.map_or_else(|| GENESIS.to_owned(), |c| c.head.clone()),
            batches: 0,
            records: 0,
            checkpoint_seq: checkpoint.map_or(0, |c| c.seq),
        }
    }

    /// Checks the next batch (`seq` from its key). Batches at or below a checkpoint are
    /// skipped (a sweep that stopped between its checkpoint and its deletes).
    pub fn batch(&mut self, key: &str, seq: u64, body: &[u8], problems: &mut Vec<Problem>) {
        let problem = |line: Option<usize>, what: String| Problem {
            key: key.to_owned(),
            line,
            what,
        };
        if seq < self.expect_seq {
            // At or below a retention checkpoint: a sweep that stopped between its checkpoint
            // and its deletes. Anything else is a second batch with a number already seen.
            if seq > self.checkpoint_seq {
                problems.push(problem(
                    None,
                    format!(
                        "batch {seq} of chain {} appears twice (copied, or two writers on one chain)",
                        self.instance
                    ),
                ));
            }
            return;
        }
        if seq > self.expect_seq {
            problems.push(problem(
                None,
                format!(
                    "batch{} {}..={} of chain {} missing (removed?)",
                    if seq - self.expect_seq > 1 { "es" } else { "" },
                    self.expect_seq,
                    seq - 1,
                    self.instance
                ),
            ));
        }
        self.expect_seq = seq + 1;
        self.batches += 1;
        let Some(h) = header(body) else {
            problems.push(problem(Some(1), "no batch header".into()));
            return;
        };
        if h.schema != BATCH_SCHEMA || h.instance != self.instance || h.seq != seq {
            problems.push(problem(
                Some(1),
                "header does not match the object key (moved or replaced batch)".into(),
            ));
        }
        if h.prev_head != self.expect_prev {
            problems.push(problem(
                Some(1),
                "batch does not continue the chain (a batch before it was removed or edited)"
                    .into(),
            ));
        }
        let mut n = 0u64;
        for (i, line) in records(body).enumerate() {
            n += 1;
            match serde_json::from_slice::<Prev>(line) {
                Ok(p) if p.prev == self.expect_prev => {}
                Ok(_) => problems.push(problem(
                    Some(i + 2),
                    "record does not follow the one before it (a record was edited, removed or reordered)"
                        .into(),
                )),
                Err(_) => problems.push(problem(Some(i + 2), "not a record".into())),
            }
            self.expect_prev = line_hash(line);
        }
        self.records += n;
        if n != h.count {
            problems.push(problem(
                None,
                format!("header counts {} records, the batch holds {n}", h.count),
            ));
        }
        if h.head != self.expect_prev {
            problems.push(problem(
                None,
                "the last record does not match the batch head (edited or removed)".into(),
            ));
        }
    }
}

/// Groups archive keys by instance, each chain's keys in sequence order.
pub fn chains(keys: &[String]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for k in keys {
        if let Some((_, instance, seq)) = parse_key(k) {
            out.entry(instance).or_default().push((seq, k.clone()));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(from: usize, n: usize) -> Vec<String> {
        (from..from + n)
            .map(|i| format!("{{\"id\":\"e{i}\",\"action\":\"image.read\"}}"))
            .collect()
    }

    fn check(batches: &[(u64, Vec<u8>)], cp: Option<&ChainState>) -> Vec<Problem> {
        let mut c = ChainCheck::new("i1", cp);
        let mut p = Vec::new();
        for (seq, b) in batches {
            c.batch(&object_key("2026/11/24", "i1", *seq), *seq, b, &mut p);
        }
        p
    }

    fn sealed() -> Vec<(u64, Vec<u8>)> {
        let mut s = ChainState::new("i1");
        (0..3)
            .map(|i| (i as u64 + 1, seal(&mut s, &events(i * 3, 3))))
            .collect()
    }

    #[test]
    fn intact_chains_verify() {
        let b = sealed();
        assert!(check(&b, None).is_empty());
        let h = header(&b[2].1).unwrap();
        assert_eq!((h.seq, h.count), (3, 3));
        assert_eq!(records(&b[0].1).count(), 3);
        // Records keep the event's fields after `prev`.
        let first = records(&b[0].1).next().unwrap();
        assert!(first.starts_with(format!("{{\"prev\":\"{GENESIS}\",\"id\":\"e0\"").as_bytes()));
    }

    fn replace_line(body: &[u8], line: usize, f: impl Fn(&str) -> String) -> Vec<u8> {
        let text = String::from_utf8(body.to_vec()).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines[line] = f(&lines[line]);
        (lines.join("\n") + "\n").into_bytes()
    }

    #[test]
    fn edits_removals_and_reorders_are_found_and_located() {
        // An edited record: named by the next line.
        let mut b = sealed();
        b[1].1 = replace_line(&b[1].1, 1, |l| l.replace("image.read", "image.rexd"));
        let p = check(&b, None);
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].key.ends_with("i1-0000000002.ndjson"));
        // The last record of a batch: the head no longer matches, and the next batch breaks.
        let mut b = sealed();
        b[0].1 = replace_line(&b[0].1, 3, |l| l.replace("e2", "e9"));
        let p = check(&b, None);
        assert!(p.iter().any(|x| x.what.contains("batch head")), "{p:?}");
        // A removed record.
        let mut b = sealed();
        b[2].1 = replace_line(&b[2].1, 2, |_| String::new());
        let p = check(&b, None);
        assert!(!p.is_empty());
        // Two records swapped.
        let mut b = sealed();
        let text = String::from_utf8(b[1].1.clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(1, 2);
        b[1].1 = (lines.join("\n") + "\n").into_bytes();
        assert!(!check(&b, None).is_empty());
        // A removed batch.
        let mut b = sealed();
        b.remove(1);
        let p = check(&b, None);
        assert!(p[0].what.contains("missing"), "{p:?}");
        // A batch copied under another day: reported, not silently skipped.
        let mut b = sealed();
        let copy = b[1].1.clone();
        b.insert(2, (2, copy));
        let p = check(&b, None);
        assert!(p.iter().any(|x| x.what.contains("appears twice")), "{p:?}");
        // A removed first batch (no checkpoint).
        let mut b = sealed();
        b.remove(0);
        assert!(!check(&b, None).is_empty());
        // A header whose seq disagrees with its key (batches swapped).
        let mut b = sealed();
        let (x, y) = (b[0].1.clone(), b[1].1.clone());
        b[0].1 = y;
        b[1].1 = x;
        assert!(!check(&b, None).is_empty());
    }

    #[test]
    fn checkpoints_start_a_chain_after_swept_batches() {
        let b = sealed();
        let cp = ChainState {
            instance: "i1".into(),
            seq: 1,
            head: header(&b[0].1).unwrap().head,
        };
        assert!(check(&b[1..], Some(&cp)).is_empty());
        // A sweep that stopped before deleting: the old batch is skipped.
        assert!(check(&b, Some(&cp)).is_empty());
        // A wrong checkpoint head is found.
        let bad = ChainState {
            head: GENESIS.into(),
            ..cp
        };
        assert!(!check(&b[1..], Some(&bad)).is_empty());
    }

    #[test]
    fn keys_round_trip_and_reject_junk() {
        let k = object_key("2026/01/02", "ab_1", 7);
        assert_eq!(k, "audit/2026/01/02/ab_1-0000000007.ndjson");
        assert_eq!(parse_key(&k), Some(("2026/01/02".into(), "ab_1".into(), 7)));
        for bad in [
            "audit/2026/1/02/a-0000000001.ndjson",
            "audit/2026/01/02/A-0000000001.ndjson",
            "audit/2026/01/02/a-1.ndjson",
            "audit/checkpoints/a.json",
            "images/x",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
