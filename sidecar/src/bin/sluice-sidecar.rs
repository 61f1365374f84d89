//! `sluice-sidecar --config FILE`: the data plane as it runs in a pod.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_sidecar::config::SidecarConfig;
use sluice_sidecar::{Sidecar, runtime};

#[derive(Parser)]
#[command(
    version,
    about = "Sluice sidecar: governs an app's calls to third-party APIs"
)]
struct Args {
    /// The compiled config, as `sluice render` prints it.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Worker threads (0: one per core). Size it like the container's CPU limit.
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 1)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    runtime::init_logging();
    let config = SidecarConfig::from_file(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
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
        let sidecar = Sidecar::start(config)
            .await
            .context("starting the sidecar")?;
        runtime::termination_signal().await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        sidecar.shutdown().await;
        Ok(())
    })
}
