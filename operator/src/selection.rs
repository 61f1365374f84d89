//! Which pods an integration concerns: the opt-in label, the labels the
//! injector sets, and label-selector matching. The injector, the view, the
//! missed-pod watch and the controller all decide by these.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::resource::ProviderIntegration;

/// The label that opts a pod or a namespace in (`enabled`) or a pod out (`disabled`).
pub const INJECT_LABEL: &str = "sluice.dev/inject";
/// Set on injected pods: the operator watches them (and only them).
pub const INJECTED_LABEL: &str = "sluice.dev/injected";
/// ConfigMaps holding contract schemas (`schemaFrom`) carry it set to
/// `"true"`: the operator watches only those, not every ConfigMap.
pub const SCHEMA_LABEL: &str = "sluice.dev/schema";
/// The integrations a pod was injected with, comma-separated.
pub const INTEGRATIONS_ANNOTATION: &str = "sluice.dev/integrations";

/// Whether a pod asked for the sidecar: its label, else its namespace's.
pub fn opted_in(
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    match pod_labels.get(INJECT_LABEL).map(String::as_str) {
        Some("enabled") => true,
        Some(_) => false,
        None => namespace_labels
            .and_then(|l| l.get(INJECT_LABEL))
            .is_some_and(|v| v == "enabled"),
    }
}

/// Whether a label selector selects `labels`. An absent selector selects
/// nothing; `{}` selects every pod (as everywhere in Kubernetes).
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // The API server refuses other operators; select nothing if one slips by.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// The integrations of `namespace` that select a pod with `labels`, by name.
pub fn selecting<'a>(
    integrations: impl IntoIterator<Item = &'a ProviderIntegration>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a ProviderIntegration> {
    let mut selected: Vec<&ProviderIntegration> = integrations
        .into_iter()
        .filter(|pi| pi.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|pi| selector_matches(pi.spec.pod_selector.as_ref(), labels))
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selected
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels = BTreeMap::from([("app".to_owned(), "checkout".to_owned())]);
        assert!(!selector_matches(None, &labels), "absent selects nothing");
        assert!(selector_matches(Some(&LabelSelector::default()), &labels));
        let expr = |key: &str, op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        };
        assert!(selector_matches(
            Some(&expr("app", "In", &["checkout", "x"])),
            &labels
        ));
        assert!(!selector_matches(
            Some(&expr("app", "NotIn", &["checkout"])),
            &labels
        ));
        assert!(selector_matches(
            Some(&expr("tier", "DoesNotExist", &[])),
            &labels
        ));
        assert!(!selector_matches(
            Some(&expr("tier", "Exists", &[])),
            &labels
        ));
    }

    #[test]
    fn the_pod_label_wins_over_the_namespace_label() {
        let labels = |v: &str| BTreeMap::from([(INJECT_LABEL.to_owned(), v.to_owned())]);
        let none = BTreeMap::new();
        assert!(opted_in(&labels("enabled"), None));
        assert!(opted_in(&none, Some(&labels("enabled"))));
        assert!(!opted_in(&labels("disabled"), Some(&labels("enabled"))));
        assert!(!opted_in(&none, Some(&none)));
        assert!(!opted_in(&none, None));
    }
}
