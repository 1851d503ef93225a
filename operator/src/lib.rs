//! The Wharf operator: reconciles Domains, Repositories and UpstreamPolicies into one
//! registry Deployment per Domain. `resolve`, `render`, `conditions`, `scope` and `selector` are
//! pure; the controllers do the I/O.

pub mod conditions;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod resolve;
pub mod scope;
pub mod selector;

#[cfg(test)]
mod fixtures;
