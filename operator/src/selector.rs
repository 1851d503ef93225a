//! Label selector matching (`matchLabels` and `matchExpressions`), for a Domain's
//! `repositoryNamespaces` selector. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy the selector. An empty selector matches everything, as in
/// Kubernetes; an expression with an unknown operator matches nothing, so a typo never
/// admits more than intended.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key).is_some_and(|actual| actual == value));
    let expressions_match = selector.match_expressions.iter().flatten().all(|expression| {
        let actual = labels.get(&expression.key);
        let values = expression.values.as_deref().unwrap_or_default();
        match expression.operator.as_str() {
            "In" => actual.is_some_and(|actual| values.contains(actual)),
            "NotIn" => actual.is_none_or(|actual| !values.contains(actual)),
            "Exists" => actual.is_some(),
            "DoesNotExist" => actual.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|value| value.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let team = labels(&[("wharf.dev/domain", "acme"), ("tier", "prod")]);
        assert!(matches(&LabelSelector::default(), &team));
        let by_label =
            LabelSelector { match_labels: Some(labels(&[("wharf.dev/domain", "acme")])), ..LabelSelector::default() };
        assert!(matches(&by_label, &team));
        assert!(!matches(&by_label, &labels(&[("wharf.dev/domain", "other")])));
        assert!(!matches(&by_label, &labels(&[])));

        let with = |expressions| LabelSelector { match_expressions: Some(expressions), ..LabelSelector::default() };
        assert!(matches(&with(vec![expression("tier", "In", &["prod", "dev"])]), &team));
        assert!(!matches(&with(vec![expression("tier", "NotIn", &["prod"])]), &team));
        assert!(matches(&with(vec![expression("tier", "NotIn", &["prod"])]), &labels(&[])));
        assert!(matches(&with(vec![expression("tier", "Exists", &[])]), &team));
        assert!(!matches(&with(vec![expression("tier", "DoesNotExist", &[])]), &team));
        assert!(!matches(&with(vec![expression("tier", "Matches", &["prod"])]), &team));
    }
}
