//! The formats: each one's names, versions, manifests, archives and
//! metadata documents (pure functions, no I/O and no HTTP types), and its
//! adapter for the core's read pipeline ([`adapters`]), which reads upstream
//! documents only through the core. The registry's handlers call these and
//! the core's pipelines.

pub mod adapters;
pub mod cargo;
pub mod generic;
pub mod go;
pub mod inflate;
pub mod inventory;
pub mod markup;
pub mod maven;
pub mod npm;
pub mod nuget;
pub mod pypi;
pub mod swift;
