//! pixgate — an on-the-fly image transform proxy that is safe to put on the internet.
//!
//! Code map (see `docs/architecture.md` for the full picture and invariants):
//!
//! - [`server`] accept loop, connection limit, timeouts, graceful shutdown
//! - [`http`] routing, handlers, and `finish`, the single exit for every response
//! - [`signature`] imgproxy-compatible HMAC URL signatures
//! - [`options`] URL grammar → typed, bounded [`options::TransformSpec`]
//! - [`auth`] bearer JWTs, principals and roles
//! - [`catalog`] image records (original + metadata) over [`storage`]
//! - [`fsck`] beside `catalog`: finds (and repairs) what interrupted writes left in [`storage`]
//! - [`storage`] the `ObjectStore` trait; `fs` and `s3` backends
//! - [`cache`] result caches: memory LRU, derived objects, single-flight
//! - [`render`] results through the caches; eager presets; purging an image everywhere
//! - [`cdn`] the CDN purge hook; [`outbound`] the HTTPS client it and the JWKS fetch share
//! - [`audit`] audit events: log stream, hash-chained archive with spool, queries, verify, sweep
//! - [`zipstream`] streaming ZIP writer (the GDPR export)
//! - [`workers`] the bounded CPU pool
//! - [`image`] pure image engine: probe, decode (shrink-on-load), resize, effects, encode
//! - `fuzzing` (hidden): the fuzz targets `fuzz/` and `tests/fuzz_smoke.rs` drive
//! - [`config`], [`error`], [`metrics`], [`id`], [`app`] (wiring)
//!
//! Invariants: `image` does no I/O; nothing touches storage before a signature or token is
//! verified; only `http` maps errors to statuses; a 2xx reports only completed durable writes.

pub mod app;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod cdn;
pub mod config;
pub mod error;
pub mod fsck;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod id;
pub mod image;
pub mod limits;
pub mod metrics;
pub mod options;
pub mod outbound;
pub mod render;
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
