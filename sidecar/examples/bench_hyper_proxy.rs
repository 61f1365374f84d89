//! The reference point for `bench/run`: the plainest hyper 1 reverse proxy,
//! as hyper's and hyper-util's docs put one together (an HTTP/1.1 server, the
//! pooled legacy client, one thread) and nothing else — no routing, limits,
//! retries, credentials or metrics. What Sluice costs beyond this is Sluice's.
//!
//! `bench_hyper_proxy LISTEN UPSTREAM`, e.g. `127.0.0.1:28184 127.0.0.1:28181`.

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:28184".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:28181".into());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<_, Incoming> =
                Client::builder(TokioExecutor::new()).build(connector);
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |mut request: Request<Incoming>| {
                            let client = client.clone();
                            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                            let uri = format!("http://{upstream}{path}").parse();
                            async move {
                                *request.uri_mut() = uri.expect("a valid upstream URI");
                                let response = match client.request(request).await {
                                    Ok(response) => response.map(http_body_util::Either::Left),
                                    Err(_) => {
                                        let mut bad = Response::new(http_body_util::Either::Right(
                                            http_body_util::Empty::new(),
                                        ));
                                        *bad.status_mut() = http::StatusCode::BAD_GATEWAY;
                                        bad
                                    }
                                };
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
