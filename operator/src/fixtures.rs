//! Test fixtures: Wharf objects from YAML, as the controllers' caches hold them. Pure.

#![allow(clippy::unwrap_used)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use wharf_api::{Domain, Repository, UpstreamPolicy, WharfResource};

/// The objects of a multi-document YAML text, by kind, in order.
pub struct Objects {
    pub domains: Vec<Domain>,
    pub repositories: Vec<Repository>,
    pub policies: Vec<UpstreamPolicy>,
}

/// Parses `yaml`; each object gets a uid and a creation time one second after the previous
/// one, as if they were applied in order.
pub fn objects(yaml: &str) -> Objects {
    let mut objects = Objects { domains: Vec::new(), repositories: Vec::new(), policies: Vec::new() };
    for (index, document) in wharf_api::parse_documents("fixture", yaml).unwrap().into_iter().enumerate() {
        let stamp = |metadata: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            metadata.uid = Some(format!("uid-{index}"));
            metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000 + index as i64).unwrap()));
            metadata.generation = Some(1);
        };
        match document.resource {
            WharfResource::Domain(mut domain) => {
                stamp(&mut domain.metadata);
                objects.domains.push(*domain);
            }
            WharfResource::Repository(mut repository) => {
                stamp(&mut repository.metadata);
                objects.repositories.push(*repository);
            }
            WharfResource::UpstreamPolicy(mut policy) => {
                stamp(&mut policy.metadata);
                objects.policies.push(*policy);
            }
        }
    }
    objects
}
