//! Protocol adapters' pure halves: each format's names, versions, manifests
//! and archives, and its metadata documents. No I/O and no HTTP types; the
//! handlers in `server` call these and the core.

pub mod cargo;
pub mod generic;
pub mod go;
pub mod inflate;
pub mod maven;
pub mod npm;
pub mod pypi;
