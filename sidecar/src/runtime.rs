//! Starting, reconfiguring and stopping the whole sidecar.
//!
//! At start every listener is bound and every secret loaded first, so a bad
//! port or a missing file fails clearly. While running, [`Sidecar::apply`]
//! takes a changed set of integrations: each changed integration gets a new
//! pipeline that new requests use at once (in-flight ones finish on the old
//! one), keeping the state whose config did not change (see
//! [`crate::egress::PipelineState`]); an integration whose new config fails
//! keeps running on its last good one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminService, LiveConfig, Readiness};
use crate::config::{IntegrationConfig, SidecarConfig};
use crate::egress::body::ProxyBody;
use crate::egress::{self, EgressService, PipelineError, PipelineState};
use crate::ingress::Ingress;
use crate::metrics::{Metrics, Reload, ReloadLabels};
use crate::secrets::SecretStore;
use crate::shared::{self, SharedState};

/// How often secret files are re-read.
pub const SECRET_POLL_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Ingress(#[from] crate::ingress::IngressError),
    #[error(transparent)]
    SharedState(#[from] crate::shared::SharedStateError),
}

/// A config change that was not (wholly) applied. What it names keeps its
/// last good config; everything else was applied.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ApplyError(pub Vec<StartError>);

/// A running sidecar. Dropping it does not stop it; call [`Sidecar::shutdown`].
pub struct Sidecar {
    live: Arc<Live>,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
}

/// The swappable pipeline behind one egress listener: every request takes
/// the current one.
#[derive(Clone)]
struct CurrentPipeline(Arc<RwLock<EgressService>>);

impl egress::Handle for CurrentPipeline {
    fn handle(
        &self,
        request: Request<ProxyBody>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>> {
        let service = self.0.read().expect("pipeline lock").clone();
        service.handle(request)
    }
}

/// One integration's egress listener.
struct EgressSlot {
    state: PipelineState,
    current: CurrentPipeline,
    /// `current` as a service, made once per listener: what the webhook
    /// pollers send through (they see each pipeline change).
    handle: EgressService,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// What a running sidecar is made of; reconfigured under `slots`' lock.
struct Live {
    base: SidecarConfig,
    secrets: SecretStore,
    metrics: Metrics,
    tasks: TaskTracker,
    /// Stops the admin and webhook listeners.
    stop: watch::Sender<bool>,
    slots: tokio::sync::Mutex<BTreeMap<String, EgressSlot>>,
    addrs: RwLock<Vec<(String, SocketAddr)>>,
    ingress: Arc<Ingress>,
    ingress_addr: RwLock<Option<SocketAddr>>,
    config: LiveConfig,
    secret_watcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    shared: Option<SharedState>,
}

/// What a sidecar starts with besides its config.
#[derive(Default)]
pub struct StartOptions {
    /// `--shared-state`: Cluster limits and webhooks shared by every
    /// sidecar of an integration. Without it each pod keeps its own.
    pub shared_state: Option<shared::Settings>,
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl Sidecar {
    /// Validates, binds and starts serving. Must run inside a Tokio runtime.
    pub async fn start(config: SidecarConfig) -> Result<Self, StartError> {
        Self::start_with(config, StartOptions::default()).await
    }

    /// [`Sidecar::start`] with the pod's own settings.
    pub async fn start_with(
        config: SidecarConfig,
        options: StartOptions,
    ) -> Result<Self, StartError> {
        config.check()?;
        let metrics = Metrics::new();
        let shared = options
            .shared_state
            .map(|settings| {
                tracing::info!(shared_state = %settings.describe(), identity = %settings.identity, "shared state: Cluster limits and webhooks are shared with the other sidecars");
                SharedState::connect(settings, metrics.clone())
            })
            .transpose()?;
        let secrets = SecretStore::new();
        let tasks = TaskTracker::new();
        let (stop, _) = watch::channel(false);
        let ingress = Ingress::new(
            &config.ingress,
            &secrets,
            &metrics,
            tasks.clone(),
            shared.clone(),
        );
        let live_config = LiveConfig::new(config.clone());
        let live = Arc::new(Live {
            base: SidecarConfig {
                integrations: Vec::new(),
                ..config.clone()
            },
            secrets: secrets.clone(),
            metrics: metrics.clone(),
            tasks,
            stop,
            slots: Default::default(),
            addrs: Default::default(),
            ingress: ingress.clone(),
            ingress_addr: Default::default(),
            config: live_config.clone(),
            secret_watcher: Default::default(),
            shared,
        });
        // At start, any problem is fatal: there is no last good config.
        if let Err(mut errors) = live.apply(&config.integrations).await {
            live.shutdown().await;
            return Err(errors.0.remove(0));
        }
        let admin_listener = match bind("admin server".into(), config.admin.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                live.shutdown().await;
                return Err(error);
            }
        };
        let admin_addr = admin_listener
            .local_addr()
            .expect("bound listener has an address");
        let ready = Readiness::default();
        let admin = AdminService::new(metrics.clone(), live_config, ready.clone(), ingress);
        live.tasks.spawn(egress::server::serve(
            admin_listener,
            move |peer: SocketAddr| admin.for_peer(peer),
            live.stop.subscribe(),
            config.drain_timeout.get(),
            "admin".into(),
        ));
        tracing::info!(%admin_addr, "admin listening");
        *live.secret_watcher.lock().expect("watcher lock") =
            Some(secrets.watch(SECRET_POLL_PERIOD, metrics.clone()));
        ready.set(true);
        Ok(Self {
            live,
            admin_addr,
            metrics,
        })
    }

    /// Makes `integrations` the running config (admin and webhook listen
    /// addresses stay as started). Integrations whose new config fails keep
    /// their last good one and are named in the error; the rest are applied.
    pub async fn apply(&self, integrations: &[IntegrationConfig]) -> Result<(), ApplyError> {
        let result = self.live.apply(integrations).await;
        let outcome = if result.is_ok() {
            Reload::Applied
        } else {
            Reload::Failed
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result: outcome })
            .inc();
        self.metrics.config_applied.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        result
    }

    /// The integrations running now.
    pub fn integrations(&self) -> Vec<IntegrationConfig> {
        self.live.config.get().integrations.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout).
    pub async fn shutdown(&self) {
        self.live.shutdown().await;
    }

    /// The address a named integration listens on.
    pub fn egress_addr(&self, name: &str) -> Option<SocketAddr> {
        self.live
            .addrs
            .read()
            .expect("addrs lock")
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Every integration's listen address.
    pub fn egress_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.live.addrs.read().expect("addrs lock").clone()
    }

    /// The webhook ingress, once any integration has webhooks.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        *self.live.ingress_addr.read().expect("ingress lock")
    }
}

impl Live {
    async fn apply(&self, integrations: &[IntegrationConfig]) -> Result<(), ApplyError> {
        let mut slots = self.slots.lock().await;
        let candidate = SidecarConfig {
            integrations: integrations.to_vec(),
            ..self.base.clone()
        };
        if let Err(error) = candidate.check() {
            return Err(ApplyError(vec![error.into()]));
        }
        let mut errors = Vec::new();
        let mut running = Vec::new();
        for config in integrations {
            match self.apply_one(&mut slots, config).await {
                Ok(()) => running.push(config.clone()),
                Err(error) => {
                    tracing::error!(integration = %config.name, %error, "config not applied; this integration keeps its last good config");
                    errors.push(error);
                    if let Some(slot) = slots.get(&config.name) {
                        running.push(slot.state.config().clone());
                    }
                }
            }
        }
        let wanted: Vec<&str> = integrations.iter().map(|c| c.name.as_str()).collect();
        let removed: Vec<String> = slots
            .keys()
            .filter(|name| !wanted.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in removed {
            let slot = slots.remove(&name).expect("listed above");
            tracing::info!(integration = %name, "integration removed; draining its listener");
            let _ = slot.stop.send(true);
        }
        // Webhooks: served only for integrations running their new config.
        let egress = |name: &str| slots.get(name).map(|slot| slot.handle.clone());
        match self.ingress.reconfigure(&running, &egress).await {
            Ok(()) => {
                if let Err(error) = self.ensure_ingress_listener().await {
                    errors.push(error);
                }
            }
            Err(error) => errors.push(error.into()),
        }
        *self.addrs.write().expect("addrs lock") = slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.addr))
            .collect();
        self.config.set(SidecarConfig {
            integrations: running,
            ..self.base.clone()
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApplyError(errors))
        }
    }

    /// Starts, changes or keeps one integration.
    async fn apply_one(
        &self,
        slots: &mut BTreeMap<String, EgressSlot>,
        config: &IntegrationConfig,
    ) -> Result<(), StartError> {
        let existing = slots.get(&config.name);
        if existing.is_some_and(|slot| slot.state.config() == config) {
            return Ok(());
        }
        let rebind = existing.is_none_or(|slot| slot.state.config().listen != config.listen);
        // Bind before building: building changes the running limiter.
        let listener = if rebind {
            Some(bind(format!("integration {}", config.name), config.listen).await?)
        } else {
            None
        };
        let (service, state) = egress::build(
            config,
            &self.secrets,
            &self.metrics,
            existing.map(|slot| &slot.state),
            self.shared.as_ref(),
            Some(&self.base.ingress.state_dir),
        )?;
        match (listener, slots.get_mut(&config.name)) {
            (None, Some(slot)) => {
                *slot.current.0.write().expect("pipeline lock") = service;
                slot.state = state;
                tracing::info!(integration = %config.name, "config applied");
            }
            (Some(listener), previous) => {
                let addr = listener
                    .local_addr()
                    .expect("bound listener has an address");
                if let Some(old) = previous {
                    tracing::info!(integration = %config.name, from = %old.addr, to = %addr, "listen address changed; draining the old listener");
                    let _ = old.stop.send(true);
                }
                tracing::info!(integration = %config.name, %addr, "egress listening");
                let current = CurrentPipeline(Arc::new(RwLock::new(service)));
                let (stop, stopped) = watch::channel(false);
                let serving = current.clone();
                self.tasks.spawn(egress::server::serve_app(
                    listener,
                    serving,
                    stopped,
                    self.base.drain_timeout.get(),
                    config.name.clone(),
                ));
                slots.insert(
                    config.name.clone(),
                    EgressSlot {
                        state,
                        handle: Arc::new(current.clone()),
                        current,
                        addr,
                        stop,
                    },
                );
            }
            (None, None) => unreachable!("a new integration is always bound"),
        }
        Ok(())
    }

    /// Binds the webhook port the first time any integration has webhooks.
    async fn ensure_ingress_listener(&self) -> Result<(), StartError> {
        if self.ingress.is_empty() || self.ingress_addr.read().expect("ingress lock").is_some() {
            return Ok(());
        }
        let listener = bind("webhook ingress".into(), self.base.ingress.listen).await?;
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        tracing::info!(%addr, "webhook ingress listening");
        let service = self.ingress.clone().service();
        self.tasks.spawn(egress::server::serve(
            listener,
            move |_| service.clone(),
            self.stop.subscribe(),
            self.base.drain_timeout.get(),
            "ingress".into(),
        ));
        *self.ingress_addr.write().expect("ingress lock") = Some(addr);
        Ok(())
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
        for slot in self.slots.lock().await.values() {
            let _ = slot.stop.send(true);
        }
        self.ingress.stop().await;
        self.tasks.close();
        self.tasks.wait().await;
        // Nothing is in flight any more: what the quotas counted is final.
        for slot in self.slots.lock().await.values() {
            slot.state.flush();
        }
        if let Some(watcher) = self.secret_watcher.lock().expect("watcher lock").take() {
            watcher.abort();
        }
    }
}

/// SIGTERM and Ctrl-C, listened for from the moment this is built.
///
/// Build it before announcing readiness: until a handler is installed the
/// default action of SIGTERM is to kill the process, so a SIGTERM sent right
/// after readiness (kubelet, a test harness) would skip the drain.
pub struct TerminationSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl TerminationSignal {
    /// Installs the handlers; needs a Tokio runtime with I/O enabled.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves on the first SIGTERM or Ctrl-C received since `install`.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs as JSON lines to stderr; `SLUICE_LOG` sets the filter (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}
