//! Why a package is served the way it is: the origin report of the
//! management API, built from the same decisions the pipelines take
//! ([`crate::policy`]), so the two cannot drift apart.

use serde_json::{Value, json};

use crate::policy::{self, Decided};
use crate::{CoreError, PackageId, Packages};

/// A restriction and the rule that set it.
fn decided_restriction(decided: &Decided<Option<wharf_api::Restriction>>) -> Value {
    json!({"restriction": decided.value, "source": decided.source})
}

impl Packages {
    /// The effective origin configuration of a package in `repo` and what
    /// produced each part: the chain searched, the external connection, each
    /// UpstreamPolicy setting with its rule, the name's first-version
    /// origin, and the verdicts for publishing here and fetching from
    /// outside. The origin record is per Domain: one made in a Repository
    /// `readable` refuses is left out, so that the answer for a private name
    /// is the answer for a name nobody used (and names no Repository the
    /// caller cannot see).
    pub async fn origin_report(
        &self,
        repo: &str,
        id: &PackageId,
        readable: impl Fn(&str) -> bool,
    ) -> Result<Value, CoreError> {
        let effective = policy::evaluate(&self.config, repo, id);
        let chain = policy::resolution_order(&self.config, repo);
        let first = self.registry.package_origin(id).await?.filter(|origin| readable(&origin.repository));
        let blocked: Vec<_> = effective
            .blocked_versions
            .iter()
            .map(|b| json!({"entry": b.value.to_string(), "source": b.source}))
            .collect();
        Ok(json!({
            "repository": repo,
            "format": id.format.as_str(),
            "package": id.name,
            "chain": chain.repositories,
            "externalConnection": chain.external(id.format).map(|hop| json!({
                "name": hop.connection.name,
                "url": hop.connection.url,
                "heldBy": hop.holder,
            })),
            "publish": decided_restriction(&effective.publish),
            "externalUpstream": decided_restriction(&effective.external_upstream),
            "internalUpstream": decided_restriction(&effective.internal_upstream),
            "minimumReleaseAge": {
                "value": effective.minimum_release_age.value.map(wharf_api::format_duration),
                "source": effective.minimum_release_age.source,
            },
            "blockedVersions": blocked,
            "metadataTTL": {
                "value": wharf_api::format_duration(effective.metadata_ttl.value),
                "source": effective.metadata_ttl.source,
            },
            "firstVersionOrigin": first,
            "effective": {
                "publish": policy::may_publish(&effective, first.as_ref(), repo),
                "externalUpstream": policy::may_fetch_external(&effective, first.as_ref(), repo),
            },
        }))
    }
}
