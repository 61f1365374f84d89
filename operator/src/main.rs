//! `sluice`: the command line of Sluice's control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_operator::compile::{
    self, MountedSecrets, POD_SECRETS_ROOT, SecretPaths, check_together,
};
use sluice_operator::manifest::{LocalSecrets, Manifests};
use sluice_sidecar::config::{AdminConfig, IntegrationConfig, SidecarConfig, defaults};
use sluice_sidecar::{Sidecar, runtime};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Run third-party API integrations on Kubernetes, governed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar in-process for every ProviderIntegration in FILES (no cluster needed).
    Local {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A Secret reference {name: N, key: K} reads DIR/N/K (a mounted Secret's layout).
        #[arg(long)]
        secrets_dir: Option<PathBuf>,
        /// Where /metrics, /healthz, /readyz and /config are served.
        #[arg(long, default_value = "127.0.0.1:15090")]
        admin_listen: SocketAddr,
    },
    /// Print the compiled sidecar config, as a pod would get it.
    Render {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where Secrets are mounted in the sidecar.
        #[arg(long, default_value = POD_SECRETS_ROOT)]
        secrets_root: PathBuf,
        #[arg(long, default_value = "0.0.0.0:15090")]
        admin_listen: SocketAddr,
    },
    /// Validate manifests with the same rules as the cluster.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the ProviderIntegration CRD.
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Loads and compiles; on any problem prints every one and fails.
fn compile_all(
    files: &[PathBuf],
    secrets: &dyn SecretPaths,
) -> anyhow::Result<Vec<(String, IntegrationConfig)>> {
    let manifests = Manifests::load(files).map_err(report_manifest_errors)?;
    compile_manifests(&manifests, secrets)
}

fn report_manifest_errors(errors: Vec<sluice_operator::manifest::ManifestError>) -> anyhow::Error {
    for e in &errors {
        eprintln!("{e}");
    }
    anyhow::anyhow!("{} problem(s) in the manifests", errors.len())
}

fn compile_manifests(
    manifests: &Manifests,
    secrets: &dyn SecretPaths,
) -> anyhow::Result<Vec<(String, IntegrationConfig)>> {
    if manifests.integrations.is_empty() {
        bail!("no ProviderIntegration (apiVersion: sluice.dev/v1alpha1) in the files");
    }
    let mut compiled = Vec::new();
    let mut by_namespace: Vec<(String, IntegrationConfig)> = Vec::new();
    let mut problems = 0;
    for (location, pi) in &manifests.integrations {
        match compile::compile(pi, secrets) {
            Ok(config) => {
                by_namespace.push((namespace_of(pi), config.clone()));
                compiled.push((location.clone(), config));
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{location}: {e}");
                }
                problems += errors.0.len();
            }
        }
    }
    let together = check_together(&by_namespace);
    for problem in &together {
        eprintln!("{problem}");
    }
    problems += together.len();
    if problems > 0 {
        bail!("{problems} problem(s) in the manifests");
    }
    Ok(compiled)
}

fn namespace_of(pi: &sluice_operator::ProviderIntegration) -> String {
    pi.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crd => {
            print!("{}", sluice_operator::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { files } => {
            let manifests = match Manifests::load(&files) {
                Ok(m) => m,
                Err(errors) => {
                    report_manifest_errors(errors);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let secrets = MountedSecrets {
                root: POD_SECRETS_ROOT.into(),
            };
            match compile_manifests(&manifests, &secrets) {
                Ok(compiled) => {
                    for (location, _) in &compiled {
                        println!("ok: {location}");
                    }
                    for skipped in &manifests.skipped {
                        println!("skipped: {skipped}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Render {
            files,
            secrets_root,
            admin_listen,
        } => {
            let compiled = compile_all(&files, &MountedSecrets { root: secrets_root })?;
            let config = SidecarConfig {
                admin: AdminConfig {
                    listen: admin_listen,
                },
                drain_timeout: defaults::drain_timeout(),
                integrations: compiled.into_iter().map(|(_, c)| c).collect(),
                ingress: Default::default(),
            };
            print!("{}", config.to_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Local {
            files,
            secrets_dir,
            admin_listen,
        } => {
            runtime::init_logging();
            let manifests = Manifests::load(&files).map_err(report_manifest_errors)?;
            if let Some(dir) = &secrets_dir
                && !dir.is_dir()
            {
                bail!("--secrets-dir {}: not a directory", dir.display());
            }
            let secrets = LocalSecrets::materialize(manifests.secrets.clone(), secrets_dir)
                .context("writing inline Secrets to a private directory")?;
            let compiled = compile_manifests(&manifests, &secrets)?;
            let config = SidecarConfig {
                admin: AdminConfig {
                    listen: admin_listen,
                },
                drain_timeout: defaults::drain_timeout(),
                integrations: compiled.into_iter().map(|(_, c)| c).collect(),
                ingress: Default::default(),
            };
            let summary: Vec<String> = config
                .integrations
                .iter()
                .map(|i| format!("{}: http://{} -> {}", i.name, i.listen, i.upstream.base_url))
                .collect();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let sidecar = Sidecar::start(config).await?;
                for line in &summary {
                    println!("{line}");
                }
                println!("admin: http://{}/metrics", sidecar.admin_addr);
                runtime::termination_signal().await;
                sidecar.shutdown().await;
                drop(secrets);
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
