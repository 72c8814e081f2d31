//! Every metric name and help text, in one place. Names are part of the public contract.
//!
//! Labels are low-cardinality by construction: route names, status classes, cache layers,
//! error categories. Never user ids, image ids or IPs.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub const HTTP_REQUESTS_TOTAL: &str = "pixgate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "pixgate_http_request_duration_seconds";
pub const HTTP_RESPONSE_BYTES_TOTAL: &str = "pixgate_http_response_bytes_total";
pub const HTTP_ERRORS_TOTAL: &str = "pixgate_http_errors_total";
pub const INFLIGHT_REQUESTS: &str = "pixgate_inflight_requests";
pub const TRANSFORM_DURATION_SECONDS: &str = "pixgate_transform_duration_seconds";
pub const TRANSFORM_QUEUE_DEPTH: &str = "pixgate_transform_queue_depth";
pub const TRANSFORM_QUEUE_WAIT_SECONDS: &str = "pixgate_transform_queue_wait_seconds";
pub const TRANSFORM_ORIGINALS_BYTES: &str = "pixgate_transform_originals_bytes";
pub const TRANSFORM_ORIGINALS_WAITS_TOTAL: &str = "pixgate_transform_originals_waits_total";
pub const CACHE_REQUESTS_TOTAL: &str = "pixgate_cache_requests_total";
pub const CACHE_MEMORY_BYTES: &str = "pixgate_cache_memory_bytes";
pub const CONNECTIONS_OPEN: &str = "pixgate_connections_open";
pub const QUOTA_DECISIONS_TOTAL: &str = "pixgate_quota_decisions_total";
pub const LIMITER_FALLBACK_TOTAL: &str = "pixgate_limiter_fallback_total";
pub const LIMITER_DEGRADED: &str = "pixgate_limiter_degraded";
pub const REDIS_DURATION_SECONDS: &str = "pixgate_redis_duration_seconds";
pub const CACHE_EVICTIONS_TOTAL: &str = "pixgate_cache_evictions_total";
pub const CACHE_OVERSIZE_TOTAL: &str = "pixgate_cache_oversize_total";
pub const DERIVED_WRITES_TOTAL: &str = "pixgate_derived_writes_total";
pub const SINGLEFLIGHT_COALESCED_TOTAL: &str = "pixgate_singleflight_coalesced_total";
pub const EAGER_RENDERS_TOTAL: &str = "pixgate_eager_renders_total";
pub const CDN_PURGES_TOTAL: &str = "pixgate_cdn_purges_total";
pub const CDN_PURGE_ATTEMPTS_TOTAL: &str = "pixgate_cdn_purge_attempts_total";
pub const AUDIT_EVENTS_TOTAL: &str = "pixgate_audit_events_total";
pub const AUDIT_SPOOLED_EVENTS: &str = "pixgate_audit_spooled_events";
pub const AUDIT_DROPPED_TOTAL: &str = "pixgate_audit_dropped_total";
pub const AUDIT_BATCHES_TOTAL: &str = "pixgate_audit_batches_total";
pub const FLEET_INSTANCES: &str = "pixgate_fleet_instances";
pub const FLEET_BUS_UP: &str = "pixgate_fleet_bus_up";
pub const FLEET_EVENTS_TOTAL: &str = "pixgate_fleet_events_total";
pub const FLEET_ACK_SECONDS: &str = "pixgate_fleet_ack_seconds";
pub const FLEET_UNACKNOWLEDGED_TOTAL: &str = "pixgate_fleet_unacknowledged_total";
pub const DECODER_CRASHES_TOTAL: &str = "pixgate_decoder_crashes_total";

/// Redis calls on loopback take tens of microseconds; the deadline is tens of milliseconds.
const REDIS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Acknowledgements arrive in about a millisecond on a LAN; the wait is bounded at seconds.
const ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `{route, status_class}`
    pub http_requests: IntCounterVec,
    /// `{route}`
    pub http_duration: HistogramVec,
    /// `{route}`
    pub http_bytes_out: IntCounterVec,
    /// `{route, category}`
    pub http_errors: IntCounterVec,
    pub inflight: IntGauge,
    /// Actual computations only; cache hits never count.
    pub transform_duration: Histogram,
    pub queue_depth: IntGauge,
    pub queue_wait: Histogram,
    pub originals_bytes: IntGauge,
    pub originals_waits: IntCounter,
    /// `{layer, result}`
    pub cache_requests: IntCounterVec,
    pub cache_memory_bytes: IntGauge,
    pub connections: IntGauge,
    /// `{limiter, outcome}`: limiter `uploads|transforms|requests|ip|auth_failures`, outcome
    /// `allowed|refused|bypassed`.
    pub quota_decisions: IntCounterVec,
    /// Decisions made by the in-process limiter because Redis was unreachable.
    pub limiter_fallback: IntCounter,
    /// 1 while Redis is unreachable and limits are per instance.
    pub limiter_degraded: IntGauge,
    /// Round trip of each limiter call to Redis.
    pub redis_duration: Histogram,
    /// Memory-cache entries evicted to make room (least recently used first).
    pub cache_evictions: IntCounter,
    /// Results not admitted to memory because they are over `cache.max_item_bytes`.
    pub cache_oversize: IntCounter,
    /// `{result}`: `ok|error|dropped|discarded` background writes to the derived store.
    pub derived_writes: IntCounterVec,
    /// Requests that waited for an identical in-flight computation instead of starting one.
    pub singleflight_coalesced: IntCounter,
    /// `{result}`: `ok|error|skipped` eager preset renders after uploads.
    pub eager_renders: IntCounterVec,
    /// `{result}`: `ok|failed` CDN purge calls (after retries).
    pub cdn_purges: IntCounterVec,
    /// Every HTTP attempt of the CDN purge hook, retries included.
    pub cdn_purge_attempts: IntCounter,
    /// `{outcome}`: `success|failure` audit events emitted.
    pub audit_events: IntCounterVec,
    /// Audit events in sealed batches waiting in the local spool for the archive.
    pub audit_spooled: IntGauge,
    /// Audit events that reached the log stream but not the archive (queue or spool full).
    pub audit_dropped: IntCounter,
    /// `{result}`: `archived|failed` puts of audit batches.
    pub audit_batches: IntCounterVec,
    /// Live instances in the fleet registry (this one included), as of the last heartbeat.
    pub fleet_instances: IntGauge,
    /// 1 while this instance is subscribed to the fleet bus.
    pub fleet_bus_up: IntGauge,
    /// `{kind, outcome}`: fleet events `sent` by this instance or `applied` from others.
    pub fleet_events: IntCounterVec,
    /// From publishing an event to the last live instance's acknowledgement.
    pub fleet_ack: Histogram,
    /// Live instances that did not acknowledge an event within `fleet.ack_timeout_ms`.
    pub fleet_unacknowledged: IntCounter,
    /// Sandboxed decoder children (AVIF, HEIC) that crashed or were killed: each one a source
    /// answered `invalid_image`; brought up to date from `sandbox::crashes` at every scrape.
    pub decoder_crashes: IntCounter,
}

impl Metrics {
    // One metric per line: a table (name, help, labels, buckets), which rustfmt would spread
    // over five lines each.
    #[rustfmt::skip]
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        Ok(Metrics {
            http_requests: counter_vec(&r, HTTP_REQUESTS_TOTAL, "HTTP requests by route and status class.", &["route", "status_class"])?,
            http_duration: histogram_vec(&r, HTTP_REQUEST_DURATION_SECONDS, "Time from request head to response head, by route.", LATENCY_BUCKETS, &["route"])?,
            http_bytes_out: counter_vec(&r, HTTP_RESPONSE_BYTES_TOTAL, "Response body bytes sent, by route.", &["route"])?,
            http_errors: counter_vec(&r, HTTP_ERRORS_TOTAL, "Error responses by route and error category.", &["route", "category"])?,
            inflight: gauge(&r, INFLIGHT_REQUESTS, "Requests being processed.")?,
            transform_duration: histogram(&r, TRANSFORM_DURATION_SECONDS, "CPU time of actual transform computations (decode, resize, encode).", LATENCY_BUCKETS)?,
            queue_depth: gauge(&r, TRANSFORM_QUEUE_DEPTH, "CPU jobs waiting for or holding a worker.")?,
            queue_wait: histogram(&r, TRANSFORM_QUEUE_WAIT_SECONDS, "Time an admitted transform waited for a CPU worker.", LATENCY_BUCKETS)?,
            originals_bytes: gauge(&r, TRANSFORM_ORIGINALS_BYTES, "Bytes of originals reserved by queued and running CPU jobs (transform.originals_budget_mb).")?,
            originals_waits: counter(&r, TRANSFORM_ORIGINALS_WAITS_TOTAL, "CPU jobs that waited for room in the originals budget before fetching their original.")?,
            cache_requests: counter_vec(&r, CACHE_REQUESTS_TOTAL, "Cache lookups by layer and result.", &["layer", "result"])?,
            cache_memory_bytes: gauge(&r, CACHE_MEMORY_BYTES, "Bytes held by the memory cache.")?,
            connections: gauge(&r, CONNECTIONS_OPEN, "Open client connections.")?,
            quota_decisions: counter_vec(&r, QUOTA_DECISIONS_TOTAL, "Quota and rate-limit decisions by limiter and outcome.", &["limiter", "outcome"])?,
            limiter_fallback: counter(&r, LIMITER_FALLBACK_TOTAL, "Limiter decisions made in-process because Redis was unreachable.")?,
            limiter_degraded: gauge(&r, LIMITER_DEGRADED, "1 while Redis is unreachable and limits are enforced per instance.")?,
            redis_duration: histogram(&r, REDIS_DURATION_SECONDS, "Round-trip time of limiter calls to Redis.", REDIS_BUCKETS)?,
            cache_evictions: counter(&r, CACHE_EVICTIONS_TOTAL, "Memory-cache entries evicted to make room.")?,
            cache_oversize: counter(&r, CACHE_OVERSIZE_TOTAL, "Results not kept in memory because they exceed cache.max_item_bytes.")?,
            derived_writes: counter_vec(&r, DERIVED_WRITES_TOTAL, "Background writes of results to the derived store, by result.", &["result"])?,
            singleflight_coalesced: counter(&r, SINGLEFLIGHT_COALESCED_TOTAL, "Requests served by waiting for an identical in-flight computation.")?,
            eager_renders: counter_vec(&r, EAGER_RENDERS_TOTAL, "Eager preset renders after uploads, by result.", &["result"])?,
            cdn_purges: counter_vec(&r, CDN_PURGES_TOTAL, "CDN purge hook calls by final result.", &["result"])?,
            cdn_purge_attempts: counter(&r, CDN_PURGE_ATTEMPTS_TOTAL, "HTTP attempts of the CDN purge hook, retries included.")?,
            audit_events: counter_vec(&r, AUDIT_EVENTS_TOTAL, "Audit events emitted, by outcome.", &["outcome"])?,
            audit_spooled: gauge(&r, AUDIT_SPOOLED_EVENTS, "Audit events in the local spool, waiting for the archive.")?,
            audit_dropped: counter(&r, AUDIT_DROPPED_TOTAL, "Audit events that reached the log stream but not the archive (queue or spool full).")?,
            audit_batches: counter_vec(&r, AUDIT_BATCHES_TOTAL, "Audit batch puts to the archive, by result.", &["result"])?,
            fleet_instances: gauge(&r, FLEET_INSTANCES, "Live pixgate instances in the fleet registry, this one included.")?,
            fleet_bus_up: gauge(&r, FLEET_BUS_UP, "1 while this instance is subscribed to the fleet event bus.")?,
            fleet_events: counter_vec(&r, FLEET_EVENTS_TOTAL, "Fleet events sent by this instance or applied from others, by kind.", &["kind", "outcome"])?,
            fleet_ack: histogram(&r, FLEET_ACK_SECONDS, "Time from publishing a fleet event to the acknowledgement of every live instance.", ACK_BUCKETS)?,
            fleet_unacknowledged: counter(&r, FLEET_UNACKNOWLEDGED_TOTAL, "Live instances that did not acknowledge a fleet event in time.")?,
            decoder_crashes: counter(&r, DECODER_CRASHES_TOTAL, "Sandboxed decoder processes (AVIF, HEIC) that crashed or were killed on a source.")?,
            registry: r,
        })
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let crashes = crate::sandbox::crashes();
        if let Some(new) = crashes.checked_sub(self.decoder_crashes.get()) {
            self.decoder_crashes.inc_by(new);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Increments a gauge for as long as the guard lives (connections, in-flight requests).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(g: &IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `2xx`, `4xx`… for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Registers `metric` with `r` and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    registered(r, IntCounter::new(name, help)?)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    registered(r, IntGauge::new(name, help)?)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(r, Histogram::with_opts(opts)?)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(r, HistogramVec::new(opts, labels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::new().unwrap();
        m.http_requests
            .with_label_values(&["transform", "2xx"])
            .inc();
        m.http_duration
            .with_label_values(&["transform"])
            .observe(0.01);
        m.cache_requests.with_label_values(&["memory", "hit"]).inc();
        m.transform_duration.observe(0.05);
        let text = m.render();
        for name in [
            HTTP_REQUESTS_TOTAL,
            HTTP_REQUEST_DURATION_SECONDS,
            CACHE_REQUESTS_TOTAL,
            TRANSFORM_DURATION_SECONDS,
            INFLIGHT_REQUESTS,
            TRANSFORM_QUEUE_DEPTH,
            LIMITER_FALLBACK_TOTAL,
            LIMITER_DEGRADED,
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
