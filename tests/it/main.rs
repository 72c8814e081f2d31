//! Integration tests: one binary, real `pixgate serve` processes on ephemeral ports, real
//! `redis-server` and real Garage (S3) started by [`harness`]. No fakes.

mod harness;

mod access;
mod animation;
mod audit;
mod caching;
mod cli;
mod clusters;
mod compat;
mod deploy;
mod edge;
mod faults;
mod fleet;
mod formats;
mod hardening;
mod identity;
mod images_api;
mod imgproxy;
mod import;
mod limits;
mod options;
mod server;
mod svg;
mod transform;
mod upload;
