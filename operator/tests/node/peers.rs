//! The node test's peers outside the cluster, on the node's bridge: a
//! provider stub and the collector the test app hands delivered webhooks to.
//! Real HTTP/1.1 servers (hyper) on a runtime of their own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// One request the provider saw.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub path: String,
    pub authorized: bool,
}

pub struct Peers {
    /// The servers run on it until the test drops it.
    _runtime: tokio::runtime::Runtime,
    pub provider: SocketAddr,
    pub collector: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    delivered: Arc<Mutex<HashMap<String, u32>>>,
}

impl Peers {
    /// Both peers on `ip`; the provider accepts `Authorization: Bearer {token}`.
    pub fn start(ip: &str, token: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let delivered = Arc::new(Mutex::new(HashMap::new()));
        let expected = format!("Bearer {token}");
        let provider = {
            let hits = hits.clone();
            runtime.block_on(serve(ip, move |req: Request<Incoming>| {
                let authorized = req
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                hits.lock().unwrap().push(Hit {
                    at: Instant::now(),
                    path: req.uri().path().to_owned(),
                    authorized,
                });
                async move {
                    if authorized {
                        (StatusCode::OK, "authorized\n")
                    } else {
                        (StatusCode::UNAUTHORIZED, "unauthorized\n")
                    }
                }
            }))
        };
        let collector = {
            let delivered = delivered.clone();
            runtime.block_on(serve(ip, move |req: Request<Incoming>| {
                let delivered = delivered.clone();
                async move {
                    let Ok(body) = req.into_body().collect().await else {
                        return (StatusCode::BAD_REQUEST, "unreadable body\n");
                    };
                    let event: serde_json::Value = match serde_json::from_slice(&body.to_bytes()) {
                        Ok(event) => event,
                        Err(_) => return (StatusCode::BAD_REQUEST, "not JSON\n"),
                    };
                    let Some(id) = event["id"].as_str() else {
                        return (StatusCode::BAD_REQUEST, "no id\n");
                    };
                    *delivered.lock().unwrap().entry(id.to_owned()).or_default() += 1;
                    (StatusCode::OK, "collected\n")
                }
            }))
        };
        Self {
            _runtime: runtime,
            provider,
            collector,
            hits,
            delivered,
        }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Event id -> how many times the app passed it on.
    pub fn delivered(&self) -> HashMap<String, u32> {
        self.delivered.lock().unwrap().clone()
    }
}

/// Serves `handle` on `ip`:0 until the runtime is dropped; returns the address.
async fn serve<F, Fut>(ip: &str, handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (StatusCode, &'static str)> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handle(req);
                    async move {
                        let (status, body) = answer.await;
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
