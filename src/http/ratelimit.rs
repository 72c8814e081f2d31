//! The `RateLimit-Policy` and `RateLimit` response headers (IETF httpapi ratelimit-headers
//! draft) for the limits a request met; the limiter itself knows nothing of HTTP.

use crate::limits::Status;

/// `RateLimit-Policy` and `RateLimit` values (IETF httpapi ratelimit-headers draft, structured
/// field lists) for the limits a response was subject to.
pub fn header_values(statuses: &[Status]) -> Option<(String, String)> {
    if statuses.is_empty() {
        return None;
    }
    let policy = statuses
        .iter()
        .map(|s| {
            format!(
                "\"{}\";q={};w={}",
                s.policy.kind.name(),
                s.policy.limit,
                s.policy.window_ms / 1000
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let state = statuses
        .iter()
        .map(|s| {
            format!(
                "\"{}\";r={};t={}",
                s.policy.kind.name(),
                s.remaining(),
                s.reset_secs()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some((policy, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Kind, Policy};

    fn status(kind: Kind, limit: u64, window_ms: u64, used: u64, reset_ms: u64) -> Status {
        Status {
            policy: Policy {
                kind,
                limit,
                window_ms,
            },
            allowed: true,
            used,
            reset_ms,
            retry_ms: 0,
        }
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let s = [
            status(Kind::Requests, 300, 60_000, 1, 59_001),
            status(Kind::Transforms, 1000, 3_600_000, 63, 1_200_000),
        ];
        let (policy, state) = header_values(&s).unwrap();
        assert_eq!(
            policy,
            "\"requests\";q=300;w=60, \"transforms\";q=1000;w=3600"
        );
        assert_eq!(
            state,
            "\"requests\";r=299;t=60, \"transforms\";r=937;t=1200"
        );
        assert!(header_values(&[]).is_none());
    }
}
