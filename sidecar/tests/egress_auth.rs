//! The credentials layer over real sockets: keys from files, rotation, Basic,
//! OAuth2 client credentials.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_sidecar::config::{AuthConfig, Duration as D, PreviousSecret, SecretFile};
use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn injects_credentials_and_picks_up_rotated_keys() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        match seen
            .headers
            .get("x-api-key")
            .map(|v| v.to_str().unwrap().to_owned())
            .as_deref()
        {
            Some("key-one") | Some("key-two") => respond(200, "ok"),
            _ => respond(401, "bad key"),
        }
    }))
    .await;
    let secrets = SecretDir::new("rotate");
    let current = secrets.write("current", "key-one\n");
    let mut config = integration("keys", &upstream);
    config.auth = Some(AuthConfig::Header {
        name: "X-Api-Key".into(),
        secret: SecretFile::new(&current),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("keys").unwrap());
    let answer = app
        .send(
            "GET",
            "/x",
            &[("x-api-key", "app-tried-its-own")],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, 200, "Sluice's key replaces the app's");
    assert_eq!(upstream.requests()[0].headers["x-api-key"], "key-one");

    secrets.write("current", "key-two");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(app.get("/x").await.status, 200);
        if upstream.requests().last().unwrap().headers["x-api-key"] == "key-two" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_401_during_rotation_is_retried_once_with_the_previous_key() {
    // The provider has not activated the new key yet.
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        if seen.headers["authorization"] == "Bearer old-key" {
            respond(200, "ok")
        } else {
            respond(401, "unknown key")
        }
    }))
    .await;
    let secrets = SecretDir::new("fallback");
    let mut config = integration("rotating", &upstream);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("current", "new-key")),
        previous: Some(PreviousSecret {
            secret: SecretFile::new(secrets.write("previous", "old-key")),
            valid_until: "2999-01-01T00:00:00Z".parse().unwrap(),
        }),
    });
    let mut expired = integration("expired", &upstream);
    expired.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.path_of("current")),
        previous: Some(PreviousSecret {
            secret: SecretFile::new(secrets.path_of("previous")),
            valid_until: "2001-01-01T00:00:00Z".parse().unwrap(),
        }),
    });
    let sidecar = start(vec![config, expired]).await;
    let answer = App::new(sidecar.egress_addr("rotating").unwrap())
        .send("POST", "/charge", &[], "x")
        .await;
    assert_eq!(answer.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, "x", "body resent");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics.contains(
            "sluice_credential_fallback_total{integration=\"rotating\",result=\"success\"} 1"
        ),
        "{metrics}"
    );
    // Past previousValidUntil the old key is no longer tried.
    let answer = App::new(sidecar.egress_addr("expired").unwrap())
        .get("/x")
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(upstream.count(), 3);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn basic_auth_is_encoded() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("basic");
    let mut config = integration("basic", &upstream);
    config.auth = Some(AuthConfig::Basic {
        username: SecretFile::new(secrets.write("user", "acct")),
        password: SecretFile::new(secrets.write("pass", "p@ss:word")),
        previous_password: None,
    });
    let sidecar = start(vec![config]).await;
    App::new(sidecar.egress_addr("basic").unwrap())
        .get("/")
        .await;
    // base64("acct:p@ss:word")
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        "Basic YWNjdDpwQHNzOndvcmQ="
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn oauth2_tokens_are_fetched_once_cached_and_refreshed() {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let calls = token_calls.clone();
    let tokens = TestUpstream::plain(handler(move |seen, _| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let form = String::from_utf8_lossy(&seen.body).into_owned();
            let ok = form.contains("grant_type=client_credentials")
                && form.contains("scope=read+write")
                && seen.headers["authorization"] == "Basic Y2xpZW50LTE6czNjcjN0";
            if !ok {
                return respond(400, "{\"error\":\"invalid_client\"}");
            }
            let mut r = respond(200, "");
            // A 2 s token with refreshBefore 1 s: refreshed after ~1 s.
            *r.body_mut() = http_body_util::Full::new(Bytes::from(format!(
                "{{\"access_token\":\"tok-{n}\",\"token_type\":\"Bearer\",\"expires_in\":2}}"
            )));
            r
        }
    }))
    .await;
    let api = TestUpstream::plain(handler(|_, _| async { respond(200, "data") })).await;
    let secrets = SecretDir::new("oauth");
    let mut config = integration("oauth", &api);
    config.auth = Some(AuthConfig::Oauth2ClientCredentials {
        token_url: format!("{}/oauth/token", tokens.url()).parse().unwrap(),
        client_id: SecretFile::new(secrets.write("id", "client-1")),
        client_secret: SecretFile::new(secrets.write("secret", "s3cr3t")),
        scopes: vec!["read".into(), "write".into()],
        audience: None,
        refresh_before: D::from_secs(1),
        client_auth: Default::default(),
    });
    let sidecar = start(vec![config]).await;
    let addr = sidecar.egress_addr("oauth").unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { App::new(addr).get("/r").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "one refresh at a time, then cached"
    );
    assert!(
        api.requests()
            .iter()
            .all(|s| s.headers["authorization"] == "Bearer tok-1")
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(App::new(addr).get("/r").await.status, 200);
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        2,
        "refreshed before expiry"
    );
    assert_eq!(
        api.requests().last().unwrap().headers["authorization"],
        "Bearer tok-2"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn oauth2_refresh_failure_is_an_error_and_a_metric() {
    let tokens = TestUpstream::plain(handler(|_, _| async {
        respond(401, "{\"error\":\"invalid_client\"}")
    }))
    .await;
    let api = TestUpstream::plain(handler(|_, _| async { respond(200, "data") })).await;
    let secrets = SecretDir::new("oauth-fail");
    let mut config = integration("oauth-fail", &api);
    config.auth = Some(AuthConfig::Oauth2ClientCredentials {
        token_url: format!("{}/token", tokens.url()).parse().unwrap(),
        client_id: SecretFile::new(secrets.write("id", "c")),
        client_secret: SecretFile::new(secrets.write("secret", "wrong")),
        scopes: vec![],
        audience: None,
        refresh_before: D::from_secs(60),
        client_auth: sluice_sidecar::config::ClientAuthMethod::RequestBody,
    });
    let sidecar = start(vec![config]).await;
    let answer = App::new(sidecar.egress_addr("oauth-fail").unwrap())
        .get("/r")
        .await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.header("x-sluice-error"),
        Some("token-refresh-failed")
    );
    assert!(
        answer.text().contains("invalid_client"),
        "{}",
        answer.text()
    );
    assert!(!answer.text().contains("wrong"), "the client secret leaked");
    assert_eq!(api.count(), 0);
    assert!(String::from_utf8_lossy(&tokens.requests()[0].body).contains("client_secret=wrong"));
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics
            .contains("sluice_token_refresh_total{integration=\"oauth-fail\",result=\"error\"} 1"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}
