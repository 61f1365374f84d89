//! The field report's webhook flood: `bench_webhook_flood INGRESS_URL
//! APP_ADDR COUNT CONCURRENCY SECRET`. Runs the app (counting deliveries and
//! answering 200) on APP_ADDR, posts COUNT GitHub-signed events to the
//! sidecar with CONCURRENCY senders, and reports acceptance throughput, ack
//! latency percentiles, and how long delivery of everything took.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ingress = args[1].clone();
    let app_addr = args[2].clone();
    let count: usize = args[3].parse().unwrap();
    let concurrency: usize = args[4].parse().unwrap();
    let secret = args[5].clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let delivered = Arc::new(Mutex::new(HashSet::<String>::new()));
        let app_listener = tokio::net::TcpListener::bind(&app_addr).await.unwrap();
        let seen = delivered.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = app_listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            if let Some(id) = req.headers().get("x-sluice-event-id") {
                                seen.lock().unwrap().insert(id.to_str().unwrap().to_owned());
                            }
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });

        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let next = Arc::new(AtomicUsize::new(0));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let refused = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut senders = Vec::new();
        for _ in 0..concurrency {
            let (client, next, latencies, refused, key, ingress) =
                (client.clone(), next.clone(), latencies.clone(), refused.clone(), key.clone(), ingress.clone());
            senders.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    // A typical 1 KiB event body.
                    let body = format!(
                        "{{\"id\":\"evt_{i}\",\"type\":\"shipment.updated\",\"data\":{{\"shipment_id\":\"s{}\",\"status\":\"in_transit\",\"pad\":\"{}\"}}}}",
                        i % 1000,
                        "x".repeat(900)
                    );
                    let tag: String = ring::hmac::sign(&key, body.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
                    loop {
                        let request = Request::post(format!("{ingress}/webhooks/flood"))
                            .header("x-hub-signature-256", format!("sha256={tag}"))
                            .header("x-github-delivery", format!("evt_{i}"))
                            .body(Full::new(Bytes::from(body.clone())))
                            .unwrap();
                        let sent = Instant::now();
                        let response = client.request(request).await.expect("the sidecar answers");
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        if status == 200 {
                            latencies.lock().unwrap().push(sent.elapsed());
                            break;
                        }
                        // 503 + Retry-After: the queue is full; a provider would come back.
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        let accept_time = started.elapsed();
        let mut l = latencies.lock().unwrap().clone();
        l.sort();
        let p = |q: f64| l[((l.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
        println!(
            "accepted {} events in {:.2}s: {:.0} events/s; ack latency p50 {:.2}ms p99 {:.2}ms p99.9 {:.2}ms; 503s {}",
            l.len(),
            accept_time.as_secs_f64(),
            l.len() as f64 / accept_time.as_secs_f64(),
            p(0.5),
            p(0.99),
            p(0.999),
            refused.load(Ordering::Relaxed)
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        while delivered.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "only {} of {count} delivered", delivered.lock().unwrap().len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "delivered all {count} to the app {:.2}s after the first was sent",
            started.elapsed().as_secs_f64()
        );
    });
}
