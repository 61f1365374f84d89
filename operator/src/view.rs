//! What every operator replica keeps in memory to answer admissions and
//! config polls without calling the API server: the ProviderIntegrations,
//! the ConfigMaps the controller wrote, and the injected pods. Reflectors
//! (list + watch) keep it current; every change bumps `changed`, which wakes
//! the sidecars' long polls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use sluice_contract::layout::{CONFIG_KEY, config_map_name};

use crate::compile::ConfigMapData;
use crate::resource::{PodCounts, ProviderIntegration};
use crate::selection::{
    INJECTED_LABEL, INTEGRATIONS_ANNOTATION, SCHEMA_LABEL, selecting, selector_matches,
};

pub struct ClusterView {
    pub integrations: Store<ProviderIntegration>,
    pub config_maps: Store<ConfigMap>,
    /// ConfigMaps labelled as contract schemas (`schemaFrom`).
    pub schemas: Store<ConfigMap>,
    pub injected_pods: Store<Pod>,
    changed: watch::Sender<u64>,
    /// True once every reflector has listed. (A Store's own readiness wakes
    /// one waiter only, so one task waits on it and tells everyone here.)
    listed: watch::Sender<bool>,
    /// Where pod and schema changes are announced to the controller, as the
    /// integrations they concern (leader only).
    pod_events: Mutex<Option<mpsc::UnboundedSender<ObjectRef<ProviderIntegration>>>>,
}

/// The cluster-wide API, or one namespace's when the operator watches one.
pub(crate) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl ClusterView {
    /// Starts the reflectors; the view fills as they list.
    pub fn start(client: Client, namespace: Option<&str>) -> Arc<Self> {
        let (integrations, pi_writer) = reflector::store();
        let (config_maps, cm_writer) = reflector::store();
        let (schemas, schema_writer) = reflector::store();
        let (injected_pods, pod_writer) = reflector::store();
        let (changed, _) = watch::channel(0);
        let (listed, _) = watch::channel(false);
        let view = Arc::new(Self {
            integrations,
            config_maps,
            schemas,
            injected_pods,
            changed,
            listed,
            pod_events: Mutex::new(None),
        });
        let pis = watcher(
            api::<ProviderIntegration>(&client, namespace),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(pi_writer);
        let cms = watcher(
            api::<ConfigMap>(&client, namespace),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice"),
        )
        .default_backoff()
        .reflect(cm_writer);
        let schema_maps = watcher(
            api::<ConfigMap>(&client, namespace),
            watcher::Config::default().labels(&format!("{SCHEMA_LABEL}=true")),
        )
        .default_backoff()
        .reflect(schema_writer);
        let pods = watcher(
            api::<Pod>(&client, namespace),
            watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true")),
        )
        .default_backoff()
        .modify(|pod| {
            // The view needs labels, annotations, phase and deletion only: drop the rest.
            pod.metadata.managed_fields = None;
            pod.spec = None;
            if let Some(status) = pod.status.as_mut() {
                status.container_statuses = None;
                status.init_container_statuses = None;
                status.conditions = None;
            }
        })
        .reflect(pod_writer);
        {
            let view = view.clone();
            tokio::spawn(async move {
                let _ = view.integrations.wait_until_ready().await;
                let _ = view.config_maps.wait_until_ready().await;
                let _ = view.schemas.wait_until_ready().await;
                let _ = view.injected_pods.wait_until_ready().await;
                view.listed.send_replace(true);
            });
        }
        tokio::spawn(drain(pis, view.clone(), |_, _| {}));
        tokio::spawn(drain(cms, view.clone(), |_, _| {}));
        tokio::spawn(drain(schema_maps, view.clone(), |view, cm: &ConfigMap| {
            view.announce_schema(cm)
        }));
        tokio::spawn(drain(pods, view.clone(), |view, pod: &Pod| {
            view.announce_pod(pod)
        }));
        view
    }

    /// The schema ConfigMaps of `namespace`, each its data.
    pub fn schemas_in(&self, namespace: &str) -> ConfigMapData {
        self.schemas
            .state()
            .iter()
            .filter(|cm| cm.namespace().as_deref() == Some(namespace))
            .map(|cm| (cm.name_any(), cm.data.clone().unwrap_or_default()))
            .collect()
    }

    /// A receiver that sees every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Returns once every reflector has listed.
    pub async fn wait_until_ready(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|done| *done).await;
    }

    /// From now on, pod changes are sent to `events` as the integrations they concern.
    pub fn announce_pods_to(&self, events: mpsc::UnboundedSender<ObjectRef<ProviderIntegration>>) {
        *self.pod_events.lock().expect("pod events lock") = Some(events);
    }

    fn announce_pod(&self, pod: &Pod) {
        let guard = self.pod_events.lock().expect("pod events lock");
        let Some(events) = guard.as_ref() else {
            return;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let all = self.integrations.state();
        for pi in selecting(all.iter().map(|p| p.as_ref()), &namespace, pod.labels()) {
            let _ = events.send(ObjectRef::from_obj(pi));
        }
    }

    /// Tells the controller which integrations take a schema from `cm`.
    fn announce_schema(&self, cm: &ConfigMap) {
        let guard = self.pod_events.lock().expect("pod events lock");
        let Some(events) = guard.as_ref() else {
            return;
        };
        let (namespace, name) = (cm.namespace(), cm.name_any());
        for pi in self.integrations.state() {
            let names_it = pi.spec.contracts.iter().any(|c| {
                c.schema_from
                    .as_ref()
                    .is_some_and(|from| from.config_map_key_ref.name == name)
            });
            if names_it && pi.namespace() == namespace {
                let _ = events.send(ObjectRef::from_obj(pi.as_ref()));
            }
        }
    }

    /// The live pods running the sidecar that `pi` selects (they get its
    /// config and share its Cluster limits), and of those the ones created
    /// with it. Live: not terminating, not finished. A pod not yet ready
    /// counts: it may send requests already, and counting it keeps the sum
    /// of Cluster shares under the limit.
    pub fn pods_of(&self, pi: &ProviderIntegration) -> PodCounts {
        count_pods(pi, self.injected_pods.state().iter().map(|p| p.as_ref()))
    }

    /// The compiled configs of the integrations that select a pod (those
    /// compiled so far), in name order.
    pub fn configs_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(String, String)> {
        let all = self.integrations.state();
        selecting(all.iter().map(|p| p.as_ref()), namespace, labels)
            .into_iter()
            .filter_map(|pi| {
                let name = pi.name_any();
                let cm = self
                    .config_maps
                    .get(&ObjectRef::new(&config_map_name(&name)).within(namespace))?;
                // Written for this very object (not a stale one of the same name).
                let owned = cm
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == pi.metadata.uid.as_ref());
                let yaml = cm.data.as_ref()?.get(CONFIG_KEY)?.clone();
                owned.then_some((name, yaml))
            })
            .collect()
    }
}

/// [`ClusterView::pods_of`] over any list of injected pods.
pub fn count_pods<'a>(
    pi: &ProviderIntegration,
    injected_pods: impl IntoIterator<Item = &'a Pod>,
) -> PodCounts {
    let namespace = pi.namespace().unwrap_or_default();
    let name = pi.name_any();
    let mut counts = PodCounts::default();
    for pod in injected_pods {
        let live = pod.metadata.deletion_timestamp.is_none()
            && !matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
        if !live
            || pod.namespace().as_deref() != Some(namespace.as_str())
            || !selector_matches(pi.spec.pod_selector.as_ref(), pod.labels())
        {
            continue;
        }
        counts.selected += 1;
        let injected_with = pod
            .annotations()
            .get(INTEGRATIONS_ANNOTATION)
            .is_some_and(|names| names.split(',').any(|n| n.trim() == name));
        if injected_with {
            counts.injected += 1;
        }
    }
    counts
}

/// Runs a reflector stream, bumping the change counter on every event.
async fn drain<K, S>(stream: S, view: Arc<ClusterView>, on_object: impl Fn(&ClusterView, &K))
where
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if let watcher::Event::Apply(obj)
                | watcher::Event::Delete(obj)
                | watcher::Event::InitApply(obj) = &event
                {
                    on_object(&view, obj);
                }
                view.changed.send_modify(|n| *n += 1);
            }
            Err(error) => tracing::warn!(%error, "watch failed; retrying with backoff"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &str, integrations: &str, phase: &str) -> Pod {
        serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, namespace: shop, labels: {labels}, annotations: {{sluice.dev/integrations: '{integrations}'}}}}\nstatus: {{phase: {phase}}}"
        ))
        .unwrap()
    }

    #[test]
    fn selected_pods_and_those_created_with_the_integration() {
        let pi: ProviderIntegration = serde_yaml_ng::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: ProviderIntegration\nmetadata: {name: carrier, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: checkout}}\n  upstream: {baseUrl: 'https://x.example'}\n",
        )
        .unwrap();
        let pods = [
            pod("a", "{app: checkout}", "carrier,payments", "Running"),
            // Injected before the integration selected it: config stream only.
            pod("b", "{app: checkout}", "payments", "Pending"),
            pod("c", "{app: checkout}", "carrier", "Succeeded"),
            pod("d", "{app: search}", "carrier", "Running"),
        ];
        assert_eq!(
            count_pods(&pi, &pods),
            PodCounts {
                selected: 2,
                injected: 1
            }
        );
    }
}
