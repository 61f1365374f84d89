//! The config stream: a sidecar long-polls for its pod's integrations.
//!
//! The sidecar shows its projected ServiceAccount token (audience `sluice`);
//! a TokenReview says which pod it is bound to, and the answer holds the
//! compiled configs of the integrations selecting that pod, nothing else.
//! With `?version=V&wait=true` the poll is held until the configs differ
//! from version V, or 30 s pass (304).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use sluice_contract::config::IntegrationConfig;
use sluice_contract::stream::{ConfigSnapshot, LONG_POLL};

use crate::metrics::{ControllerMetrics, ResultLabels};
use crate::view::ClusterView;
use sluice_contract::layout::TOKEN_AUDIENCE;

/// How long a TokenReview's answer is reused for the same token.
const REVIEW_CACHE: Duration = Duration::from_secs(60);
/// How long a poll waits for a just-created pod to reach the view.
const POD_GRACE: Duration = Duration::from_secs(5);

const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_CLAIM: &str = "authentication.kubernetes.io/pod-uid";

/// The pod a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// TokenReview answers by token digest, with when they were made.
type ReviewCache = HashMap<[u8; 32], (Result<PodIdentity, String>, Instant)>;

pub struct ConfigStream {
    pub view: Arc<ClusterView>,
    pub client: Client,
    pub metrics: ControllerMetrics,
    reviews: Mutex<ReviewCache>,
}

/// An answer: status and JSON body.
pub type Reply = (StatusCode, String);

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    (
        status,
        serde_json::json!({ "error": message.to_string() }).to_string(),
    )
}

/// Reads the identity out of a TokenReview's status.
pub fn identity_of(review: &TokenReview) -> Result<PodIdentity, String> {
    let status = review.status.as_ref().ok_or("no TokenReview status")?;
    if status.authenticated != Some(true) {
        return Err(status
            .error
            .clone()
            .unwrap_or_else(|| "the token is not valid".into()));
    }
    let user = status.user.as_ref().ok_or("no user in the TokenReview")?;
    let username = user.username.as_deref().unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_owned())
        .ok_or("not a ServiceAccount token")?;
    let claim = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .cloned()
    };
    match (claim(POD_NAME_CLAIM), claim(POD_UID_CLAIM)) {
        (Some(name), Some(uid)) => Ok(PodIdentity {
            namespace,
            name,
            uid,
        }),
        _ => Err("the token is not bound to a pod (use a projected token)".into()),
    }
}

/// The answer for a set of configs: version = digest of their text.
pub fn snapshot(configs: &[(String, String)]) -> Result<ConfigSnapshot, String> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut integrations = Vec::new();
    for (name, yaml) in configs {
        digest.update(name.as_bytes());
        digest.update(b"\0");
        digest.update(yaml.as_bytes());
        digest.update(b"\0");
        let config: IntegrationConfig = serde_yaml_ng::from_str(yaml)
            .map_err(|e| format!("the ConfigMap of {name} does not parse: {e}"))?;
        integrations.push(config);
    }
    let version: String = digest.finish().as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(ConfigSnapshot {
        version,
        integrations,
    })
}

impl ConfigStream {
    pub fn new(view: Arc<ClusterView>, client: Client, metrics: ControllerMetrics) -> Self {
        Self {
            view,
            client,
            metrics,
            reviews: Mutex::default(),
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .config_polls
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    async fn authenticate(&self, token: &str) -> Result<PodIdentity, String> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        if let Some((identity, at)) = self.reviews.lock().expect("reviews lock").get(&key)
            && at.elapsed() < REVIEW_CACHE
        {
            return identity.clone();
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let identity = identity_of(&reviewed);
        let mut cache = self.reviews.lock().expect("reviews lock");
        cache.retain(|_, (_, at)| at.elapsed() < REVIEW_CACHE);
        cache.insert(key, (identity.clone(), Instant::now()));
        identity
    }

    /// The pod's current snapshot, waiting briefly for a new pod to appear.
    async fn current(&self, pod: &PodIdentity) -> Result<ConfigSnapshot, Reply> {
        let deadline = tokio::time::Instant::now() + POD_GRACE;
        let mut changes = self.view.subscribe();
        loop {
            let found = self
                .view
                .injected_pods
                .get(&ObjectRef::new(&pod.name).within(&pod.namespace));
            match found {
                Some(found) if found.metadata.uid.as_deref() == Some(pod.uid.as_str()) => {
                    let configs = self.view.configs_for(&pod.namespace, found.labels());
                    return snapshot(&configs)
                        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e));
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "pod {}/{} is not an injected pod (label sluice.dev/injected)",
                            pod.namespace, pod.name
                        ),
                    ));
                }
                _ => {
                    let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
                }
            }
        }
    }

    /// Answers one poll: `authorization` is the header's value, `query` the URL's.
    pub async fn poll(&self, authorization: Option<&str>, query: Option<&str>) -> Reply {
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            self.count("denied");
            return error(
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer <projected ServiceAccount token> is required",
            );
        };
        let pod = match self.authenticate(token.trim()).await {
            Ok(pod) => pod,
            Err(reason) => {
                self.count("denied");
                tracing::info!(%reason, "config poll refused");
                return error(StatusCode::FORBIDDEN, reason);
            }
        };
        let mut known = None;
        let mut wait = false;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "version" => known = Some(value.into_owned()),
                "wait" => wait = value == "true",
                _ => {}
            }
        }
        let mut changes = self.view.subscribe();
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        self.metrics.config_watchers.inc();
        let reply = loop {
            let current = match self.current(&pod).await {
                Ok(current) => current,
                Err(reply) => {
                    self.count("error");
                    break reply;
                }
            };
            if known.as_deref() != Some(current.version.as_str()) {
                self.count("changed");
                break (
                    StatusCode::OK,
                    serde_json::to_string(&current).expect("snapshots serialize"),
                );
            }
            if !wait
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                self.count("unchanged");
                break (StatusCode::NOT_MODIFIED, String::new());
            }
        };
        self.metrics.config_watchers.dec();
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
    use std::collections::BTreeMap;

    fn reviewed(username: &str, extra: &[(&str, &str)]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: Some(
                        extra
                            .iter()
                            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                            .collect::<BTreeMap<_, _>>(),
                    ),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn only_pod_bound_service_account_tokens_identify_a_pod() {
        let ok = reviewed(
            "system:serviceaccount:shop:checkout",
            &[(POD_NAME_CLAIM, "checkout-1"), (POD_UID_CLAIM, "u-1")],
        );
        assert_eq!(
            identity_of(&ok).unwrap(),
            PodIdentity {
                namespace: "shop".into(),
                name: "checkout-1".into(),
                uid: "u-1".into()
            }
        );
        let unbound = reviewed("system:serviceaccount:shop:checkout", &[]);
        assert!(
            identity_of(&unbound)
                .unwrap_err()
                .contains("not bound to a pod")
        );
        let user = reviewed("alice", &[(POD_NAME_CLAIM, "x"), (POD_UID_CLAIM, "y")]);
        assert!(identity_of(&user).is_err());
        let mut refused = ok.clone();
        refused.status.as_mut().unwrap().authenticated = Some(false);
        assert!(identity_of(&refused).is_err());
    }

    #[test]
    fn the_version_follows_the_content() {
        let a = "name: a\nlisten: 127.0.0.1:15001\nupstream: {baseUrl: 'https://a.example'}\n";
        let b = "name: a\nlisten: 127.0.0.1:15002\nupstream: {baseUrl: 'https://a.example'}\n";
        let one = snapshot(&[("a".into(), a.into())]).unwrap();
        assert_eq!(
            one.version,
            snapshot(&[("a".into(), a.into())]).unwrap().version
        );
        assert_ne!(
            one.version,
            snapshot(&[("a".into(), b.into())]).unwrap().version
        );
        assert_eq!(one.integrations[0].name, "a");
        assert!(snapshot(&[("x".into(), "name: [".into())]).is_err());
    }
}
