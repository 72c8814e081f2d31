//! The request context: per-request facts handlers share (request id, client address, TLS),
//! what they learn for the audit event and log line, and the limits the request met.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use http::header::HeaderName;

use super::error::Error;
use crate::audit::Actor;
use crate::auth::{AuthMethod, Principal};
use crate::limits::{Charge, Refusal, Status};

const MAX_REQUEST_ID_LEN: usize = 64;
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers learn about a request for its audit event and log line.
#[derive(Debug, Default)]
pub(super) struct Note {
    /// The authenticated caller.
    pub(super) actor: Option<Actor>,
    /// A verified signed URL (no principal).
    pub(super) signed_url: bool,
    pub(super) image: Option<String>,
    pub(super) owner: Option<String>,
    /// The account acted on (export, erasure, admin on behalf).
    pub(super) subject: Option<String>,
    pub(super) api_key: Option<String>,
    pub(super) bytes_in: u64,
    /// The image exists but the caller may not touch it (answered `404`).
    pub(super) denied: bool,
    /// Live instances that did not acknowledge this request's fleet event (`*`: the bus was
    /// down, none was told).
    pub(super) unacknowledged: Vec<String>,
}

/// Per-request facts shared by handlers.
pub struct Ctx {
    pub request_id: String,
    pub client_ip: IpAddr,
    /// Whether the request arrived over TLS.
    pub tls: bool,
    /// Actor and resource, for the audit event and the request log. Held only to set or read
    /// a value, never across an `.await`.
    pub(super) note: Mutex<Note>,
    /// The limits this request was subject to, for the `RateLimit` headers (one per policy).
    pub(super) limits: Mutex<Vec<Status>>,
    /// `max-age` for a `404` of this request (set once a signed URL verified); 0: `no-store`.
    pub(super) not_found_max_age: AtomicU64,
}

impl Ctx {
    pub(super) fn new(request_id: String, client_ip: IpAddr, tls: bool) -> Ctx {
        Ctx {
            request_id,
            client_ip,
            tls,
            note: Mutex::new(Note::default()),
            limits: Mutex::new(Vec::new()),
            not_found_max_age: AtomicU64::new(0),
        }
    }

    /// Lets a `404` of this request be cached publicly for `secs` (0: never).
    pub fn cache_not_found_for(&self, secs: u64) {
        self.not_found_max_age.store(secs, Ordering::Relaxed);
    }

    pub(super) fn note(&self) -> std::sync::MutexGuard<'_, Note> {
        self.note.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the authenticated caller.
    pub fn set_principal(&self, p: &Principal) {
        self.note().actor = Some(Actor {
            user: Some(p.user_id.clone()),
            role: Some(p.role.as_str().to_owned()),
            auth: p.method_name().to_owned(),
            api_key_id: match &p.method {
                AuthMethod::ApiKey { key_id, .. } => Some(key_id.clone()),
                AuthMethod::Jwt => None,
            },
            operator: None,
        });
    }

    /// Records that a verified signed URL authorised the request.
    pub fn set_signed_url(&self) {
        self.note().signed_url = true;
    }

    /// Records the image acted on and, once known, its owner.
    pub fn set_image(&self, id: &str, owner: Option<&str>) {
        let mut n = self.note();
        n.image = Some(crate::audit::clip(id));
        if let Some(o) = owner {
            n.owner = Some(o.to_owned());
        }
    }

    /// Records the owner of the image acted on.
    pub fn set_image_owner(&self, owner: &str) {
        self.note().owner = Some(owner.to_owned());
    }

    /// Records the account acted on (export, erasure, revocation, admin on behalf).
    pub fn set_subject(&self, user: &str) {
        self.note().subject = Some(crate::audit::clip(user));
    }

    /// Records the API key created or revoked.
    pub fn set_api_key(&self, id: &str) {
        self.note().api_key = Some(crate::audit::clip(id));
    }

    /// Records the instances that did not confirm this request's fleet event.
    pub fn set_unacknowledged(&self, instances: Vec<String>) {
        self.note().unacknowledged = instances;
    }

    /// Records the bytes a request brought in (an upload's image).
    pub fn set_bytes_in(&self, n: u64) {
        self.note().bytes_in = n;
    }

    /// Records that the caller was refused an existing image (answered as `404`).
    pub fn set_denied(&self) {
        self.note().denied = true;
    }

    /// Records a limit's state for the response headers.
    pub fn note_limit(&self, status: &Status) {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits.retain(|s| s.policy.kind != status.policy.kind);
        limits.push(status.clone());
    }

    /// Passes a limiter decision through, recording the state of an admitted one (a refusal's
    /// state travels in its error and is recorded by `finish`).
    pub fn limit<T>(&self, decision: Result<T, Refusal>) -> Result<T, Error>
    where
        T: LimitState,
    {
        if let Ok(Some(s)) = decision.as_ref().map(LimitState::limit_state) {
            self.note_limit(s);
        }
        decision.map_err(Error::from)
    }
}

/// A limiter answer that may carry a limit's state.
pub trait LimitState {
    fn limit_state(&self) -> Option<&Status>;
}

impl LimitState for Option<Status> {
    fn limit_state(&self) -> Option<&Status> {
        self.as_ref()
    }
}

impl LimitState for () {
    fn limit_state(&self) -> Option<&Status> {
        None
    }
}

impl LimitState for Charge {
    fn limit_state(&self) -> Option<&Status> {
        self.status()
    }
}

/// Accepts a client's `X-Request-Id` if it is short and plain, else makes one.
pub(super) fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(v) => v.to_owned(),
        // 32 random bits per process, then a counter: unique without a system call per
        // request (request ids correlate logs; they are not secrets).
        None => {
            static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let prefix = PREFIX.get_or_init(|| {
                let mut b = [0u8; 4];
                // On the (theoretical) failure of the OS RNG, zero is still a valid prefix.
                let _ = getrandom::fill(&mut b);
                u32::from_le_bytes(b)
            });
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            format!("{prefix:08x}{n:016x}")
        }
    }
}

impl crate::limits::ChargeObserver for Ctx {
    fn charged(&self, status: &Status) {
        self.note_limit(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_echoed_only_when_safe() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, "a b\"<script>".parse().unwrap());
        let id = request_id(&h);
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        h.insert(X_REQUEST_ID, "x".repeat(65).parse().unwrap());
        assert_eq!(request_id(&h).len(), 24);
    }
}
