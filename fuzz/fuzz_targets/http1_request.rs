//! The app-side HTTP/1.1 codec: any bytes from the app, as one connection
//! (heads, bodies in every framing, trailers, pipelining). Each request's
//! body is read to its end, as the pipeline would.
#![no_main]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use http::{Request, Response};
use libfuzzer_sys::fuzz_target;
use sluice_sidecar::egress::Handle;
use sluice_sidecar::egress::body::ProxyBody;
use tokio::io::AsyncWriteExt;

/// Reads each request's body, then answers with a streamed one.
struct Drain;

impl Handle for Drain {
    fn handle(
        &self,
        request: Request<ProxyBody>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> {
        Box::pin(async move {
            let _ = request.into_body().buffer_up_to(1 << 20).await;
            Response::new(ProxyBody::full("ok"))
        })
    }
}

/// One runtime and listener for the whole run: the codec serves a real
/// loopback socket, as in production.
fn listener() -> &'static (tokio::runtime::Runtime, std::net::TcpListener) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, std::net::TcpListener)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        (runtime, listener)
    })
}

fuzz_target!(|data: &[u8]| {
    let (runtime, listener) = listener();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener.try_clone().unwrap()).unwrap();
        let mut app = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (sidecar, _) = listener.accept().await.unwrap();
        let serve = sluice_sidecar::egress::http1::server::serve_connection(
            sidecar,
            BytesMut::new(),
            Drain,
            Arc::new(AtomicBool::new(false)),
        );
        let send = async move {
            let _ = app.write_all(data).await;
            let _ = app.shutdown().await;
            // Read whatever comes back until the codec closes.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut app, &mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(serve, send)
        })
        .await;
    });
});
