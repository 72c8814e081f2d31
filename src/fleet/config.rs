//! `[fleet]`: how long a delete or revocation waits for the other instances' acknowledgements,
//! and how often an instance renews its place in the fleet registry.

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, within};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Longest a delete, erasure or revocation waits for every live instance to acknowledge
    /// the event before it answers (naming the instances that did not).
    pub ack_timeout_ms: u64,
    /// Heartbeat period. An instance missing three heartbeats is no longer waited for.
    pub heartbeat_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            ack_timeout_ms: 2000,
            heartbeat_secs: 5,
        }
    }
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("fleet.ack_timeout_ms", self.ack_timeout_ms, 10..=30_000)?;
        within("fleet.heartbeat_secs", self.heartbeat_secs, 1..=60)
    }

    /// How long a registration lives without a heartbeat.
    pub fn registration_ttl_ms(&self) -> u64 {
        self.heartbeat_secs * 3000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_bounds() {
        assert!(FleetConfig::default().validate().is_ok());
        for (c, key) in [
            (
                FleetConfig {
                    ack_timeout_ms: 5,
                    ..FleetConfig::default()
                },
                "fleet.ack_timeout_ms",
            ),
            (
                FleetConfig {
                    heartbeat_secs: 0,
                    ..FleetConfig::default()
                },
                "fleet.heartbeat_secs",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key);
        }
        assert_eq!(FleetConfig::default().registration_ttl_ms(), 15_000);
    }
}
