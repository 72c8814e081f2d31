//! The CDN purge hook: after an image is deleted (or its owner's account erased), one HTTP
//! request tells the CDN to drop every cached response tagged with the image's surrogate key.
//!
//! Transform responses carry `Surrogate-Key: {image id}` (Fastly) and `Cache-Tag: {image id}`
//! (Cloudflare), so one purge by key covers every size, format and signature of the image.
//! The request is configured, not coded per vendor (`[cdn]`): URL, method, headers, body,
//! with `{key}`, `{image_id}` and `{nonce}` substituted — enough for Fastly's purge-by-key,
//! Cloudflare's purge by tag, or a relay in front of CloudFront (see `deploy/cdn.md`).
//!
//! Purges run in the background after the delete has answered: a CDN outage must not block or
//! undo a delete (the origin already answers `404`, and CDN copies expire by their `max-age`,
//! never beyond the URL's `exp`). Attempts are retried with backoff on network errors, `429`
//! and `5xx`; a final failure is logged and counted. Header values are secrets and never logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::Full;

use crate::metrics::Metrics;
use crate::workers::Backlog;

pub mod config;
pub use config::{CdnConfig, METHODS, PurgeHeader, PurgeMethod, parse_header};

/// Backoff before attempt n+1: 0.25 s × 4ⁿ (0.25, 1, 4, 16 s, …), capped at 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(4u64.saturating_pow(attempt)))
        .min(Duration::from_secs(30))
}

/// Substitutes the placeholders. Image ids are 32 hex digits and nonces hex, so the result
/// needs no further escaping in a URL path or a JSON string.
pub fn expand(template: &str, image_id: &str, nonce: &str) -> String {
    template
        .replace("{key}", image_id)
        .replace("{image_id}", image_id)
        .replace("{nonce}", nonce)
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

struct Hook {
    url: String,
    method: Method,
    /// Swapped on `SIGHUP` (they carry the CDN's API token).
    headers: crate::reload::Swap<Vec<(HeaderName, HeaderValue)>>,
    body: String,
    timeout: Duration,
    attempts: u32,
    queue: Backlog,
    /// Requests in flight at once (`cdn.purge_concurrency`).
    running: tokio::sync::Semaphore,
    client: Client,
}

/// Sends purges; a no-op when no hook is configured.
pub struct CdnPurger {
    hook: Option<Hook>,
    metrics: Metrics,
    /// Failed purges are audit events (`cdn.purge`, actor `system`).
    audit: Option<Arc<crate::audit::Auditor>>,
}

fn header_pairs(cfg: &CdnConfig) -> Vec<(HeaderName, HeaderValue)> {
    cfg.purge_headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// How one attempt ended.
enum Attempt {
    Done,
    Retry(String),
    Fail(String),
}

impl CdnPurger {
    /// Takes the purge headers of a reloaded configuration (the rest of `[cdn]` needs a
    /// restart). Returns whether there was a hook to update.
    pub fn reload_headers(&self, cfg: &CdnConfig) -> bool {
        match &self.hook {
            Some(hook) => {
                hook.headers.store(header_pairs(cfg));
                true
            }
            None => false,
        }
    }

    /// Builds the purger from a validated configuration.
    pub fn new(cfg: &CdnConfig, metrics: Metrics) -> Result<CdnPurger, String> {
        let hook = if cfg.purge_url.is_empty() {
            None
        } else {
            let client = crate::outbound::https_client("cdn.purge_url")?;
            Some(Hook {
                url: cfg.purge_url.clone(),
                method: cfg.purge_method.0.clone(),
                headers: crate::reload::Swap::new(header_pairs(cfg)),
                body: cfg.purge_body.clone(),
                timeout: Duration::from_millis(cfg.purge_timeout_ms),
                attempts: u32::try_from(cfg.purge_attempts).unwrap_or(u32::MAX),
                queue: Backlog::new(usize::try_from(cfg.purge_queue).unwrap_or(usize::MAX)),
                running: tokio::sync::Semaphore::new(
                    usize::try_from(cfg.purge_concurrency).unwrap_or(usize::MAX),
                ),
                client,
            })
        };
        Ok(CdnPurger {
            hook,
            metrics,
            audit: None,
        })
    }

    /// Records failed purges in the audit trail.
    pub fn audited(mut self, audit: Arc<crate::audit::Auditor>) -> CdnPurger {
        self.audit = Some(audit);
        self
    }

    /// A failed purge: counted, logged by the caller, and audited.
    fn failed(&self, image_id: &str, code: &str) {
        self.count("failed");
        if let Some(audit) = &self.audit {
            let mut e = crate::audit::Event::new(
                "",
                "cdn.purge",
                crate::audit::Actor {
                    auth: "system".to_owned(),
                    ..crate::audit::Actor::default()
                },
            );
            e.resource.image = Some(image_id.to_owned());
            e.outcome = "failure".to_owned();
            e.status = 0;
            e.error = Some(code.to_owned());
            audit.emit(&e);
        }
    }

    /// Purges `image_id` from the CDN in the background (bounded; never fails the caller).
    pub fn purge(self: &Arc<Self>, image_id: &str) {
        self.purge_after(image_id, Duration::ZERO);
    }

    /// Like [`CdnPurger::purge`], after `delay` (the delay counts against the queue).
    pub fn purge_after(self: &Arc<Self>, image_id: &str, delay: Duration) {
        let Some(hook) = &self.hook else { return };
        let Some(slot) = hook.queue.try_enter() else {
            self.failed(image_id, "purge_queue_full");
            tracing::error!(image = %image_id, "CDN purge queue full; purge dropped (the CDN copy expires by its max-age)");
            return;
        };
        let this = self.clone();
        let image_id = image_id.to_owned();
        tokio::spawn(async move {
            let _slot = slot;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            this.run(&image_id).await;
        });
    }

    /// Purges now, with retries; returns whether the CDN accepted the purge.
    pub async fn run(&self, image_id: &str) -> bool {
        let Some(hook) = &self.hook else { return true };
        let Ok(_running) = hook.running.acquire().await else {
            return false;
        };
        let mut last = String::new();
        for attempt in 0..hook.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            self.metrics.cdn_purge_attempts.inc();
            match self.attempt(hook, image_id).await {
                Attempt::Done => {
                    self.count("ok");
                    tracing::info!(image = %image_id, attempts = attempt + 1, "CDN purge accepted");
                    return true;
                }
                Attempt::Retry(why) => last = why,
                Attempt::Fail(why) => {
                    last = why;
                    break;
                }
            }
        }
        self.failed(image_id, "purge_failed");
        tracing::error!(image = %image_id, reason = %last, "CDN purge failed; the CDN may serve the image until its max-age ends");
        false
    }

    async fn attempt(&self, hook: &Hook, image_id: &str) -> Attempt {
        let nonce = crate::id::ImageId::generate()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let url = expand(&hook.url, image_id, &nonce);
        let body = expand(&hook.body, image_id, &nonce);
        let mut builder = Request::builder().method(hook.method.clone()).uri(&url);
        for (name, value) in hook.headers.load().iter() {
            builder = builder.header(name, value);
        }
        let req = match builder.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => return Attempt::Fail(format!("request: {e}")),
        };
        match tokio::time::timeout(hook.timeout, hook.client.request(req)).await {
            Err(_) => Attempt::Retry("timed out".into()),
            Ok(Err(e)) => Attempt::Retry(format!("connection: {e}")),
            Ok(Ok(resp)) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Done
                } else if status.is_server_error() || status.as_u16() == 429 {
                    Attempt::Retry(format!("status {status}"))
                } else {
                    // A 4xx other than 429 is a configuration error: retrying will not help.
                    Attempt::Fail(format!("status {status}"))
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics.cdn_purges.with_label_values(&[result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_headers() {
        assert_eq!(
            expand("https://api.fastly.com/service/S/purge/{key}", "ab12", "n1"),
            "https://api.fastly.com/service/S/purge/ab12"
        );
        assert_eq!(
            expand(
                r#"{"tags":["{key}"],"ref":"{nonce}","id":"{image_id}"}"#,
                "ab",
                "z"
            ),
            r#"{"tags":["ab"],"ref":"z","id":"ab"}"#
        );
        let PurgeHeader { name: n, value: v } = parse_header("Fastly-Key:  secret ").unwrap();
        assert_eq!(n.as_str(), "fastly-key");
        assert_eq!(v.to_str().unwrap(), "secret");
        assert!(v.is_sensitive());
        for bad in ["no colon", "bad name: x", ": x", "X: a\nb"] {
            assert!(parse_header(bad).is_none(), "{bad}");
        }
    }

    /// A hook endpoint answering the given statuses in order (the last repeats).
    async fn endpoint(statuses: Vec<u16>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                // The purges here have no body: the head is the whole request.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let status = statuses[n.min(statuses.len() - 1)];
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    async fn purge_against(statuses: Vec<u16>, attempts: u64) -> (bool, u64, u64, u64) {
        let port = endpoint(statuses).await;
        let cfg = CdnConfig {
            purge_url: format!("http://127.0.0.1:{port}/purge/{{key}}"),
            purge_attempts: attempts,
            purge_timeout_ms: 2_000,
            ..CdnConfig::default()
        };
        let metrics = Metrics::new().unwrap();
        let purger = CdnPurger::new(&cfg, metrics.clone()).unwrap();
        let accepted = purger.run("0123abcd").await;
        let result = |r: &str| metrics.cdn_purges.with_label_values(&[r]).get();
        (
            accepted,
            metrics.cdn_purge_attempts.get(),
            result("ok"),
            result("failed"),
        )
    }

    #[tokio::test]
    async fn retries_only_what_can_succeed_later() {
        // 429 and 5xx are retried until accepted.
        assert_eq!(purge_against(vec![429, 502, 200], 4).await, (true, 3, 1, 0));
        // Another 4xx is a configuration error: one attempt, counted as failed.
        assert_eq!(purge_against(vec![403, 200], 4).await, (false, 1, 0, 1));
        // The attempts are bounded.
        assert_eq!(purge_against(vec![503], 2).await, (false, 2, 0, 1));
        // Nothing listening: connection errors are retried, then given up.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = CdnConfig {
            purge_url: format!("http://127.0.0.1:{dead}/purge/{{key}}"),
            purge_attempts: 2,
            ..CdnConfig::default()
        };
        let metrics = Metrics::new().unwrap();
        let purger = CdnPurger::new(&cfg, metrics.clone()).unwrap();
        assert!(!purger.run("ab").await);
        assert_eq!(metrics.cdn_purge_attempts.get(), 2);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(9), Duration::from_secs(30));
    }
}
