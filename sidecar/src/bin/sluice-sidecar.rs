//! `sluice-sidecar`: the data plane as it runs in a pod.
//!
//! Either one file with everything (`--config`, as `sluice render` prints
//! it), or, as the injector starts it, a directory of integrations plus the
//! pod's own settings, optionally following the operator's config stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_sidecar::config::{Duration as ConfigDuration, SidecarConfig};
use sluice_sidecar::layout;
use sluice_sidecar::shared::cli::SharedStateArgs;
use sluice_sidecar::source::{self, StreamSettings};
use sluice_sidecar::{Sidecar, StartOptions, runtime};

/// mimalloc instead of the system allocator: a request makes ~15 small
/// allocations, and glibc's malloc and free took ~3.5k instructions of the
/// ~26k a proxied request costs (bench/instructions; docs/decisions.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Sluice sidecar: governs an app's calls to third-party APIs"
)]
struct Args {
    /// The whole compiled config in one file, as `sluice render` prints it.
    #[arg(long, env = "SLUICE_CONFIG", conflicts_with = "config_dir")]
    config: Option<PathBuf>,
    /// A directory of integration files (`*.yaml`, one integration each), watched.
    #[arg(long, env = "SLUICE_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// With --config-dir: where /metrics, /healthz, /readyz and /config are served.
    #[arg(long, default_value_t = layout::POD_ADMIN_LISTEN)]
    admin_listen: SocketAddr,
    /// With --config-dir: where providers post webhooks.
    #[arg(long, default_value_t = layout::POD_WEBHOOK_LISTEN)]
    webhook_listen: SocketAddr,
    /// With --config-dir: webhook queues, de-duplication ids and dead letters.
    #[arg(long, default_value = layout::STATE_DIR)]
    state_dir: PathBuf,
    /// With --config-dir: disk each webhook's queue of accepted, undelivered
    /// events may take; past it providers get 503 and send again later.
    #[arg(
        long,
        default_value_t = sluice_contract::config::defaults::max_queue_bytes(),
        value_parser = sluice_contract::bounds::queue_bytes_flag
    )]
    max_queue_bytes: u64,
    /// With --config-dir: how long in-flight requests may finish at shutdown.
    #[arg(long, default_value = "30s")]
    drain_timeout: ConfigDuration,
    /// The operator's config stream (https://host:port); needs the token and CA.
    #[arg(long, env = "SLUICE_CONFIG_SERVER", requires = "config_token_file")]
    config_server: Option<http::Uri>,
    /// The pod's projected ServiceAccount token (audience `sluice`).
    #[arg(long, env = "SLUICE_CONFIG_TOKEN_FILE")]
    config_token_file: Option<PathBuf>,
    /// The CA of the operator's serving certificate (a PEM file).
    #[arg(long, env = "SLUICE_CONFIG_CA_FILE", conflicts_with = "config_ca")]
    config_ca_file: Option<PathBuf>,
    /// The same CA as PEM text (the injector sets it in the environment).
    #[arg(long, env = "SLUICE_CONFIG_CA", hide_env_values = true)]
    config_ca: Option<String>,
    /// Worker threads (0: one per core). Size it like the container's CPU limit.
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    shared_state: SharedStateArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    runtime::init_logging();
    let config = match (&args.config, &args.config_dir) {
        (Some(file), None) => {
            SidecarConfig::from_file(file).with_context(|| format!("loading {}", file.display()))?
        }
        (None, Some(dir)) => {
            let mut config = SidecarConfig {
                drain_timeout: args.drain_timeout,
                ..SidecarConfig::new(
                    source::load_dir(dir).with_context(|| format!("loading {}", dir.display()))?,
                    args.admin_listen,
                    args.webhook_listen,
                    args.state_dir.clone(),
                )
            };
            config.ingress.max_queue_bytes = args.max_queue_bytes;
            config
        }
        _ => bail!("give --config FILE or --config-dir DIR"),
    };
    let options = StartOptions {
        shared_state: args.shared_state.settings()?,
    };
    let stream = match &args.config_server {
        Some(server) => Some(StreamSettings {
            server: server.clone(),
            token_file: args.config_token_file.clone().expect("required by clap"),
            ca_pem: match (&args.config_ca, &args.config_ca_file) {
                (Some(pem), _) => pem.clone(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading --config-ca-file {}", file.display()))?,
                (None, None) => bail!("--config-server needs --config-ca-file or SLUICE_CONFIG_CA"),
            },
        }),
        None => None,
    };
    let mut builder = if args.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if args.workers > 1 {
            b.worker_threads(args.workers);
        }
        b
    };
    builder.enable_all().build()?.block_on(async {
        let mut termination =
            runtime::TerminationSignal::install().context("installing the SIGTERM handler")?;
        let sidecar = Arc::new(
            Sidecar::start_with(config, options)
                .await
                .context("starting the sidecar")?,
        );
        let connected = Arc::new(AtomicBool::new(false));
        let mut followers = tokio::task::JoinSet::new();
        if let Some(dir) = args.config_dir.clone() {
            followers.spawn(source::watch_dir(
                sidecar.clone(),
                dir,
                connected.clone(),
                Duration::from_secs(2),
            ));
        }
        if let Some(settings) = stream {
            let (sidecar, connected) = (sidecar.clone(), connected.clone());
            followers.spawn(async move {
                if let Err(error) = source::follow_stream(sidecar, settings, connected).await {
                    tracing::error!(%error, "cannot follow the operator's config stream");
                }
            });
        }
        termination.recv().await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        followers.abort_all();
        sidecar.shutdown().await;
        Ok(())
    })
}
