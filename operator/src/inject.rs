//! The injector's core: which ProviderIntegrations select a pod, and the pod
//! spec with the sidecar added. Pure, shared by the admission webhook and
//! `sluice inject -f`.
//!
//! The sidecar runs as a native sidecar (an init container with
//! `restartPolicy: Always`): it is up before the app's containers start and
//! stops after them, and a Job's pod still completes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use sluice_contract::config::defaults;
use sluice_contract::layout::{
    self, ADMIN_PORT, CONFIG_DIR, CONFIG_KEY, EGRESS_PORT, STATE_DIR, TOKEN_AUDIENCE, TOKEN_DIR,
    WEBHOOK_PORT, config_map_name,
};

use crate::compile::{self, SecretPaths};
use crate::resource::{ProviderIntegration, SecretKeyRef};
pub use crate::selection::{INJECT_LABEL, INJECTED_LABEL, INTEGRATIONS_ANNOTATION, selecting};

pub const SIDECAR_NAME: &str = "sluice-sidecar";
/// The sidecar's user: not root, as Pod Security `restricted` asks.
pub const SIDECAR_UID: i64 = 65532;

/// How sidecars are made: the operator's flags or the chart's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectorSettings {
    pub image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The operator's config stream; without it sidecars follow their
    /// mounted ConfigMaps only (the kubelet refreshes them in about a minute).
    #[serde(default)]
    pub config_server: Option<ConfigServer>,
    #[serde(default = "default_cpu_request")]
    pub cpu_request: String,
    #[serde(default = "default_memory_request")]
    pub memory_request: String,
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
    /// None: no CPU limit (the sidecar is throttled only by its workers).
    #[serde(default)]
    pub cpu_limit: Option<String>,
    #[serde(default = "default_ephemeral_storage_request")]
    pub ephemeral_storage_request: String,
    #[serde(default = "default_ephemeral_storage_limit")]
    pub ephemeral_storage_limit: String,
    /// Each webhook queue's bound (the sidecar's `--max-queue-bytes`).
    #[serde(default = "defaults::max_queue_bytes")]
    pub webhook_queue_bytes: u64,
    /// Tokio worker threads of the sidecar; match the CPU limit you give it.
    #[serde(default = "default_workers")]
    pub workers: u16,
    /// Shared state for every injected sidecar (the chart's `sharedState`).
    #[serde(default)]
    pub shared_state: Option<SharedStateSettings>,
}

/// Where injected sidecars share Cluster limits and webhooks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedStateSettings {
    /// `redis://host:port/db` or `rediss://`, without the password.
    pub url: String,
    /// A Secret in each injected pod's namespace whose key `password` is
    /// the password; mounted read-only, never put in the environment.
    #[serde(default)]
    pub password_secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigServer {
    /// `https://sluice-operator.sluice-system.svc:9443`
    pub url: String,
    /// PEM of the CA that signs the operator's serving certificate.
    pub ca_pem: String,
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_cpu_request() -> String {
    "50m".into()
}
fn default_memory_request() -> String {
    "32Mi".into()
}
fn default_memory_limit() -> String {
    "128Mi".into()
}
fn default_ephemeral_storage_request() -> String {
    "16Mi".into()
}
fn default_ephemeral_storage_limit() -> String {
    "128Mi".into()
}
fn default_workers() -> u16 {
    1
}

impl InjectorSettings {
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: default_pull_policy(),
            config_server: None,
            cpu_request: default_cpu_request(),
            memory_request: default_memory_request(),
            memory_limit: default_memory_limit(),
            cpu_limit: None,
            ephemeral_storage_request: default_ephemeral_storage_request(),
            ephemeral_storage_limit: default_ephemeral_storage_limit(),
            webhook_queue_bytes: defaults::max_queue_bytes(),
            workers: default_workers(),
            shared_state: None,
        }
    }
}

/// Records the Secrets `compile` asks for: exactly the ones to mount.
struct RecordingSecrets(std::cell::RefCell<BTreeSet<String>>);

impl SecretPaths for RecordingSecrets {
    fn path_of(&self, reference: &SecretKeyRef) -> Option<std::path::PathBuf> {
        self.0.borrow_mut().insert(reference.name.clone());
        Some(layout::secret_path(
            std::path::Path::new(layout::SECRETS_ROOT),
            &reference.name,
            &reference.key,
        ))
    }
}

/// The Secrets an integration references (whether or not it compiles).
pub fn referenced_secrets(pi: &ProviderIntegration) -> BTreeSet<String> {
    let recorder = RecordingSecrets(Default::default());
    let _ = compile::compile(pi, &recorder);
    recorder.0.into_inner()
}

/// `SLUICE_<NAME>_URL`: the name upper-cased, `-` and `.` as `_`.
pub fn url_env_name(integration: &str) -> String {
    let name: String = integration
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("SLUICE_{name}_URL")
}

/// A volume name (a DNS label) for a Secret's volume; long names are hashed.
fn secret_volume_name(secret: &str) -> String {
    let name = format!("sluice-secret-{secret}");
    if name.len() <= 63 {
        return name;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "sluice-secret-{}-{hex}",
        &secret[..30].trim_end_matches(['-', '.'])
    )
}

/// The state volume's `sizeLimit`: every webhook queue full, plus an eighth
/// for dead letters, cursors and de-duplication logs, plus 32 MiB.
fn state_volume_limit(selected: &[&ProviderIntegration], queue_bytes: u64) -> Quantity {
    const MIB: u64 = 1 << 20;
    let webhooks: u64 = selected
        .iter()
        .map(|pi| pi.spec.webhooks.len() as u64)
        .sum();
    let queues = webhooks.saturating_mul(queue_bytes);
    let bytes = queues.saturating_add(queues / 8).saturating_add(32 * MIB);
    Quantity(format!("{}Mi", bytes.div_ceil(MIB)))
}

fn sidecar_resources(settings: &InjectorSettings) -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    let mut limits = BTreeMap::from([
        ("memory".to_owned(), quantity(&settings.memory_limit)),
        (
            "ephemeral-storage".to_owned(),
            quantity(&settings.ephemeral_storage_limit),
        ),
    ]);
    if let Some(cpu) = &settings.cpu_limit {
        limits.insert("cpu".to_owned(), quantity(cpu));
    }
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(&settings.cpu_request)),
            ("memory".to_owned(), quantity(&settings.memory_request)),
            (
                "ephemeral-storage".to_owned(),
                quantity(&settings.ephemeral_storage_request),
            ),
        ])),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

/// Whether the pod already has the sidecar (injection is idempotent).
pub fn is_injected(spec: &PodSpec) -> bool {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == SIDECAR_NAME)
}

/// Adds the sidecar for `selected` to a pod's metadata and spec. Returns
/// `false` (and changes nothing) when there is nothing to do: no
/// integration selects the pod, or it already has the sidecar.
pub fn inject(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    selected: &[&ProviderIntegration],
    settings: &InjectorSettings,
) -> bool {
    if selected.is_empty() || is_injected(spec) {
        return false;
    }
    let names: Vec<String> = selected
        .iter()
        .map(|pi| pi.metadata.name.clone().unwrap_or_default())
        .collect();
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(INJECTED_LABEL.into(), "true".into());
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(INTEGRATIONS_ANNOTATION.into(), names.join(","));

    let secrets: BTreeSet<String> = selected
        .iter()
        .flat_map(|pi| referenced_secrets(pi))
        .collect();
    let has_webhooks = selected.iter().any(|pi| !pi.spec.webhooks.is_empty());

    let mut volumes = vec![
        Volume {
            name: "sluice-config".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    names
                        .iter()
                        .map(|name| VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: config_map_name(name),
                                items: Some(vec![KeyToPath {
                                    key: CONFIG_KEY.into(),
                                    path: format!("{name}.yaml"),
                                    ..KeyToPath::default()
                                }]),
                                // Not compiled yet (or invalid): the stream brings it later.
                                optional: Some(true),
                            }),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                ),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "sluice-state".into(),
            // Bounded, so a filling queue meets its own 503s before the
            // kubelet's eviction, and the scheduler knows what it takes.
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(state_volume_limit(selected, settings.webhook_queue_bytes)),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "sluice-config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "sluice-state".into(),
            mount_path: STATE_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    for secret in &secrets {
        let volume = secret_volume_name(secret);
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                // Mounted into the sidecar alone; its non-root user must read it.
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{}/{secret}", layout::SECRETS_ROOT),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let mut args = vec![
        format!("--config-dir={CONFIG_DIR}"),
        format!("--admin-listen=0.0.0.0:{ADMIN_PORT}"),
        format!("--webhook-listen=0.0.0.0:{WEBHOOK_PORT}"),
        format!("--state-dir={STATE_DIR}"),
        format!("--max-queue-bytes={}", settings.webhook_queue_bytes),
        format!("--workers={}", settings.workers),
    ];
    let mut env = Vec::new();
    if let Some(server) = &settings.config_server {
        volumes.push(Volume {
            name: "sluice-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "sluice-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        args.push(format!("--config-server={}", server.url));
        args.push(format!("--config-token-file={TOKEN_DIR}/token"));
        env.push(EnvVar {
            name: "SLUICE_CONFIG_CA".into(),
            value: Some(server.ca_pem.clone()),
            value_from: None,
        });
    }
    if let Some(shared) = &settings.shared_state {
        env.push(EnvVar {
            name: "SLUICE_SHARED_STATE".into(),
            value: Some(shared.url.clone()),
            value_from: None,
        });
        // The pod's name: this sidecar's consumer name among the others.
        env.push(EnvVar {
            name: "SLUICE_POD_NAME".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
        });
        if let Some(secret) = &shared.password_secret {
            volumes.push(Volume {
                name: "sluice-shared-state".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    items: Some(vec![KeyToPath {
                        key: layout::SHARED_STATE_PASSWORD_KEY.into(),
                        path: layout::SHARED_STATE_PASSWORD_KEY.into(),
                        ..KeyToPath::default()
                    }]),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "sluice-shared-state".into(),
                mount_path: layout::SHARED_STATE_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            env.push(EnvVar {
                name: "SLUICE_SHARED_STATE_PASSWORD_FILE".into(),
                value: Some(format!(
                    "{}/{}",
                    layout::SHARED_STATE_DIR,
                    layout::SHARED_STATE_PASSWORD_KEY
                )),
                value_from: None,
            });
        }
    }
    let mut ports = vec![ContainerPort {
        name: Some("sluice-admin".into()),
        container_port: ADMIN_PORT.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    if has_webhooks {
        ports.push(ContainerPort {
            name: Some("sluice-webhooks".into()),
            container_port: WEBHOOK_PORT.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let sidecar = Container {
        name: SIDECAR_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        restart_policy: Some("Always".into()),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(ports),
        // Up to 30 s to bind and load secrets; the app starts after that.
        startup_probe: Some(probe("/readyz", 1, 30)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(sidecar_resources(settings)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    // First, so init containers after it can call providers through it too.
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, sidecar);
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes);

    // The app learns each integration's address; a value it set itself wins.
    for container in &mut spec.containers {
        let env = container.env.get_or_insert_with(Vec::new);
        for pi in selected {
            let name = pi.metadata.name.as_deref().unwrap_or_default();
            let var = url_env_name(name);
            if env.iter().any(|e| e.name == var) {
                continue;
            }
            let port = pi
                .spec
                .egress
                .as_ref()
                .and_then(|e| e.port)
                .unwrap_or(EGRESS_PORT);
            env.push(EnvVar {
                name: var,
                value: Some(format!("http://127.0.0.1:{port}")),
                value_from: None,
            });
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pi(yaml: &str) -> ProviderIntegration {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn carrier() -> ProviderIntegration {
        pi("apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: carrier-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  upstream: {baseUrl: 'https://api.carrier.example'}
  egress: {port: 15003}
  auth:
    header:
      name: X-Api-Key
      secretRef: {name: carrier-key, key: current}
      previousSecretRef: {name: carrier-key-old, key: value}
      previousValidUntil: '2026-12-01T00:00:00Z'
  webhooks:
    - name: events
      path: /webhooks/carrier
      forwardTo: http://127.0.0.1:8080/hooks
      verify:
        scheme: StandardWebhooks
        secrets: [{secretRef: {name: carrier-webhook, key: current}}]
")
    }

    fn pod() -> Pod {
        serde_yaml_ng::from_str(
            "metadata: {name: checkout-1, namespace: shop, labels: {app: checkout}}
spec:
  containers:
    - name: app
      image: shop/checkout
      env: [{name: SLUICE_CARRIER_API_URL, value: 'http://override'}]
    - name: worker
      image: shop/worker
",
        )
        .unwrap()
    }

    #[test]
    fn the_state_volume_and_the_sidecar_have_bounded_disk_and_the_cpu_limit_given() {
        let carrier = carrier();
        let mut pod = pod();
        let mut settings = InjectorSettings::new("ghcr.io/sluice/sidecar:0.1.0");
        settings.webhook_queue_bytes = 256 << 20;
        settings.cpu_limit = Some("500m".into());
        let spec = pod.spec.as_mut().unwrap();
        assert!(inject(&mut pod.metadata, spec, &[&carrier], &settings));
        let spec = pod.spec.unwrap();
        let state = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "sluice-state")
            .unwrap();
        // One webhook: 256 MiB + 32 MiB (an eighth) + 32 MiB.
        assert_eq!(
            state.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("320Mi".into()))
        );
        let sidecar = spec.init_containers.unwrap().remove(0);
        assert!(
            sidecar
                .args
                .iter()
                .flatten()
                .any(|a| a == "--max-queue-bytes=268435456"),
            "{:?}",
            sidecar.args
        );
        let resources = sidecar.resources.unwrap();
        let limits = resources.limits.unwrap();
        assert_eq!(limits["cpu"], Quantity("500m".into()));
        assert_eq!(limits["ephemeral-storage"], Quantity("128Mi".into()));
        assert_eq!(
            resources.requests.unwrap()["ephemeral-storage"],
            Quantity("16Mi".into())
        );

        let mut plain = self::pod();
        let spec = plain.spec.as_mut().unwrap();
        let settings = InjectorSettings::new("ghcr.io/sluice/sidecar:0.1.0");
        assert!(inject(&mut plain.metadata, spec, &[&carrier], &settings));
        let sidecar = plain.spec.unwrap().init_containers.unwrap().remove(0);
        assert!(
            !sidecar
                .resources
                .unwrap()
                .limits
                .unwrap()
                .contains_key("cpu"),
            "no CPU limit unless one is given"
        );
    }

    #[test]
    fn shared_state_reaches_the_sidecar_without_its_password_in_the_spec() {
        let carrier = carrier();
        let mut pod = pod();
        let mut settings = InjectorSettings::new("ghcr.io/sluice/sidecar:0.1.0");
        settings.shared_state = Some(SharedStateSettings {
            url: "redis://redis.sluice-system.svc:6379/0".into(),
            password_secret: Some("sluice-redis".into()),
        });
        let spec = pod.spec.as_mut().unwrap();
        assert!(inject(&mut pod.metadata, spec, &[&carrier], &settings));
        let spec = pod.spec.unwrap();
        let sidecar = spec.init_containers.unwrap().remove(0);
        let env = sidecar.env.unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value("SLUICE_SHARED_STATE").as_deref(),
            Some("redis://redis.sluice-system.svc:6379/0")
        );
        assert_eq!(
            value("SLUICE_SHARED_STATE_PASSWORD_FILE").as_deref(),
            Some("/var/run/sluice/shared-state/password")
        );
        let identity = env.iter().find(|e| e.name == "SLUICE_POD_NAME").unwrap();
        assert_eq!(
            identity
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "sluice-shared-state")
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("sluice-redis")
        );
        assert!(
            sidecar
                .volume_mounts
                .unwrap()
                .iter()
                .any(|m| m.mount_path == layout::SHARED_STATE_DIR && m.read_only == Some(true))
        );
    }

    #[test]
    fn injects_a_restricted_native_sidecar_with_exactly_the_referenced_secrets() {
        let carrier = carrier();
        let mut pod = pod();
        let mut settings = InjectorSettings::new("ghcr.io/sluice/sidecar:0.1.0");
        settings.config_server = Some(ConfigServer {
            url: "https://sluice-operator.sluice-system.svc:9443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
        });
        let spec = pod.spec.as_mut().unwrap();
        assert!(inject(&mut pod.metadata, spec, &[&carrier], &settings));
        let spec = pod.spec.as_ref().unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_NAME);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert!(sidecar.startup_probe.is_some() && sidecar.readiness_probe.is_some());
        let security = sidecar.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let secret_volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.as_deref())
            .collect();
        assert_eq!(
            secret_volumes,
            ["carrier-key", "carrier-key-old", "carrier-webhook"]
        );
        let ports: Vec<i32> = sidecar
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [15090, 15080]);
        // The app's own value wins; the other container gets the address.
        let env = |i: usize| spec.containers[i].env.clone().unwrap_or_default();
        assert_eq!(
            env(0)
                .iter()
                .find(|e| e.name == "SLUICE_CARRIER_API_URL")
                .unwrap()
                .value
                .as_deref(),
            Some("http://override")
        );
        assert_eq!(
            env(1)
                .iter()
                .find(|e| e.name == "SLUICE_CARRIER_API_URL")
                .unwrap()
                .value
                .as_deref(),
            Some("http://127.0.0.1:15003")
        );
        assert!(
            sidecar
                .args
                .as_ref()
                .unwrap()
                .iter()
                .any(|a| a.starts_with("--config-server=https://"))
        );
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[INTEGRATIONS_ANNOTATION],
            "carrier-api"
        );

        // Idempotent: a second pass changes nothing.
        let before = pod.clone();
        let spec = pod.spec.as_mut().unwrap();
        assert!(!inject(&mut pod.metadata, spec, &[&carrier], &settings));
        assert_eq!(pod, before);
    }

    #[test]
    fn only_integrations_of_the_pods_namespace_that_select_it() {
        let carrier = carrier();
        let mut elsewhere = carrier.clone();
        elsewhere.metadata.namespace = Some("other".into());
        let mut unselective = carrier.clone();
        unselective.metadata.name = Some("maps".into());
        unselective.spec.pod_selector = None;
        let all = [carrier.clone(), elsewhere, unselective];
        let labels = BTreeMap::from([("app".to_owned(), "checkout".to_owned())]);
        let chosen = selecting(&all, "shop", &labels);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].metadata.name.as_deref(), Some("carrier-api"));
        assert!(selecting(&all, "shop", &BTreeMap::new()).is_empty());
    }

    #[test]
    fn names_fit_kubernetes_limits() {
        assert_eq!(url_env_name("carrier-api.v2"), "SLUICE_CARRIER_API_V2_URL");
        let long = "a".repeat(60);
        let volume = secret_volume_name(&long);
        assert!(volume.len() <= 63, "{volume}");
        assert_ne!(volume, secret_volume_name(&"a".repeat(61)));
    }
}
