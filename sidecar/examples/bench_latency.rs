//! Closed-loop latency: `bench_latency URL_A URL_B [ROUNDS] [PER_ROUND]`
//! sends requests over one keep-alive connection per URL, alternating rounds
//! between A and B so both see the same machine noise, then prints
//! p50/p90/p99/p99.9 for each and the differences.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (a, b) = (args[1].clone(), args[2].clone());
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let per_round: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build_http();
        let mut samples = [Vec::new(), Vec::new()];
        // Warm up both paths (connections, pools, caches).
        for url in [&a, &b] {
            for _ in 0..200 {
                let r = client.get(url.parse().unwrap()).await.unwrap();
                r.into_body().collect().await.unwrap();
            }
        }
        for _ in 0..rounds {
            for (i, url) in [&a, &b].into_iter().enumerate() {
                let uri: http::Uri = url.parse().unwrap();
                for _ in 0..per_round {
                    let start = Instant::now();
                    let r = client.get(uri.clone()).await.unwrap();
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                    r.into_body().collect().await.unwrap();
                    samples[i].push(start.elapsed());
                }
            }
        }
        let mut summary = Vec::new();
        for (name, s) in ["A", "B"].into_iter().zip(samples.iter_mut()) {
            s.sort();
            let ps: Vec<Duration> = [0.5, 0.9, 0.99, 0.999].iter().map(|p| percentile(s, *p)).collect();
            println!(
                "{name} ({} requests): p50 {:>7.1}us  p90 {:>7.1}us  p99 {:>7.1}us  p99.9 {:>7.1}us",
                s.len(),
                ps[0].as_secs_f64() * 1e6,
                ps[1].as_secs_f64() * 1e6,
                ps[2].as_secs_f64() * 1e6,
                ps[3].as_secs_f64() * 1e6
            );
            summary.push(ps);
        }
        let added = |i: usize| (summary[1][i].as_secs_f64() - summary[0][i].as_secs_f64()) * 1e6;
        println!("B - A: p50 {:+.1}us  p99 {:+.1}us  p99.9 {:+.1}us", added(0), added(2), added(3));
    });
}
