//! The upstream-side HTTP/1.1 codec: a request goes out and any bytes come
//! back as the response (status line, fields, framing).
#![no_main]

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use sluice_sidecar::egress::body::ProxyBody;
use sluice_sidecar::egress::http1::client::{Connection, RequestHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (sidecar, mut upstream) = tokio::io::duplex(64 * 1024);
        let mut connection = Connection::new(sidecar);
        let host = HeaderValue::from_static("upstream");
        let headers = HeaderMap::new();
        let method = if data.first().is_some_and(|b| b & 1 == 1) {
            Method::HEAD
        } else {
            Method::GET
        };
        let exchange = async {
            let mut body = ProxyBody::Empty;
            let head = RequestHead {
                method: &method,
                target: "/fuzz",
                host: &host,
                headers: &headers,
            };
            let _ = connection.exchange(head, &mut body).await;
        };
        let answer = async move {
            let mut request = [0u8; 1024];
            let _ = upstream.read(&mut request).await;
            let _ = upstream.write_all(data).await;
            let _ = upstream.shutdown().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(exchange, answer)
        })
        .await;
    });
});
