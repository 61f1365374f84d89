//! `sluice`: the command line of Sluice's control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_contract::config::{IntegrationConfig, SidecarConfig};
use sluice_contract::layout;
use sluice_operator::compile::{self, MountedSecrets, SecretPaths, check_together};
use sluice_operator::inject::{self, InjectorSettings};
use sluice_operator::manifest::{LocalSecrets, Manifests};
use sluice_sidecar::shared::cli::SharedStateArgs;
use sluice_sidecar::{Sidecar, StartOptions, runtime};

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
        #[arg(long, default_value_t = layout::LOCAL_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// Where providers post webhooks (when an integration has `webhooks`).
        #[arg(long, default_value_t = layout::LOCAL_WEBHOOK_LISTEN)]
        webhook_listen: SocketAddr,
        /// Webhook queues, de-duplication ids and dead letters.
        #[arg(long, default_value = ".sluice/state")]
        state_dir: PathBuf,
        #[command(flatten)]
        shared_state: SharedStateArgs,
    },
    /// Print the compiled sidecar config, as a pod would get it.
    Render {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where Secrets are mounted in the sidecar.
        #[arg(long, default_value = layout::SECRETS_ROOT)]
        secrets_root: PathBuf,
        #[arg(long, default_value_t = layout::POD_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        #[arg(long, default_value_t = layout::POD_WEBHOOK_LISTEN)]
        webhook_listen: SocketAddr,
        /// The pod volume for webhook state.
        #[arg(long, default_value = layout::STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Validate manifests with the same rules as the cluster: every problem
    /// of every document, each with its file, document and field path.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the ProviderIntegration CRD.
    Crd,
    /// Run the controller, the injector webhook and the config stream
    /// (in-cluster config or KUBECONFIG).
    Operator(Box<OperatorArgs>),
    /// Add the sidecar to the pods of Pod, Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet, Job and CronJob manifests, offline (for GitOps). The
    /// ProviderIntegrations come from the same files.
    Inject {
        /// Manifests to inject; ProviderIntegrations in them select the pods.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        sidecar: SidecarArgs,
        /// The operator's config stream URL, for live config (needs --config-ca-file).
        #[arg(long, requires = "config_ca_file")]
        config_server: Option<String>,
        /// The CA of the operator's serving certificate (PEM).
        #[arg(long)]
        config_ca_file: Option<PathBuf>,
    },
    /// Webhook dead letters: list, show, replay.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Watch one namespace only (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// The admission webhook and the sidecars' config stream (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_listen: SocketAddr,
    /// The operator's namespace: Lease, certificate Secret; never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// The Lease the replicas elect a leader with: one per release.
    #[arg(long, default_value = "sluice-operator")]
    lease_name: String,
    /// The Service in front of the operator's replicas.
    #[arg(long, default_value = "sluice-operator")]
    service_name: String,
    /// The port of that Service for the webhook and config stream.
    #[arg(long, default_value_t = 443)]
    service_port: u16,
    /// Register the webhook by URL instead of the Service (operator outside the cluster).
    #[arg(long)]
    webhook_url: Option<String>,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "sluice")]
    webhook_configuration: String,
    /// The Secret (in the operator's namespace) holding the operator's CA and certificate.
    #[arg(long, default_value = "sluice-operator-tls")]
    tls_secret: String,
    /// Read tls.crt, tls.key and ca.crt from DIR (cert-manager) instead.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// How often the serving certificate is checked (renewal, reload).
    #[arg(long, default_value = "30s")]
    tls_check_interval: sluice_contract::config::Duration,
}

/// How injected sidecars are made.
#[derive(clap::Args)]
struct SidecarArgs {
    #[arg(long, env = "SLUICE_SIDECAR_IMAGE", default_value = concat!("ghcr.io/sluice-dev/sluice-sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    #[arg(long, default_value = "IfNotPresent")]
    sidecar_image_pull_policy: String,
    #[arg(long, default_value = "50m")]
    sidecar_cpu_request: String,
    #[arg(long, default_value = "32Mi")]
    sidecar_memory_request: String,
    #[arg(long, default_value = "128Mi")]
    sidecar_memory_limit: String,
    /// No CPU limit unless given; then give --sidecar-workers as many threads.
    #[arg(long)]
    sidecar_cpu_limit: Option<String>,
    /// Ephemeral storage for the sidecar's own writes (its logs): the
    /// webhook state volume has its own sizeLimit.
    #[arg(long, default_value = "16Mi")]
    sidecar_ephemeral_storage_request: String,
    #[arg(long, default_value = "128Mi")]
    sidecar_ephemeral_storage_limit: String,
    /// Disk each webhook's queue of accepted, undelivered events may take
    /// (the sidecar's --max-queue-bytes); sizes the state volume's limit.
    #[arg(
        long,
        default_value_t = sluice_contract::config::defaults::max_queue_bytes(),
        value_parser = sluice_contract::bounds::queue_bytes_flag
    )]
    sidecar_webhook_queue_bytes: u64,
    /// Worker threads per sidecar: match its CPU limit.
    #[arg(long, default_value_t = 1)]
    sidecar_workers: u16,
    /// Shared state for every injected sidecar: redis://HOST:PORT[/DB] or
    /// rediss://, without a password (see --sidecar-shared-state-secret).
    #[arg(long)]
    sidecar_shared_state: Option<String>,
    /// A Secret in each injected pod's namespace whose key `password` is
    /// the shared state's password.
    #[arg(long, requires = "sidecar_shared_state")]
    sidecar_shared_state_secret: Option<String>,
}

impl SidecarArgs {
    fn settings(&self) -> InjectorSettings {
        InjectorSettings {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            config_server: None,
            cpu_request: self.sidecar_cpu_request.clone(),
            memory_request: self.sidecar_memory_request.clone(),
            memory_limit: self.sidecar_memory_limit.clone(),
            cpu_limit: self.sidecar_cpu_limit.clone(),
            ephemeral_storage_request: self.sidecar_ephemeral_storage_request.clone(),
            ephemeral_storage_limit: self.sidecar_ephemeral_storage_limit.clone(),
            webhook_queue_bytes: self.sidecar_webhook_queue_bytes,
            workers: self.sidecar_workers,
            shared_state: self.sidecar_shared_state.clone().map(|url| {
                inject::SharedStateSettings {
                    url,
                    password_secret: self.sidecar_shared_state_secret.clone(),
                }
            }),
        }
    }
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// List dead letters (events that exhausted their delivery attempts).
    DeadLetters {
        #[command(flatten)]
        source: DeadLetterSource,
    },
    /// Print one dead letter: headers, body and the last error.
    Show {
        /// INTEGRATION/WEBHOOK/SEQ, as `dead-letters` lists them.
        letter: String,
        #[command(flatten)]
        source: DeadLetterSource,
    },
    /// Queue a dead letter for delivery again (through the running sidecar).
    Replay {
        letter: String,
        /// The sidecar's admin address (port-forward it from a pod).
        #[arg(long, default_value = "127.0.0.1:15090")]
        admin: SocketAddr,
    },
}

#[derive(clap::Args)]
struct DeadLetterSource {
    /// The sidecar's admin address (port-forward it from a pod).
    #[arg(long, default_value = "127.0.0.1:15090")]
    admin: SocketAddr,
    /// Read the state directory instead of asking a running sidecar.
    #[arg(long)]
    state_dir: Option<PathBuf>,
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
    compile_manifests(files, &manifests, secrets)
}

fn report_manifest_errors(errors: Vec<sluice_operator::manifest::ManifestError>) -> anyhow::Error {
    for e in &errors {
        eprintln!("{e}");
    }
    anyhow::anyhow!("{} problem(s) in the manifests", errors.len())
}

fn compile_manifests(
    files: &[PathBuf],
    manifests: &Manifests,
    secrets: &dyn SecretPaths,
) -> anyhow::Result<Vec<(String, IntegrationConfig)>> {
    if manifests.integrations.is_empty() {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        bail!(
            "no ProviderIntegration (apiVersion: sluice.dev/v1alpha1) in {}",
            files.join(", ")
        );
    }
    let mut compiled = Vec::new();
    let mut by_namespace: Vec<(String, String, IntegrationConfig)> = Vec::new();
    let mut problems = 0;
    for (location, pi) in &manifests.integrations {
        match compile::compile_with(pi, secrets, &manifests.config_maps) {
            Ok(config) => {
                by_namespace.push((location.clone(), namespace_of(pi), config.clone()));
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

/// The sidecar config for compiled integrations and the listen addresses.
fn sidecar_config(
    compiled: Vec<(String, IntegrationConfig)>,
    admin_listen: SocketAddr,
    webhook_listen: SocketAddr,
    state_dir: PathBuf,
) -> SidecarConfig {
    let integrations = compiled.into_iter().map(|(_, c)| c).collect();
    SidecarConfig::new(integrations, admin_listen, webhook_listen, state_dir)
}

fn namespace_of(pi: &sluice_operator::ProviderIntegration) -> String {
    pi.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Webhooks { command } => webhooks::run(command),
        Command::Operator(args) => {
            let args = *args;
            runtime::init_logging();
            let options = sluice_operator::app::Options {
                namespace: args.namespace,
                operator_namespace: args.lease_namespace,
                lease_name: args.lease_name,
                metrics_listen: args.metrics_listen,
                webhook_listen: args.webhook_listen,
                service_name: args.service_name,
                service_port: args.service_port,
                webhook_url: args.webhook_url,
                webhook_configuration: args.webhook_configuration,
                tls_secret: args.tls_secret,
                tls_dir: args.tls_dir,
                sidecar: args.sidecar.settings(),
                tls_check_interval: args.tls_check_interval.get(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                // Before anything reports ready: a SIGTERM must never meet the default action.
                let mut termination = runtime::TerminationSignal::install()
                    .context("installing the SIGTERM handler")?;
                sluice_operator::app::run(options, termination.recv()).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inject {
            files,
            sidecar,
            config_server,
            config_ca_file,
        } => {
            let mut settings = sidecar.settings();
            if let (Some(url), Some(ca)) = (config_server, config_ca_file) {
                settings.config_server = Some(sluice_operator::inject::ConfigServer {
                    url,
                    ca_pem: std::fs::read_to_string(&ca)
                        .with_context(|| format!("reading {}", ca.display()))?,
                });
            }
            let texts = files
                .iter()
                .map(|f| {
                    std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (output, report) = sluice_operator::offline::inject_documents(&texts, &settings)?;
            for line in report {
                eprintln!("{line}");
            }
            print!("{output}");
            Ok(ExitCode::SUCCESS)
        }
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
            match compile_manifests(&files, &manifests, &MountedSecrets::in_pod()) {
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
            webhook_listen,
            state_dir,
        } => {
            let compiled = compile_all(&files, &MountedSecrets { root: secrets_root })?;
            let config = sidecar_config(compiled, admin_listen, webhook_listen, state_dir);
            print!("{}", config.to_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Local {
            files,
            secrets_dir,
            admin_listen,
            webhook_listen,
            state_dir,
            shared_state,
        } => {
            runtime::init_logging();
            let options = StartOptions {
                shared_state: shared_state.settings()?,
            };
            let manifests = Manifests::load(&files).map_err(report_manifest_errors)?;
            if let Some(dir) = &secrets_dir
                && !dir.is_dir()
            {
                bail!("--secrets-dir {}: not a directory", dir.display());
            }
            let secrets = LocalSecrets::materialize(manifests.secrets.clone(), secrets_dir)
                .context("writing inline Secrets to a private directory")?;
            let compiled = compile_manifests(&files, &manifests, &secrets)?;
            let config = sidecar_config(compiled, admin_listen, webhook_listen, state_dir);
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
                let mut termination = runtime::TerminationSignal::install()
                    .context("installing the SIGTERM handler")?;
                let sidecar = Sidecar::start_with(config, options).await?;
                for line in &summary {
                    println!("{line}");
                }
                if let Some(addr) = sidecar.ingress_addr() {
                    println!("webhooks: http://{addr}");
                }
                println!("admin: http://{}/metrics", sidecar.admin_addr);
                termination.recv().await;
                sidecar.shutdown().await;
                drop(secrets);
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sluice webhooks ...`: dead letters through the admin port or the state dir.
mod webhooks {
    use std::path::Path;

    use anyhow::{Context, bail};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use sluice_contract::dead_letter::{self, DeadLetterSummary};
    use sluice_contract::layout;

    use super::{ExitCode, WebhooksCommand};

    pub fn run(command: WebhooksCommand) -> anyhow::Result<ExitCode> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            match command {
                WebhooksCommand::DeadLetters { source } => {
                    let letters = match &source.state_dir {
                        Some(dir) => from_state_dir(dir)?,
                        None => {
                            let (status, body) =
                                call(source.admin, "GET", "/webhooks/dead-letters").await?;
                            expect_ok(status, &body)?;
                            serde_json::from_slice::<Vec<DeadLetterSummary>>(&body)?
                        }
                    };
                    if letters.is_empty() {
                        println!("no dead letters");
                    }
                    for l in letters {
                        println!(
                            "{}/{}/{}\tid={}\tattempts={}\t{}",
                            l.integration, l.webhook, l.seq, l.id, l.attempts, l.last_error
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                WebhooksCommand::Show { letter, source } => {
                    let (integration, webhook, seq) = super::parse_letter(&letter)?;
                    let letter: dead_letter::DeadLetter = match &source.state_dir {
                        Some(dir) => {
                            let queue = layout::queue_dir(dir, integration, webhook);
                            dead_letter::read(&queue, seq)
                                .with_context(|| {
                                    format!("reading {}", dead_letter::path(&queue, seq).display())
                                })?
                                .with_context(|| format!("no dead letter {letter}"))?
                        }
                        None => {
                            let (status, body) = call(
                                source.admin,
                                "GET",
                                &format!("/webhooks/dead-letters/{integration}/{webhook}/{seq}"),
                            )
                            .await?;
                            expect_ok(status, &body)?;
                            serde_json::from_slice(&body).context("not a dead letter")?
                        }
                    };
                    println!(
                        "event {} (seq {}), verified by {}, {} attempts",
                        letter.event.id,
                        letter.event.seq,
                        letter.event.verified_by,
                        letter.attempts
                    );
                    println!("last error: {}", letter.last_error);
                    for (name, value) in letter.event.header_pairs() {
                        println!("{name}: {}", String::from_utf8_lossy(&value));
                    }
                    println!();
                    println!("{}", String::from_utf8_lossy(&letter.body_bytes()));
                    Ok(ExitCode::SUCCESS)
                }
                WebhooksCommand::Replay { letter, admin } => {
                    let (integration, webhook, seq) = super::parse_letter(&letter)?;
                    let (status, body) = call(
                        admin,
                        "POST",
                        &format!("/webhooks/dead-letters/{integration}/{webhook}/{seq}/replay"),
                    )
                    .await?;
                    expect_ok(status, &body)?;
                    println!("queued again: {}", String::from_utf8_lossy(&body).trim());
                    Ok(ExitCode::SUCCESS)
                }
            }
        })
    }

    fn from_state_dir(dir: &Path) -> anyhow::Result<Vec<DeadLetterSummary>> {
        let mut all = Vec::new();
        let queues = layout::queue_dirs(dir)
            .with_context(|| format!("reading the webhook queues under {}", dir.display()))?;
        for (integration, webhook, queue) in queues {
            for letter in dead_letter::list(&queue)? {
                all.push(DeadLetterSummary::of(&integration, &webhook, letter));
            }
        }
        all.sort_by_key(|l| l.received_at_ms);
        Ok(all)
    }

    fn expect_ok(status: u16, body: &[u8]) -> anyhow::Result<()> {
        if (200..300).contains(&status) {
            Ok(())
        } else {
            bail!(
                "the sidecar answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            )
        }
    }

    async fn call(
        admin: std::net::SocketAddr,
        method: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Bytes)> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{admin}{path}"))
            .body(Full::new(Bytes::new()))?;
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
                .await
                .context("the sidecar did not answer within 10s")?
                .with_context(|| format!("cannot reach the sidecar's admin port at {admin}"))?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// `INTEGRATION/WEBHOOK/SEQ` as `sluice webhooks dead-letters` lists them.
fn parse_letter(letter: &str) -> anyhow::Result<(&str, &str, u64)> {
    // An integration in a cluster is NAMESPACE/NAME: split from the end.
    let mut parts = letter.rsplitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(seq), Some(webhook), Some(integration)) if !integration.is_empty() => Ok((
            integration,
            webhook,
            seq.parse().context("SEQ must be a number")?,
        )),
        _ => bail!(
            "{letter:?}: expected INTEGRATION/WEBHOOK/SEQ, as `sluice webhooks dead-letters` lists them"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_letter_of_a_namespaced_integration_splits_from_the_end() {
        assert_eq!(
            super::parse_letter("shop/payments/events/7").unwrap(),
            ("shop/payments", "events", 7)
        );
        assert_eq!(
            super::parse_letter("local/orders/1").unwrap(),
            ("local", "orders", 1)
        );
        assert!(super::parse_letter("orders/1").is_err());
        assert!(super::parse_letter("a/b/x").is_err());
    }
}
