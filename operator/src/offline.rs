//! `sluice inject -f`: the injector applied to manifests on disk, for
//! GitOps. The same [`crate::inject::inject`] as the admission webhook; the
//! ProviderIntegrations come from the same files.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use crate::inject::{self, InjectorSettings};
use crate::resource::ProviderIntegration;
use crate::selection::INJECT_LABEL;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {index}: not YAML: {message}")]
    Yaml { index: usize, message: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(*key))
}

fn describe(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    format!("{}/{name}", kind.to_ascii_lowercase())
}

/// Injects every workload of `texts` (YAML streams) that a
/// ProviderIntegration of the same files selects. Returns all documents
/// (workloads changed, the rest as they were, as YAML) and one line per
/// workload saying what happened.
pub fn inject_documents(
    texts: &[String],
    settings: &InjectorSettings,
) -> Result<(String, Vec<String>), OfflineError> {
    let mut docs: Vec<Value> = Vec::new();
    for text in texts {
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let index = docs.len() + 1;
            let value = Value::deserialize(document).map_err(|e| OfflineError::Yaml {
                index,
                message: e.to_string(),
            })?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    let integrations: Vec<ProviderIntegration> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "ProviderIntegration"
                && d["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("sluice.dev/"))
        })
        .map(|d| {
            serde_json::from_value(d.clone()).map_err(|e| OfflineError::Invalid {
                what: describe(d),
                message: e.to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    let mut report = Vec::new();
    for doc in &mut docs {
        let Some(path) = doc["kind"].as_str().and_then(template_path) else {
            continue;
        };
        let what = describe(doc);
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let Some(template) = at_mut(doc, path) else {
            report.push(format!("{what}: no pod template; left as is"));
            continue;
        };
        let invalid = |message: String| OfflineError::Invalid {
            what: what.clone(),
            message,
        };
        let mut meta: ObjectMeta =
            serde_json::from_value(template.get("metadata").cloned().unwrap_or(Value::Null))
                .map_err(|e| invalid(format!("metadata: {e}")))?;
        let mut spec: PodSpec =
            serde_json::from_value(template.get("spec").cloned().unwrap_or(Value::Null))
                .map_err(|e| invalid(format!("spec: {e}")))?;
        let labels = meta.labels.clone().unwrap_or_default();
        if labels.get(INJECT_LABEL).map(String::as_str) == Some("disabled") {
            report.push(format!("{what}: {INJECT_LABEL}: disabled; left as is"));
            continue;
        }
        let selected = inject::selecting(&integrations, &namespace, &labels);
        if inject::is_injected(&spec) {
            report.push(format!("{what}: already has the sidecar"));
            continue;
        }
        if !inject::inject(&mut meta, &mut spec, &selected, settings) {
            report.push(format!("{what}: no ProviderIntegration selects its pods"));
            continue;
        }
        let object = template
            .as_object_mut()
            .ok_or_else(|| invalid("the pod template is not a mapping".into()))?;
        object.insert(
            "metadata".into(),
            serde_json::to_value(&meta).expect("serializes"),
        );
        object.insert(
            "spec".into(),
            serde_json::to_value(&spec).expect("serializes"),
        );
        let names: Vec<&str> = selected
            .iter()
            .filter_map(|pi| pi.metadata.name.as_deref())
            .collect();
        report.push(format!("{what}: injected ({})", names.join(", ")));
    }
    let output = docs
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("JSON values serialize"))
        .collect::<Vec<_>>()
        .join("---\n");
    Ok((output, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: &str = "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: carrier, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  upstream: {baseUrl: 'https://api.carrier.example'}
  auth: {bearer: {secretRef: {name: carrier-token, key: token}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: checkout, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  template:
    metadata: {labels: {app: checkout}}
    spec:
      containers: [{name: app, image: shop/checkout}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: shop}
spec:
  schedule: '0 3 * * *'
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: checkout}}
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: shop/nightly}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: search, namespace: shop}
spec:
  selector: {matchLabels: {app: search}}
  template:
    metadata: {labels: {app: search}}
    spec:
      containers: [{name: app, image: shop/search}]
---
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: shop}
spec: {ports: [{port: 80}]}
";

    #[test]
    fn injects_selected_workloads_and_leaves_the_rest() {
        let settings = InjectorSettings::new("sidecar:test");
        let (output, report) = inject_documents(&[FILES.to_owned()], &settings).unwrap();
        assert_eq!(
            report,
            [
                "deployment/checkout: injected (carrier)",
                "cronjob/nightly: injected (carrier)",
                "deployment/search: no ProviderIntegration selects its pods",
            ]
        );
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&output)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 5);
        let deployment = &docs[1]["spec"]["template"];
        assert_eq!(
            deployment["spec"]["initContainers"][0]["name"],
            "sluice-sidecar"
        );
        assert_eq!(
            deployment["spec"]["initContainers"][0]["restartPolicy"],
            "Always"
        );
        assert_eq!(
            deployment["spec"]["containers"][0]["env"][0]["name"],
            "SLUICE_CARRIER_URL"
        );
        let volumes = deployment["spec"]["volumes"].as_array().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"] == "carrier-token")
        );
        let cron = &docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(cron["initContainers"][0]["name"], "sluice-sidecar");
        assert_eq!(cron["restartPolicy"], "OnFailure");
        assert!(docs[3]["spec"]["template"]["spec"]["initContainers"].is_null());

        // Running it again on its own output changes nothing more.
        let (again, report) = inject_documents(std::slice::from_ref(&output), &settings).unwrap();
        assert_eq!(again, output);
        assert_eq!(report[0], "deployment/checkout: already has the sidecar");
    }
}
