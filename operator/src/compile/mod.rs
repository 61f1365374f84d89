//! `compile`: a ProviderIntegration in, the sidecar's config for it out.
//!
//! Pure: no I/O, no clock, no cluster. The controller, `sluice render`,
//! `sluice check` and `sluice local` all call it, so what a pod enforces is
//! exactly what `sluice render` prints. It first checks everything the API
//! server checks (`validate`: the CRD schema and the rule table), then fills
//! in the defaults, one concern per module. Every error names the field path.

mod auth;
mod contracts;
mod limits;
mod quotas;
mod retry;
mod routes;
mod schema_source;
mod webhooks;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use sluice_contract::config::{IntegrationConfig, SecretFile, UpstreamConfig, defaults};
use sluice_contract::layout;

pub use crate::field_error::{FieldError, FieldErrors as CompileErrors};
pub use limits::{cluster_share_problems, share_cluster_limits};

use crate::resource::{ProviderIntegration, SecretKeyRef};

/// Where the sidecar finds a referenced Secret key as a file.
pub trait SecretPaths {
    /// `None` when the Secret is known not to exist (local runs); in a cluster
    /// it is always the mount path, since the operator never reads Secrets.
    fn path_of(&self, reference: &SecretKeyRef) -> Option<PathBuf>;
}

/// The layout of mounted Secret volumes: `ROOT/<secret>/<key>`.
#[derive(Clone, Debug)]
pub struct MountedSecrets {
    pub root: PathBuf,
}

impl MountedSecrets {
    /// Where the injector mounts them in a pod.
    pub fn in_pod() -> Self {
        Self {
            root: layout::SECRETS_ROOT.into(),
        }
    }
}

impl SecretPaths for MountedSecrets {
    fn path_of(&self, reference: &SecretKeyRef) -> Option<PathBuf> {
        Some(layout::secret_path(
            &self.root,
            &reference.name,
            &reference.key,
        ))
    }
}

/// What a ConfigMap of the integration's namespace holds, for contracts'
/// `schemaFrom`.
pub trait ConfigMaps {
    fn value(&self, name: &str, key: &str) -> ConfigMapValue;
}

pub enum ConfigMapValue {
    Found(String),
    /// No such ConfigMap (or, in a cluster, none with the schema label).
    NoConfigMap,
    NoKey,
}

/// ConfigMaps by name, each its `data`.
pub type ConfigMapData = BTreeMap<String, BTreeMap<String, String>>;

impl ConfigMaps for ConfigMapData {
    fn value(&self, name: &str, key: &str) -> ConfigMapValue {
        match self.get(name) {
            None => ConfigMapValue::NoConfigMap,
            Some(data) => match data.get(key) {
                Some(value) => ConfigMapValue::Found(value.clone()),
                None => ConfigMapValue::NoKey,
            },
        }
    }
}

/// What the parts of `compile` share: the problems found so far, where
/// Secrets are and what ConfigMaps hold.
pub(crate) struct Compiler<'a> {
    errors: Vec<FieldError>,
    secrets: &'a dyn SecretPaths,
    config_maps: &'a dyn ConfigMaps,
}

impl Compiler<'_> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// The file a Secret reference becomes; a problem when it is known missing.
    fn secret_file(&mut self, path: &str, reference: &SecretKeyRef) -> SecretFile {
        match self.secrets.path_of(reference) {
            Some(file) => SecretFile::new(file),
            None => {
                self.add(
                    path,
                    format!(
                        "Secret {:?} (key {:?}) not found: add a kind: Secret document or pass --secrets-dir DIR holding DIR/{}/{}",
                        reference.name, reference.key, reference.name, reference.key
                    ),
                );
                SecretFile::new(PathBuf::new())
            }
        }
    }
}

/// Compiles one ProviderIntegration. `secrets` says where referenced Secret
/// keys are found as files; no ConfigMap is known (see [`compile_with`]).
pub fn compile(
    pi: &ProviderIntegration,
    secrets: &dyn SecretPaths,
) -> Result<IntegrationConfig, CompileErrors> {
    compile_with(pi, secrets, &ConfigMapData::new())
}

/// [`compile`], with the ConfigMaps of the integration's namespace that a
/// contract's `schemaFrom` may name.
pub fn compile_with(
    pi: &ProviderIntegration,
    secrets: &dyn SecretPaths,
    config_maps: &dyn ConfigMaps,
) -> Result<IntegrationConfig, CompileErrors> {
    let manifest = serde_json::to_value(pi).expect("a ProviderIntegration serializes");
    let mut c = Compiler {
        errors: crate::validate::validate(&manifest),
        secrets,
        config_maps,
    };
    let spec = &pi.spec;
    let up = &spec.upstream;
    let upstream = UpstreamConfig {
        base_url: up.base_url.clone(),
        timeout: up.timeout.unwrap_or_else(defaults::timeout),
        total_timeout: up.total_timeout.unwrap_or_else(defaults::total_timeout),
        body_timeout: up.body_timeout.unwrap_or_else(defaults::body_timeout),
        ca_bundle: up.ca_bundle.clone(),
        max_buffered_body_bytes: up
            .max_buffered_body_bytes
            .unwrap_or_else(defaults::max_buffered_body),
        provider_limits: up.provider_limits.unwrap_or_default(),
    };
    let port = spec
        .egress
        .as_ref()
        .and_then(|e| e.port)
        .unwrap_or(layout::EGRESS_PORT);
    let auth = spec.auth.as_ref().and_then(|a| auth::compile(&mut c, a));
    let config = IntegrationConfig {
        name: pi.metadata.name.clone().unwrap_or_default(),
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        auth,
        rotation_grace: spec
            .auth
            .as_ref()
            .and_then(|a| a.rotation_grace)
            .unwrap_or_else(defaults::rotation_grace),
        endpoints: routes::endpoints(&spec.endpoints),
        rate_limits: limits::compile(&spec.rate_limits, upstream.total_timeout),
        quotas: quotas::compile(&spec.quotas),
        contracts: contracts::compile(&mut c, &spec.contracts),
        retry: retry::compile(spec.retry.as_ref()),
        circuit_breaker: spec.circuit_breaker.as_ref().map(retry::circuit_breaker),
        cache: routes::cache(&spec.cache),
        webhooks: webhooks::compile(&mut c, &spec.webhooks),
        upstream,
    };
    if c.errors.is_empty() {
        Ok(config)
    } else {
        Err(CompileErrors(c.errors))
    }
}

/// Checks that concern several integrations of one namespace, which may
/// land in the same pod: each needs its own egress port. `compiled` holds
/// (where it was read, namespace, config); each problem starts with where.
pub fn check_together(compiled: &[(String, String, IntegrationConfig)]) -> Vec<String> {
    let mut by_port: BTreeMap<(&str, u16), Vec<(&str, &str)>> = BTreeMap::new();
    for (location, namespace, config) in compiled {
        by_port
            .entry((namespace, config.listen.port()))
            .or_default()
            .push((location, &config.name));
    }
    let mut problems = Vec::new();
    for ((namespace, port), users) in by_port {
        if users.len() < 2 {
            continue;
        }
        let names: Vec<&str> = users.iter().map(|(_, name)| *name).collect();
        for (location, _) in users.iter().skip(1) {
            problems.push(format!(
                "{location}: spec.egress.port: {port} is used by several integrations in namespace {namespace} ({}); give each its own port",
                names.join(", ")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests;
