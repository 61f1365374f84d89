//! Pods that should have the sidecar and do not: opted in, selected by a
//! ProviderIntegration, created without it (the injector was down with
//! `failurePolicy: Ignore`, or the integration came after the pod). Each is
//! counted once and gets a Warning Event saying to restart it. Leader only.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::metrics::ControllerMetrics;
use crate::selection::{INJECTED_LABEL, opted_in, selecting};
use crate::view::ClusterView;

pub async fn run(
    client: Client,
    view: Arc<ClusterView>,
    watch_namespace: Option<String>,
    skip_namespaces: Vec<String>,
    metrics: ControllerMetrics,
) {
    // Watching one namespace, the operator reads only that one (its RBAC is
    // a Role there).
    let namespace_config = match &watch_namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (namespaces, writer) = reflector::store::<Namespace>();
    let namespace_watch = watcher(Api::<Namespace>::all(client.clone()), namespace_config)
        .default_backoff()
        .reflect(writer)
        .for_each(|_| async {});
    tokio::spawn(namespace_watch);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: crate::controller::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let pods = watcher(
        crate::view::api::<PartialObjectMeta<Pod>>(&client, watch_namespace.as_deref()),
        watcher::Config::default().labels(&format!("!{INJECTED_LABEL}")),
    )
    .default_backoff();
    let mut pods = std::pin::pin!(pods);
    let mut reported: HashSet<String> = HashSet::new();
    let _ = namespaces.wait_until_ready().await;
    view.wait_until_ready().await;
    while let Some(event) = pods.next().await {
        let pod: PartialObjectMeta<Pod> = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                reported.remove(pod.uid().as_deref().unwrap_or_default());
                continue;
            }
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "pod watch failed; retrying with backoff");
                continue;
            }
        };
        let namespace = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        if skip_namespaces.contains(&namespace)
            || pod.metadata.deletion_timestamp.is_some()
            || reported.contains(&uid)
        {
            continue;
        }
        let namespace_labels = namespaces
            .get(&ObjectRef::new(&namespace))
            .map(|ns| ns.labels().clone());
        if !opted_in(pod.labels(), namespace_labels.as_ref()) {
            continue;
        }
        let integrations = view.integrations.state();
        let selected: Vec<String> = selecting(
            integrations.iter().map(|p| p.as_ref()),
            &namespace,
            pod.labels(),
        )
        .iter()
        .map(|pi| pi.name_any())
        .collect();
        if selected.is_empty() {
            continue;
        }
        reported.insert(uid);
        metrics.injections_missed.inc();
        tracing::warn!(%namespace, pod = %pod.name_any(), integrations = %selected.join(","), "pod runs without the sidecar its integrations need");
        let event = Event {
            type_: EventType::Warning,
            reason: "NotInjected".into(),
            note: Some(format!(
                "selected by ProviderIntegration {} but created without the Sluice sidecar (the injector was unavailable, or the integration came later); restart the pod to inject it",
                selected.join(", ")
            )),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::warn!(%error, "publishing an Event failed");
        }
    }
}
