//! Access beyond ownership: teams with members and roles, explicit shares of images and
//! collections, collections themselves, and the decision of how far a principal reaches an
//! image or a collection.
//!
//! Place in the architecture: a domain beside `catalog`, on `storage` only. It never reads image
//! metadata (callers pass the owner they read, so the catalog stays the authority on images)
//! and knows no HTTP. `http` asks it after `Principal::allow` (role and scope, `403`):
//! [`Access::image_level`] / [`Access::collection_level`] give a [`Level`]; `None` is answered
//! `404` like a missing resource, a level below the act `403`. `catalog::Catalog::delete`
//! calls [`account::detach_image`] so a deleted image leaves every collection.
//!
//! Files: `model.rs` (records, bounds, ids, errors; a leaf), `records.rs` (keys and JSON I/O),
//! `teams.rs`, `shares.rs`, `collections.rs` (each over the store, no caching), `resolve.rs`
//! (`Access`: the decision and its per-instance caches), `account.rs` (deletes spanning
//! records, erasure, export).

pub mod account;
pub mod collections;
pub mod model;
pub mod records;
pub mod resolve;
pub mod shares;
pub mod teams;

pub use model::{
    AccessError, Change, Collection, Grantee, Item, Level, Member, Resource, Share, ShareAccess,
    Team, TeamRole,
};
pub use resolve::Access;
