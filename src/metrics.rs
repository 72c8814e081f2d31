//! Every metric name and help text, in one place. Names are part of the public contract.
//!
//! Labels are low-cardinality by construction: route names, status classes, cache layers,
//! error categories. Never user ids, image ids or IPs.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub const HTTP_REQUESTS_TOTAL: &str = "pixgate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "pixgate_http_request_duration_seconds";
pub const HTTP_RESPONSE_BYTES_TOTAL: &str = "pixgate_http_response_bytes_total";
pub const HTTP_ERRORS_TOTAL: &str = "pixgate_http_errors_total";
pub const INFLIGHT_REQUESTS: &str = "pixgate_inflight_requests";
pub const TRANSFORM_DURATION_SECONDS: &str = "pixgate_transform_duration_seconds";
pub const TRANSFORM_QUEUE_DEPTH: &str = "pixgate_transform_queue_depth";
pub const TRANSFORM_QUEUE_WAIT_SECONDS: &str = "pixgate_transform_queue_wait_seconds";
pub const CACHE_REQUESTS_TOTAL: &str = "pixgate_cache_requests_total";
pub const CACHE_MEMORY_BYTES: &str = "pixgate_cache_memory_bytes";
pub const CONNECTIONS_OPEN: &str = "pixgate_connections_open";

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
    /// `{layer, result}`
    pub cache_requests: IntCounterVec,
    pub cache_memory_bytes: IntGauge,
    pub connections: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                HTTP_REQUESTS_TOTAL,
                "HTTP requests by route and status class.",
            ),
            &["route", "status_class"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_REQUEST_DURATION_SECONDS,
                "Time from request head to response head, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let http_bytes_out = IntCounterVec::new(
            Opts::new(
                HTTP_RESPONSE_BYTES_TOTAL,
                "Response body bytes sent, by route.",
            ),
            &["route"],
        )?;
        let http_errors = IntCounterVec::new(
            Opts::new(
                HTTP_ERRORS_TOTAL,
                "Error responses by route and error category.",
            ),
            &["route", "category"],
        )?;
        let inflight = IntGauge::new(INFLIGHT_REQUESTS, "Requests being processed.")?;
        let transform_duration = Histogram::with_opts(
            HistogramOpts::new(
                TRANSFORM_DURATION_SECONDS,
                "CPU time of actual transform computations (decode, resize, encode).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let queue_depth = IntGauge::new(
            TRANSFORM_QUEUE_DEPTH,
            "CPU jobs waiting for or holding a worker.",
        )?;
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                TRANSFORM_QUEUE_WAIT_SECONDS,
                "Time an admitted transform waited for a CPU worker.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new(CACHE_REQUESTS_TOTAL, "Cache lookups by layer and result."),
            &["layer", "result"],
        )?;
        let cache_memory_bytes =
            IntGauge::new(CACHE_MEMORY_BYTES, "Bytes held by the memory cache.")?;
        let connections = IntGauge::new(CONNECTIONS_OPEN, "Open client connections.")?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(http_bytes_out.clone()))?;
        registry.register(Box::new(http_errors.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(transform_duration.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_memory_bytes.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_duration,
            http_bytes_out,
            http_errors,
            inflight,
            transform_duration,
            queue_depth,
            queue_wait,
            cache_requests,
            cache_memory_bytes,
            connections,
        })
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
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
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
