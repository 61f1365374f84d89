//! The training run of the sidecar's profile-guided release build
//! (`sidecar/build-release`): drives an instrumented `sluice-sidecar` with
//! the traffic it is built for, then stops it with SIGTERM so that it writes
//! its profile.
//!
//! `pgo_train SIDECAR_BINARY PROFILE_DIR`
//!
//! Everything runs on 127.0.0.1: an upstream (hyper, in this process), the
//! sidecar with two integrations (the ordinary pipeline: a credential, a rate
//! limit, retries; and a bare proxy), and a client mix over HTTP/1.1 and h2c:
//! small GETs, JSON POSTs with a length, chunked uploads, chunked downloads.
//! The mix decides which paths the compiler lays out as hot; it has no
//! effect on behaviour.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_sidecar::config::SidecarConfig;

/// Requests per HTTP/1.1 connection, and connections per integration.
const REQUESTS_PER_CONNECTION: usize = 1_500;
const CONNECTIONS: usize = 20;
/// Requests on the one h2c connection per integration.
const H2_REQUESTS: usize = 2_000;

type ClientBody = BoxBody<Bytes, Infallible>;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(sidecar), Some(profiles)) = (args.next(), args.next()) else {
        bail!("usage: pgo_train SIDECAR_BINARY PROFILE_DIR");
    };
    let work = PathBuf::from(&profiles).join("train");
    std::fs::create_dir_all(&work).context("creating the training directory")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(train(Path::new(&sidecar), Path::new(&profiles), &work))
}

async fn train(sidecar: &Path, profiles: &Path, work: &Path) -> anyhow::Result<()> {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(serve_upstream(upstream));

    let ordinary = free_port()?;
    let bare = free_port()?;
    let config = sidecar_config(work, upstream_addr, ordinary, bare)?;
    let config_path = work.join("sidecar.yaml");
    std::fs::write(&config_path, config)?;
    let mut child = Command::new(sidecar)
        .arg("--config")
        .arg(&config_path)
        .args(["--workers", "1"])
        .env("SLUICE_LOG", "error")
        .env("LLVM_PROFILE_FILE", profiles.join("sidecar-%p.profraw"))
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", sidecar.display()))?;
    let result = drive(&[ordinary, bare]).await;
    stop(&mut child)?;
    result
}

/// Both integrations' traffic; fails if any request does not get a 200.
async fn drive(ports: &[SocketAddr]) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for &addr in ports {
        wait_for(addr).await?;
        for connection in 0..CONNECTIONS {
            tasks.spawn(http1_client(addr, connection));
        }
        tasks.spawn(h2c_client(addr));
    }
    let mut requests = 0;
    while let Some(done) = tasks.join_next().await {
        requests += done??;
    }
    println!(
        "pgo_train: {requests} requests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The request mix: mostly small GETs, some JSON POSTs, chunked uploads and
/// downloads, a few with the headers apps add.
fn request(i: usize, addr: SocketAddr) -> Request<ClientBody> {
    let uri = |path: &str| format!("http://{addr}{path}");
    let builder = Request::builder();
    let request = match i % 20 {
        3 => builder.uri(uri("/v1/stream")).body(empty()),
        7 | 17 => builder
            .method(Method::POST)
            .uri(uri("/v1/charges"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("train-{i}"))
            .body(Full::new(Bytes::from_static(br#"{"amount":1000,"currency":"usd"}"#)).boxed()),
        11 => builder
            .method(Method::PUT)
            .uri(uri("/v1/files/report.csv"))
            .body(
                StreamBody::new(futures_util::stream::iter(
                    ["id,amount\n", "1,1000\n", "2,2500\n"]
                        .map(|part| Ok::<_, Infallible>(Frame::data(Bytes::from(part)))),
                ))
                .boxed(),
            ),
        13 => builder
            .uri(uri("/v1/things?page=2&limit=50"))
            .header("x-request-id", format!("req-{i}"))
            .header("x-sluice-priority", "high")
            .header("accept", "application/json")
            .body(empty()),
        _ => builder.uri(uri("/v1/things")).body(empty()),
    };
    request.expect("the training requests are valid")
}

fn empty() -> ClientBody {
    Empty::new().boxed()
}

async fn http1_client(addr: SocketAddr, connection: usize) -> anyhow::Result<usize> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    for i in 0..REQUESTS_PER_CONNECTION {
        sender.ready().await?;
        // hyper's connection-level client sends no Host; HTTP/1.1 needs one.
        let mut request = request(connection + i, addr);
        request
            .headers_mut()
            .insert(http::header::HOST, addr.to_string().parse()?);
        let response = sender.send_request(request).await?;
        check(response).await?;
    }
    Ok(REQUESTS_PER_CONNECTION)
}

async fn h2c_client(addr: SocketAddr) -> anyhow::Result<usize> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    for i in 0..H2_REQUESTS {
        sender.ready().await?;
        let mut request = request(i, addr);
        *request.version_mut() = http::Version::HTTP_2;
        check(sender.send_request(request).await?).await?;
    }
    Ok(H2_REQUESTS)
}

async fn check(response: Response<Incoming>) -> anyhow::Result<()> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!(
            "the sidecar answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Answers 200 with a small JSON body, in chunks for `/v1/stream`, after
/// reading the whole request body.
async fn serve_upstream(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let streamed = request.uri().path() == "/v1/stream";
                let _ = request.into_body().collect().await;
                let body: BoxBody<Bytes, Infallible> = if streamed {
                    StreamBody::new(futures_util::stream::iter(
                        [&b"{\"items\":["[..], b"1,2,3", b"]}"]
                            .map(|part| Ok(Frame::data(Bytes::from_static(part)))),
                    ))
                    .boxed()
                } else {
                    Full::new(Bytes::from_static(b"{\"ok\":true}")).boxed()
                };
                Ok::<_, Infallible>(Response::new(body))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The sidecar's config (its own format, checked by parsing it back).
fn sidecar_config(
    work: &Path,
    upstream: SocketAddr,
    ordinary: SocketAddr,
    bare: SocketAddr,
) -> anyhow::Result<String> {
    let secret = work.join("api-key");
    std::fs::write(&secret, "pgo-training-key")?;
    let config = format!(
        r#"admin: {{listen: "127.0.0.1:{admin}"}}
ingress: {{listen: "127.0.0.1:{ingress}", stateDir: "{state}"}}
integrations:
- name: ordinary
  listen: "{ordinary}"
  upstream: {{baseUrl: "http://{upstream}"}}
  auth: {{type: header, name: X-Api-Key, secret: {{path: "{secret}"}}}}
  rateLimits:
  - {{name: all, match: {{}}, requests: 1000000, per: 1s, burst: 1000000}}
  retry: {{maxAttempts: 3, idempotency: {{header: Idempotency-Key, methods: [POST]}}}}
- name: bare
  listen: "{bare}"
  upstream: {{baseUrl: "http://{upstream}"}}
  retry: {{maxAttempts: 1}}
"#,
        admin = free_port()?.port(),
        ingress = free_port()?.port(),
        state = work.join("state").display(),
        secret = secret.display(),
    );
    serde_yaml_ng::from_str::<SidecarConfig>(&config)
        .context("the training config no longer matches the sidecar's config format")?;
    Ok(config)
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

async fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the sidecar did not listen on {addr} within 10 s")
}

/// SIGTERM (the profile is written at a clean exit), then waits.
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the sidecar exited with {status}");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    bail!("the sidecar did not exit within 30 s of SIGTERM")
}
