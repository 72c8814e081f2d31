//! pixgate — an on-the-fly image transform proxy that is safe to put on the internet.
//!
//! Code map (see `docs/architecture.md` for the full picture and invariants):
//!
//! - [`server`] accept loop, connection limit, timeouts, graceful shutdown
//! - [`http`] routing, handlers, `finish` (the single exit for every response) and the one
//!   mapping of every module's error to the client's (`http::error`)
//! - [`signature`] imgproxy-compatible HMAC URL signatures
//! - [`options`] URL grammar → typed, bounded [`options::TransformSpec`]
//! - [`auth`] bearer JWTs, principals and roles
//! - [`catalog`] image records (original + metadata) over [`storage`]
//! - [`access`] beside `catalog`: teams, shares, collections, and how far a principal reaches
//!   an image or a collection (cached; changes sent on the [`fleet`] bus)
//! - [`fsck`] beside `catalog`: finds (and repairs) what interrupted writes left in [`storage`]
//! - [`import`] beside `fsck`: registers a bucket or directory of existing originals as images,
//!   through the upload's checks, resumably
//! - [`storage`] the `ObjectStore` trait; `fs` and `s3` backends
//! - [`cache`] result caches: memory LRU, derived objects, single-flight
//! - [`render`] the `Renderer`: results through the caches; eager presets; purging an image
//!   everywhere
//! - [`limits`] quotas and rate limits (Redis, or in-process); [`kv`] the Redis client (one
//!   node or a Cluster) it and [`fleet`] share
//! - [`fleet`] the fleet bus: deletes and revocations applied on every live instance
//! - [`cdn`] the CDN purge hook; [`outbound`] the HTTPS client it and the JWKS fetch share
//! - [`audit`] audit events: log stream, hash-chained archive with spool, queries, verify, sweep
//! - [`zipstream`] streaming ZIP writer (the GDPR export)
//! - [`workers`] the bounded CPU pool
//! - [`sandbox`] the decoder child AVIF and HEIC are decoded in (limits, seccomp), behind
//!   `image::isolated`
//! - [`image`] pure image engine: probe, decode (shrink-on-load), resize, effects, encode
//! - `fuzzing` (hidden): the fuzz targets `fuzz/` and `tests/fuzz_smoke.rs` drive
//! - [`config`] the loader; each section lives with its domain (`server::config`, …)
//! - [`reload`] secrets swapped on `SIGHUP`
//! - [`metrics`], [`id`], [`app`] (wiring)
//!
//! Invariants: `image` does no I/O; nothing touches storage before a signature or token is
//! verified; only `http` knows HTTP and maps errors to statuses; a 2xx reports only completed
//! durable writes; no import cycle between files and no function over 80 lines
//! (`.ci/shape.py`).

pub mod access;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod cdn;
pub mod config;
pub mod fleet;
pub mod fsck;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod id;
pub mod image;
pub mod import;
pub mod kv;
pub mod limits;
pub mod logsink;
pub mod metrics;
pub mod options;
pub mod outbound;
pub mod reload;
pub mod render;
pub mod sandbox;
pub mod server;
pub mod signature;
pub mod storage;
pub mod workers;
pub mod zipstream;

/// mimalloc for every binary linking pixgate (server, benchmarks, tests): image buffers of
/// several MB are freed and reallocated on every transform, and glibc serves those with
/// mmap/munmap — page faults plus cross-core TLB shootdowns that kept two workers from
/// scaling. mimalloc keeps them in per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    // mimalloc's option API (mimalloc.h), linked through libmimalloc-sys.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// Milliseconds before mimalloc returns freed pages to the OS. Its v3 default (1 s, ×10 for
/// arenas) kept a few hundred MB of freed decode buffers resident under steady misses; 10 ms
/// (v2's default) returns them while the next transform is still running, at no measured
/// cost in throughput (`docs/decoders.md`, "Resident memory").
pub const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Tunes the allocator for a long-running server; call once at start-up. An explicit
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
pub fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mimalloc's options are process-wide atomics, settable at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
}

/// The allocator's purge delay in force (milliseconds).
pub fn allocator_purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: a read of a process-wide option.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn the_purge_delay_is_set_on_the_option_mimalloc_reads() {
        super::tune_allocator();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                super::allocator_purge_delay_ms(),
                super::ALLOCATOR_PURGE_DELAY_MS
            );
        }
    }
}
