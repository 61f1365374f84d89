//! The sidecar as a process over real sockets: the admin port, start-up
//! errors, and a graceful shutdown.

mod support;

use std::time::Duration;

use sluice_sidecar::config::{AuthConfig, Duration as D, SecretFile};
use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn admin_serves_metrics_health_and_a_secret_free_config() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("admin");
    let mut config = integration("adm", &upstream);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("k", "sk_live_TOPSECRET")),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    App::new(sidecar.egress_addr("adm").unwrap())
        .get("/x")
        .await;
    assert_eq!(admin(&sidecar, "/healthz").await.status, 200);
    assert_eq!(admin(&sidecar, "/readyz").await.status, 200);
    let config = admin(&sidecar, "/config").await;
    assert_eq!(config.status, 200);
    assert!(config.text().contains("\"baseUrl\""));
    assert!(!config.text().contains("TOPSECRET"));
    let metrics = admin(&sidecar, "/metrics").await.text();
    for name in [
        "sluice_egress_requests_total{integration=\"adm\",endpoint=\"default\",code=\"200\",outcome=\"success\"} 1",
        "sluice_egress_request_duration_seconds_bucket",
        "sluice_egress_attempts_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(!metrics.contains("TOPSECRET"));
    assert_eq!(admin(&sidecar, "/nope").await.status, 404);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let upstream = TestUpstream::plain(handler(|_, _| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        respond(200, "slow but complete")
    }))
    .await;
    let sidecar = start(vec![integration("drain", &upstream)]).await;
    let addr = sidecar.egress_addr("drain").unwrap();
    // A keep-alive connection that is idle at shutdown must be closed at
    // once, not waited for until the drain timeout (5 s here).
    let idle = App::new(addr);
    assert_eq!(idle.get("/warm").await.status, 200);
    // Nor may a connection that never sent a byte hold up the drain.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move { App::new(addr).get("/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    sidecar.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    let answer = in_flight.await.unwrap();
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "slow but complete")
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let mut config = integration("clash", &upstream);
    config.listen = taken.local_addr().unwrap();
    let result = sluice_sidecar::Sidecar::start(sluice_sidecar::config::SidecarConfig {
        admin: sluice_sidecar::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        drain_timeout: D::from_secs(1),
        integrations: vec![config],
        ingress: Default::default(),
    })
    .await;
    let error = result.err().expect("start fails").to_string();
    assert!(
        error.contains("integration clash")
            && error.contains(&taken.local_addr().unwrap().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_secret_file_is_a_clear_start_error() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let mut config = integration("nosecret", &upstream);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new("/nonexistent/sluice/key"),
        previous: None,
    });
    let error = sluice_sidecar::Sidecar::start(sluice_sidecar::config::SidecarConfig {
        admin: sluice_sidecar::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        drain_timeout: D::from_secs(1),
        integrations: vec![config],
        ingress: Default::default(),
    })
    .await
    .err()
    .expect("start fails")
    .to_string();
    assert!(error.contains("/nonexistent/sluice/key"), "{error}");
}
