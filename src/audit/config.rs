//! `[audit]`: batching, the local spool, this instance's chain name, retention.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, positive, require, within};

/// The audit trail (`src/audit/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// A batch is sealed and archived at least this often (seconds).
    pub flush_seconds: u64,
    /// … or as soon as it holds this many events.
    pub batch_events: u64,
    /// Events waiting for the writer; beyond this an event reaches the log stream only
    /// (counted in `pixgate_audit_dropped_total`).
    pub queue: u64,
    /// Local directory for sealed batches until the archive has them, and the chain state.
    /// Empty: `<storage.fs_root>/audit-spool`. One per instance; keep it on a persistent disk.
    pub spool_dir: String,
    /// Spooled bytes beyond which new batches are dropped (counted, logged).
    pub spool_max_bytes: u64,
    /// Name of this instance's chain (`[a-z0-9_]`, ≤ 64); empty: random, kept in the spool.
    pub instance: String,
    /// Days of audit records kept (`pixgate sweep`, or the lifecycle rule in `deploy/`).
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            flush_seconds: 5,
            batch_events: 10_000,
            queue: 65_536,
            spool_dir: String::new(),
            spool_max_bytes: 1 << 30,
            instance: String::new(),
            retention_days: 365,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("audit.flush_seconds", self.flush_seconds, 1..=3600)?;
        within("audit.batch_events", self.batch_events, 1..=100_000)?;
        within("audit.queue", self.queue, 1..=10_000_000)?;
        positive("audit.spool_max_bytes", self.spool_max_bytes)?;
        require(
            !self.instance.is_empty() && !super::chain::valid_instance(&self.instance),
            "audit.instance",
            "1 to 64 of a-z, 0-9 and _",
        )?;
        within("audit.retention_days", self.retention_days, 1..=36_500)
    }

    /// `audit.spool_dir`, or `<fs_root>/audit-spool` (`storage.fs_root`).
    pub fn spool_dir(&self, fs_root: &str) -> PathBuf {
        if self.spool_dir.is_empty() {
            Path::new(fs_root).join("audit-spool")
        } else {
            PathBuf::from(&self.spool_dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_bounds_batching_and_the_instance_name() {
        assert!(AuditConfig::default().validate().is_ok());
        let bad = |f: fn(&mut AuditConfig)| {
            let mut c = AuditConfig::default();
            f(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(bad(|c| c.flush_seconds = 0), "audit.flush_seconds");
        assert_eq!(bad(|c| c.batch_events = 100_001), "audit.batch_events");
        assert_eq!(bad(|c| c.instance = "Has-Caps".into()), "audit.instance");
        assert_eq!(bad(|c| c.retention_days = 0), "audit.retention_days");
    }

    #[test]
    fn the_spool_defaults_to_a_directory_under_the_fs_root() {
        let c = AuditConfig::default();
        assert_eq!(c.spool_dir("/data"), Path::new("/data/audit-spool"));
        let set = AuditConfig {
            spool_dir: "/spool".into(),
            ..c
        };
        assert_eq!(set.spool_dir("/data"), Path::new("/spool"));
    }
}
