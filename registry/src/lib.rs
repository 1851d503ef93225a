//! The Wharf registry: HTTP (axum) → format adapters → a format-neutral
//! core → storage on `object_store`. See ARCHITECTURE.md for a walk
//! through one publish and one install.

pub mod auth;
pub mod backends;
pub mod cluster;
pub mod core;
pub mod formats;
pub mod logging;
pub mod secrets;
pub mod server;
pub mod startup;
pub mod storage;
pub mod token_review;
pub mod upstream;
