//! Starting and stopping the whole sidecar: bind every listener and load every
//! secret first (so a bad port or a missing file fails at start, clearly),
//! then serve until told to stop, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{AdminService, Readiness};
use crate::config::SidecarConfig;
use crate::egress::{self, PipelineError};
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::secrets::SecretStore;

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
}

/// A running sidecar. Dropping it does not stop it; call [`Sidecar::shutdown`].
pub struct Sidecar {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    watcher: tokio::task::JoinHandle<()>,
    pub admin_addr: SocketAddr,
    pub egress_addrs: Vec<(String, SocketAddr)>,
    /// The webhook ingress, when any integration has webhooks.
    pub ingress_addr: Option<SocketAddr>,
    pub metrics: Metrics,
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl Sidecar {
    /// Validates, binds and starts serving. Must run inside a Tokio runtime.
    pub async fn start(config: SidecarConfig) -> Result<Self, StartError> {
        config.check()?;
        let metrics = Metrics::new();
        let secrets = SecretStore::new();
        let ready = Readiness::default();
        let mut pipelines = Vec::new();
        for integration in &config.integrations {
            let service = egress::pipeline(integration, &secrets, &metrics)?;
            let listener = bind(
                format!("integration {}", integration.name),
                integration.listen,
            )
            .await?;
            pipelines.push((integration.name.clone(), listener, service));
        }
        let admin_listener = bind("admin server".into(), config.admin.listen).await?;

        let (stop, stopped) = watch::channel(false);
        let drain = config.drain_timeout.get();
        let mut tasks = JoinSet::new();
        let ingress = Ingress::start(
            &config.ingress,
            &config.integrations,
            &secrets,
            &metrics,
            stopped.clone(),
            &mut tasks,
        )?;
        let mut ingress_addr = None;
        if let Some(ingress) = &ingress {
            let listener = bind("webhook ingress".into(), config.ingress.listen).await?;
            let addr = listener
                .local_addr()
                .expect("bound listener has an address");
            tracing::info!(%addr, "webhook ingress listening");
            ingress_addr = Some(addr);
            let service = ingress.clone().service();
            tasks.spawn(egress::server::serve(
                listener,
                move |_| service.clone(),
                stopped.clone(),
                drain,
                "ingress".into(),
            ));
        }
        let mut egress_addrs = Vec::new();
        for (name, listener, service) in pipelines {
            let addr = listener
                .local_addr()
                .expect("bound listener has an address");
            tracing::info!(integration = %name, %addr, "egress listening");
            egress_addrs.push((name.clone(), addr));
            tasks.spawn(egress::server::serve(
                listener,
                move |_| service.clone(),
                stopped.clone(),
                drain,
                name,
            ));
        }
        let admin_addr = admin_listener
            .local_addr()
            .expect("bound listener has an address");
        let admin = AdminService::new(metrics.clone(), Arc::new(config), ready.clone(), ingress);
        tasks.spawn(egress::server::serve(
            admin_listener,
            move |peer: SocketAddr| admin.for_peer(peer),
            stopped.clone(),
            drain,
            "admin".into(),
        ));
        tracing::info!(%admin_addr, "admin listening");
        let watcher = secrets.watch(SECRET_POLL_PERIOD, metrics.clone());
        ready.set(true);
        Ok(Self {
            stop,
            tasks,
            watcher,
            admin_addr,
            egress_addrs,
            ingress_addr,
            metrics,
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.watcher.abort();
    }

    /// The address a named integration listens on.
    pub fn egress_addr(&self, name: &str) -> Option<SocketAddr> {
        self.egress_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
