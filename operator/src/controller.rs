//! The controller: every ProviderIntegration is validated and compiled with
//! the same `compile` as `sluice render`, its config written to a ConfigMap
//! it owns (where sidecars get it), and the outcome reported in its status
//! and as Events.
//!
//! A reconcile is two steps: [`plan`] decides what should exist from the
//! object and the cluster as the view sees it (pure, tested without a
//! cluster), and `apply` makes it so, writing only what differs, so a
//! restart or a resync makes no API writes.

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

use sluice_contract::config::IntegrationConfig;
use sluice_contract::layout::{self, CONFIG_KEY, config_map_name};

use crate::compile::{self, MountedSecrets};
use crate::metrics::{ControllerMetrics, ErrorLabels};
use crate::resource::{PodCounts, ProviderIntegration, ProviderIntegrationStatus};
use crate::view::ClusterView;

pub const FIELD_MANAGER: &str = "sluice-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
}

impl Error {
    /// The `reason` label of `sluice_operator_reconcile_errors_total`: a few
    /// fixed values, never the error's text.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::Kube(kube::Error::Api(status)) => match status.code {
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                500..=599 => "server_error",
                _ => "api_error",
            },
            Error::Kube(_) => "transport",
        }
    }
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
        .unwrap_or(layout::EGRESS_PORT)
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
    now: Time,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    // Keep the transition time when the status did not change.
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
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

/// What should exist for one ProviderIntegration.
pub struct Plan {
    /// The compiled config for the owned ConfigMap; `None` while the spec
    /// has problems (the ConfigMap keeps the last good config).
    pub config: Option<IntegrationConfig>,
    pub status: ProviderIntegrationStatus,
    /// An Event when the Ready condition's status or message changes.
    pub event: Option<Event>,
    /// When to look again without a change: problems may be fixed by a
    /// change to another integration.
    pub requeue: Option<Duration>,
}

/// Decides what should exist for `pi`, given the other integrations, its
/// pods and the status it has now. Pure: the clock is `now`.
pub fn plan(
    pi: &ProviderIntegration,
    others: &[Arc<ProviderIntegration>],
    schemas: &dyn compile::ConfigMaps,
    pods: PodCounts,
    current: Option<&ProviderIntegrationStatus>,
    now: Time,
) -> Plan {
    let generation = pi.metadata.generation;
    let compiled = compile::compile_with(pi, &MountedSecrets::in_pod(), schemas);
    let mut problems: Vec<String> = match &compiled {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
    };
    problems.extend(cross_checks(pi, others));
    let (config, ready, reason, message) = match compiled {
        Ok(config) if problems.is_empty() => {
            // Each pod enforces its share of the Cluster limits.
            let warnings = compile::cluster_share_problems(&config, pods.selected);
            let config = compile::share_cluster_limits(config, pods.selected);
            (Some(config), true, "Compiled", warnings.join("; "))
        }
        _ => (None, false, "Invalid", problems.join("; ")),
    };
    let previous = current.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let status = ProviderIntegrationStatus {
        observed_generation: generation,
        conditions: vec![condition(
            ready,
            reason,
            message.clone(),
            generation,
            previous,
            now,
        )],
        pods: Some(pods),
    };
    let changed = previous.map(|p| (p.status.as_str(), p.message.as_str()))
        != Some((if ready { "True" } else { "False" }, message.as_str()));
    let event = (changed && current != Some(&status)).then(|| {
        if ready {
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
        }
    });
    Plan {
        config,
        status,
        event,
        requeue: (!ready).then_some(Duration::from_secs(60)),
    }
}

/// Reconciles one ProviderIntegration: gathers what [`plan`] needs, then applies it.
pub async fn reconcile(pi: Arc<ProviderIntegration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let namespace = pi.namespace().ok_or(Error::NoNamespace)?;
    // Checks across objects need the whole list: a reconcile started by the
    // initial list may run before the controller's own store has it all.
    ctx.view.wait_until_ready().await;
    let others = ctx.view.integrations.state();
    let current = current_status(&ctx, &pi);
    let plan = plan(
        &pi,
        &others,
        &ctx.view.schemas_in(&namespace),
        ctx.view.pods_of(&pi),
        current.as_ref(),
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    apply(&ctx, &pi, &namespace, &others, current.as_ref(), &plan).await?;
    // A success ends the backoff: the next failure starts again at 1 s.
    ctx.failures
        .lock()
        .expect("failures lock")
        .remove(&object_key(&pi));
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after),
        // Nothing time-based to do: changes arrive through the watches.
        None => Action::await_change(),
    })
}

/// The status the object really has: the one we wrote, when our write was
/// based on this very version and the watch has not delivered it yet; else
/// the stored one.
fn current_status(ctx: &Context, pi: &ProviderIntegration) -> Option<ProviderIntegrationStatus> {
    let resource_version = pi.resource_version().unwrap_or_default();
    ctx.written
        .lock()
        .expect("written lock")
        .get(&instance_key(pi))
        .filter(|(version, _)| *version == resource_version)
        .map(|(_, status)| status.clone())
        .or_else(|| pi.status.clone())
}

/// Makes the plan so: the ConfigMap, the status and the Event, each only when it differs.
async fn apply(
    ctx: &Context,
    pi: &ProviderIntegration,
    namespace: &str,
    others: &[Arc<ProviderIntegration>],
    current: Option<&ProviderIntegrationStatus>,
    plan: &Plan,
) -> Result<(), Error> {
    let name = pi.name_any();
    if let Some(config) = &plan.config {
        apply_config_map(ctx, pi, namespace, &name, config).await?;
    }
    if current == Some(&plan.status) {
        return Ok(());
    }
    let api: Api<ProviderIntegration> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "ProviderIntegration",
        "status": plan.status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.writes.inc();
    let key = instance_key(pi);
    let resource_version = pi.resource_version().unwrap_or_default();
    tracing::info!(integration = %key, %resource_version, ready = plan.config.is_some(), "status written");
    {
        let mut written = ctx.written.lock().expect("written lock");
        written.insert(key, (resource_version, plan.status.clone()));
        // Forget deleted objects now and then, so the map stays the size of the store.
        if written.len() > 2 * others.len() + 64 {
            let live: std::collections::HashSet<String> =
                others.iter().map(|o| instance_key(o)).collect();
            written.retain(|k, _| live.contains(k));
        }
    }
    if let Some(event) = &plan.event
        && let Err(error) = ctx.recorder.publish(event, &pi.object_ref(&())).await
    {
        tracing::warn!(%error, integration = %name, "publishing an Event failed");
    }
    Ok(())
}

async fn apply_config_map(
    ctx: &Context,
    pi: &ProviderIntegration,
    namespace: &str,
    name: &str,
    config: &IntegrationConfig,
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
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            reason: error.reason(),
        })
        .inc();
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
    let api: Api<ProviderIntegration> = crate::view::api(&client, namespace.as_deref());
    let config_maps: Api<ConfigMap> = crate::view::api(&client, namespace.as_deref());
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let controller = Controller::new(api, watcher::Config::default().any_semantic()).owns(
        config_maps,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice"),
    );
    // Pods coming and going change status counts and Cluster shares; a
    // schema ConfigMap changing recompiles the integrations naming it. Both
    // come from the view's reflectors, so the view has the change first.
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

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn plan_compiles_shares_cluster_limits_and_reports_problems() {
        let mut pi = (*pi("carrier", 15001, "checkout", 100)).clone();
        pi.spec.rate_limits = serde_yaml_ng::from_str(
            "[{name: shared, rate: {requests: 100, per: 1m}, scope: Cluster}]",
        )
        .unwrap();
        let pods = PodCounts {
            selected: 4,
            injected: 3,
        };
        let ready = plan(
            &pi,
            &[],
            &compile::ConfigMapData::new(),
            pods.clone(),
            None,
            at(1000),
        );
        let config = ready.config.as_ref().expect("it compiles");
        assert_eq!(config.rate_limits[0].requests, 25, "a quarter each");
        assert_eq!(ready.status.pods, Some(pods.clone()));
        let condition = &ready.status.conditions[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "Compiled")
        );
        assert!(ready.event.is_some() && ready.requeue.is_none());

        // Unchanged: same status (the transition time kept), no new Event.
        let again = plan(
            &pi,
            &[],
            &compile::ConfigMapData::new(),
            pods.clone(),
            Some(&ready.status),
            at(2000),
        );
        assert_eq!(again.status, ready.status);
        assert!(again.event.is_none());

        // Broken: no config, the problems in the condition, a look again later.
        pi.spec.rate_limits[0].burst = Some(500);
        let broken = plan(
            &pi,
            &[],
            &compile::ConfigMapData::new(),
            pods,
            Some(&ready.status),
            at(3000),
        );
        assert!(broken.config.is_none());
        let condition = &broken.status.conditions[0];
        assert_eq!(condition.status, "False");
        assert!(
            condition.message.contains("spec.rateLimits[0].burst"),
            "{}",
            condition.message
        );
        assert_eq!(condition.last_transition_time, at(3000));
        assert!(broken.event.is_some());
        assert_eq!(broken.requeue, Some(Duration::from_secs(60)));
    }

    #[test]
    fn error_reasons_are_a_few_fixed_values() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        assert_eq!(api(409).reason(), "conflict");
        assert_eq!(api(503).reason(), "server_error");
        assert_eq!(Error::NoNamespace.reason(), "no_namespace");
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
