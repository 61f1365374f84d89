//! The controller: every ProviderIntegration is validated and compiled with
//! the same `compile` as `sluice render`, its config written to a ConfigMap
//! it owns (where sidecars get it), and the outcome reported in its status
//! and as Events. Writes happen only when something changed, so a restart
//! or a resync makes no API writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::compile::{self, MountedSecrets, POD_SECRETS_ROOT};
use crate::metrics::ControllerMetrics;
use crate::resource::{PodCounts, ProviderIntegration, ProviderIntegrationStatus};
use crate::view::ClusterView;

pub const FIELD_MANAGER: &str = "sluice-operator";
/// The key of the compiled config in the owned ConfigMap.
pub const CONFIG_KEY: &str = "integration.yaml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
}

/// What reconcile needs; shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub metrics: ControllerMetrics,
    pub recorder: Recorder,
    /// Every ProviderIntegration (checks across integrations) and the
    /// injected pods (status counts, Cluster limit shares).
    pub view: Arc<ClusterView>,
    /// Consecutive failed reconciles per object, for exponential backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The status this process last wrote per object (namespace/name/uid),
    /// with the resourceVersion it was based on: a reconcile triggered by our
    /// own write, racing the watch that reports it, must not write it again.
    pub written:
        std::sync::Mutex<std::collections::HashMap<String, (String, ProviderIntegrationStatus)>>,
}

fn object_key(pi: &ProviderIntegration) -> String {
    format!("{}/{}", pi.namespace().unwrap_or_default(), pi.name_any())
}

fn instance_key(pi: &ProviderIntegration) -> String {
    format!(
        "{}/{}",
        object_key(pi),
        pi.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// 1 s, 2 s, 4 s, ... up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(9)).min(Duration::from_secs(300))
}

/// The ConfigMap holding an integration's compiled config.
pub fn config_map_name(integration: &str) -> String {
    format!("sluice-{integration}")
}

/// Whether two selectors can select one pod: equal, or one's labels a subset
/// of the other's (an empty selector selects every pod).
fn may_overlap(a: &Option<LabelSelector>, b: &Option<LabelSelector>) -> bool {
    let labels = |s: &Option<LabelSelector>| {
        s.as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default()
    };
    let (a, b) = (labels(a), labels(b));
    let subset = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| {
        x.iter().all(|(k, v)| y.get(k) == Some(v))
    };
    subset(&a, &b) || subset(&b, &a)
}

fn port_of(pi: &ProviderIntegration) -> u16 {
    pi.spec
        .egress
        .as_ref()
        .and_then(|e| e.port)
        .unwrap_or(sluice_sidecar::config::DEFAULT_EGRESS_PORT)
}

/// Problems only visible across integrations: an egress port another
/// integration of the same pods already uses (the older one keeps it).
pub fn cross_checks(pi: &ProviderIntegration, others: &[Arc<ProviderIntegration>]) -> Vec<String> {
    let namespace = pi.namespace();
    let created = pi.metadata.creation_timestamp.clone();
    others
        .iter()
        .filter(|o| o.namespace() == namespace && o.name_any() != pi.name_any())
        .filter(|o| port_of(o) == port_of(pi) && may_overlap(&o.spec.pod_selector, &pi.spec.pod_selector))
        .filter(|o| match (&o.metadata.creation_timestamp, &created) {
            (Some(theirs), Some(ours)) => (theirs.0, o.name_any()) < (ours.0, pi.name_any()),
            _ => o.name_any() < pi.name_any(),
        })
        .map(|o| {
            format!(
                "spec.egress.port: {} is already used by ProviderIntegration {} for the same pods; choose another port",
                port_of(pi),
                o.name_any()
            )
        })
        .collect()
}

fn condition(
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&Condition>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    // Keep the transition time when the status did not change.
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Reconciles one ProviderIntegration.
pub async fn reconcile(pi: Arc<ProviderIntegration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let namespace = pi.namespace().ok_or(Error::NoNamespace)?;
    let name = pi.name_any();
    let generation = pi.metadata.generation;
    let compiled = compile::compile(
        &pi,
        &MountedSecrets {
            root: POD_SECRETS_ROOT.into(),
        },
    );
    // Checks across objects need the whole list: a reconcile started by the
    // initial list may run before the controller's own store has it all.
    ctx.view.wait_until_ready().await;
    let others = ctx.view.integrations.state();
    let mut problems: Vec<String> = match &compiled {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
    };
    problems.extend(cross_checks(&pi, &others));
    // Each pod enforces its share of the Cluster limits.
    let pods = ctx.view.live_pods(&pi);
    let compiled = compiled.map(|config| compile::share_cluster_limits(&pi, config, pods));
    let warnings = compile::cluster_share_problems(&pi, pods);

    // The status the object really has: the one we wrote, when our write was
    // based on this very version and the watch has not delivered it yet;
    // else the stored one.
    let key = instance_key(&pi);
    let resource_version = pi.resource_version().unwrap_or_default();
    let current = ctx
        .written
        .lock()
        .expect("written lock")
        .get(&key)
        .filter(|(version, _)| *version == resource_version)
        .map(|(_, status)| status.clone())
        .or_else(|| pi.status.clone());
    let previous = current
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let (ready, reason, message) = match (&compiled, problems.is_empty()) {
        (Ok(config), true) => {
            apply_config_map(&ctx, &pi, &namespace, &name, config).await?;
            (true, "Compiled", warnings.join("; "))
        }
        _ => (false, "Invalid", problems.join("; ")),
    };
    let desired = ProviderIntegrationStatus {
        observed_generation: generation,
        conditions: vec![condition(
            ready,
            reason,
            message.clone(),
            generation,
            previous,
        )],
        pods: Some(PodCounts {
            selected: pods,
            injected: pods,
            in_sync: None,
        }),
    };
    if current.as_ref() != Some(&desired) {
        let api: Api<ProviderIntegration> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "ProviderIntegration",
            "status": desired,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        ctx.metrics.writes.inc();
        tracing::info!(integration = %key, %resource_version, ready, "status written");
        {
            let mut written = ctx.written.lock().expect("written lock");
            written.insert(key.clone(), (resource_version.clone(), desired.clone()));
            // Forget deleted objects now and then, so the map stays the size of the store.
            if written.len() > 2 * others.len() + 64 {
                let live: std::collections::HashSet<String> =
                    others.iter().map(|o| instance_key(o)).collect();
                written.retain(|k, _| live.contains(k));
            }
        }
        if previous.map(|p| (p.status.as_str(), p.message.as_str()))
            != Some((if ready { "True" } else { "False" }, message.as_str()))
        {
            let event = if ready {
                Event {
                    type_: EventType::Normal,
                    reason: "Compiled".into(),
                    note: Some("the sidecar config is up to date".into()),
                    action: "Compile".into(),
                    secondary: None,
                }
            } else {
                Event {
                    type_: EventType::Warning,
                    reason: "Invalid".into(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "Compile".into(),
                    secondary: None,
                }
            };
            if let Err(error) = ctx.recorder.publish(&event, &pi.object_ref(&())).await {
                tracing::warn!(%error, integration = %name, "publishing an Event failed");
            }
        }
    }
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if ready {
        // Nothing time-based to do: changes arrive through the watches.
        Ok(Action::await_change())
    } else {
        // A clash with another integration may be resolved by a change to
        // that one; look again now and then.
        Ok(Action::requeue(Duration::from_secs(60)))
    }
}

async fn apply_config_map(
    ctx: &Context,
    pi: &ProviderIntegration,
    namespace: &str,
    name: &str,
    config: &sluice_sidecar::config::IntegrationConfig,
) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let cm_name = config_map_name(name);
    let yaml = serde_yaml_ng::to_string(config).expect("the config serializes");
    if let Some(existing) = api.get_opt(&cm_name).await?
        && existing.data.as_ref().and_then(|d| d.get(CONFIG_KEY)) == Some(&yaml)
        && existing
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == pi.metadata.uid.as_ref())
    {
        return Ok(());
    }
    let owner = pi
        .controller_owner_ref(&())
        .expect("a stored object has a uid");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            namespace: Some(namespace.to_owned()),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "sluice".to_owned(),
                ),
                ("sluice.dev/integration".to_owned(), name.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), yaml)])),
        ..ConfigMap::default()
    };
    api.patch(
        &cm_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    ctx.metrics.writes.inc();
    tracing::info!(integration = %name, config_map = %cm_name, "compiled config written");
    Ok(())
}

fn error_policy(pi: Arc<ProviderIntegration>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.inc();
    let failures = {
        let mut all = ctx.failures.lock().expect("failures lock");
        let count = all.entry(object_key(&pi)).or_insert(0);
        *count += 1;
        *count
    };
    let wait = backoff(failures - 1);
    tracing::warn!(%error, integration = %object_key(&pi), failures, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Runs the controller until the process is told to stop.
pub async fn run(
    client: Client,
    metrics: ControllerMetrics,
    namespace: Option<String>,
    view: Arc<ClusterView>,
) {
    let api: Api<ProviderIntegration> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config_maps: Api<ConfigMap> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let controller = Controller::new(api, watcher::Config::default().any_semantic()).owns(
        config_maps,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice"),
    );
    // Pods coming and going change status counts and Cluster shares.
    let (pod_events, pod_changes) = tokio::sync::mpsc::unbounded_channel();
    view.announce_pods_to(pod_events);
    let controller = controller.reconcile_on(futures_util::stream::unfold(
        pod_changes,
        |mut changes| async move { changes.recv().await.map(|change| (change, changes)) },
    ));
    let ctx = Arc::new(Context {
        view,
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        failures: Default::default(),
        written: Default::default(),
    });
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi(name: &str, port: u16, app: &str, created: i64) -> Arc<ProviderIntegration> {
        let mut pi: ProviderIntegration = serde_yaml_ng::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: ProviderIntegration\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  upstream: {{baseUrl: 'https://x'}}\n  egress: {{port: {port}}}\n"
        ))
        .unwrap();
        pi.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        Arc::new(pi)
    }

    #[test]
    fn the_newer_of_two_clashing_integrations_is_told() {
        let old = pi("carrier", 15001, "checkout", 100);
        let new = pi("payments", 15001, "checkout", 200);
        let elsewhere = pi("maps", 15001, "search", 300);
        let all = vec![old.clone(), new.clone(), elsewhere.clone()];
        assert!(
            cross_checks(&old, &all).is_empty(),
            "the older keeps its port"
        );
        let problems = cross_checks(&new, &all);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("spec.egress.port: 15001") && problems[0].contains("carrier"),
            "{problems:?}"
        );
        assert!(
            cross_checks(&elsewhere, &all).is_empty(),
            "other pods: no clash"
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }

    #[test]
    fn empty_selectors_overlap_everything() {
        let some = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "a".to_owned())])),
            ..LabelSelector::default()
        });
        assert!(may_overlap(&None, &some));
        assert!(may_overlap(&some, &some));
    }
}
