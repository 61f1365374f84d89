//! A minimal HTTP/1.1 upstream for benchmarks: answers every request with 200
//! and a small body, on one thread.
//!
//! `bench_upstream 127.0.0.1:PORT [ARRIVALS_FILE]`: with a file, it also
//! records when each request arrived (microseconds since it started, one per
//! line), written when it gets SIGTERM, to check rate-limit accuracy.
//! With `BENCH_RATELIMIT_HEADERS=1` every response also says how much of a
//! (generous) rate limit is left, as GitHub does: `x-ratelimit-limit`,
//! `-remaining`, `-reset`, for the cost of reading them. With
//! `BENCH_JSON=1` the body is labelled `application/json`, as a response
//! contract needs.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let arrivals_file = std::env::args().nth(2);
    let started = Instant::now();
    let arrivals: Arc<Mutex<Vec<u64>>> = Arc::default();
    let ratelimit_headers = std::env::var_os("BENCH_RATELIMIT_HEADERS").is_some_and(|v| v == "1");
    let json = std::env::var_os("BENCH_JSON").is_some_and(|v| v == "1");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {}", listener.local_addr()?);
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let record = arrivals_file.is_some();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted?,
                    _ = term.recv() => break,
                };
                let _ = stream.set_nodelay(true);
                let arrivals = arrivals.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        if record {
                            let at = started.elapsed().as_micros() as u64;
                            arrivals.lock().expect("arrivals lock").push(at);
                        }
                        async move {
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                            if ratelimit_headers {
                                let h = response.headers_mut();
                                h.insert("x-ratelimit-limit", "1000000".parse().unwrap());
                                h.insert("x-ratelimit-remaining", "999999".parse().unwrap());
                                h.insert("x-ratelimit-reset", "60".parse().unwrap());
                            }
                            if json {
                                response
                                    .headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            if let Some(file) = &arrivals_file {
                let text: String = arrivals
                    .lock()
                    .expect("arrivals lock")
                    .iter()
                    .map(|t| format!("{t}\n"))
                    .collect();
                std::fs::write(file, text)?;
            }
            Ok(())
        })
}
