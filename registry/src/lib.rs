//! The Wharf registry server: HTTP (axum) over the format adapters
//! (`wharf-formats`), the format-neutral core (`wharf-core`), the external
//! connections' client (`wharf-upstream`) and storage (`wharf-storage`). See
//! ARCHITECTURE.md for a walk through one publish and one install.

pub mod audit;
pub mod auth;
pub mod cluster;
pub mod collector;
pub mod oidc;
pub mod server;
pub mod startup;
pub mod token_review;
pub mod tokens;
