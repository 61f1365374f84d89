use super::*;
use crate::config::{Duration as ConfigDuration, QueueConfig, RequestMatch};

fn limit(
    name: &str,
    requests: u32,
    per_ms: u64,
    burst: u32,
    mode: WhenExceeded,
) -> RateLimitConfig {
    RateLimitConfig {
        name: name.into(),
        matches: RequestMatch::default(),
        requests,
        per: ConfigDuration::from_millis(per_ms),
        burst,
        scope: Default::default(),
        cluster: None,
        when_exceeded: mode,
        queue: QueueConfig {
            max_wait: ConfigDuration::from_secs(60),
            max_depth: 100,
        },
        key: None,
        max_keys: 10_000,
    }
}

/// A request with no header, query or path a key could read.
fn plain() -> KeySource<'static> {
    static REQUEST: std::sync::LazyLock<Request<()>> =
        std::sync::LazyLock::new(|| Request::new(()));
    KeySource::of(&REQUEST)
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

#[tokio::test(start_paused = true)]
async fn burst_then_spacing() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[limit("l", 10, 1000, 3, WhenExceeded::Queue)],
        Metrics::new(),
        None,
    )
    .0;
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..6 {
        limiter
            .acquire(&[0], plain(), Priority::Normal, far())
            .await
            .unwrap();
        times.push(start.elapsed());
    }
    // Three back to back, then one per 100 ms.
    assert_eq!(times[..3], [Duration::ZERO; 3]);
    assert_eq!(times[3], Duration::from_millis(100));
    assert_eq!(times[5], Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn never_more_than_requests_per_window() {
    // burst == requests: the sliding window is the binding rule.
    let limiter = RateLimiter::new(
        "t".into(),
        &[limit("l", 5, 1000, 5, WhenExceeded::Queue)],
        Metrics::new(),
        None,
    )
    .0;
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..12 {
        limiter
            .acquire(&[0], plain(), Priority::Normal, far())
            .await
            .unwrap();
        times.push(start.elapsed());
    }
    for (i, t) in times.iter().enumerate() {
        let in_window = times
            .iter()
            .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 5,
            "window starting at admission {i} holds {in_window}: {times:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn reject_mode_answers_at_once_with_retry_after() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[limit("l", 2, 1000, 2, WhenExceeded::Reject)],
        Metrics::new(),
        None,
    )
    .0;
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    match limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
    {
        Err(ProxyError::RateLimited { retry_after, .. }) => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(1020))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn wait_past_deadline_is_refused_up_front() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[limit("l", 1, 10_000, 1, WhenExceeded::Queue)],
        Metrics::new(),
        None,
    )
    .0;
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    let soon = Instant::now() + Duration::from_secs(1);
    let before = Instant::now();
    let result = limiter.acquire(&[0], plain(), Priority::Normal, soon).await;
    assert!(
        matches!(result, Err(ProxyError::QueueFull { .. })),
        "{result:?}"
    );
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn queue_depth_is_bounded() {
    let mut config = limit("l", 1, 1000, 1, WhenExceeded::Queue);
    config.queue.max_depth = 2;
    let limiter = RateLimiter::new("t".into(), &[config], Metrics::new(), None).0;
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    let a = tokio::spawn({
        let l = limiter.clone();
        async move { l.acquire(&[0], plain(), Priority::Normal, far()).await }
    });
    let b = tokio::spawn({
        let l = limiter.clone();
        async move { l.acquire(&[0], plain(), Priority::Normal, far()).await }
    });
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let third = limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await;
    assert!(
        matches!(third, Err(ProxyError::QueueFull { .. })),
        "{third:?}"
    );
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn high_priority_goes_first() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[limit("l", 1, 100, 1, WhenExceeded::Queue)],
        Metrics::new(),
        None,
    )
    .0;
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (label, priority) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("high", Priority::High),
    ] {
        let (l, order) = (limiter.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            l.acquire(&[0], plain(), priority, far()).await.unwrap();
            order.lock().unwrap().push(label);
        }));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["high", "normal", "low"]);
}

#[tokio::test(start_paused = true)]
async fn waiting_on_one_limit_holds_no_slot_of_another() {
    // Limit 0 (slow) is exhausted; limit 1 (fast) has room. A request
    // needing both must wait without keeping a request that needs only
    // limit 1 from going.
    let limiter = RateLimiter::new(
        "t".into(),
        &[
            limit("slow", 1, 10_000, 1, WhenExceeded::Queue),
            limit("fast", 1, 1000, 1, WhenExceeded::Queue),
        ],
        Metrics::new(),
        None,
    )
    .0;
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    let both = tokio::spawn({
        let l = limiter.clone();
        async move {
            l.acquire(&[0, 1], plain(), Priority::Normal, far())
                .await
                .map(|_| Instant::now())
        }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    limiter
        .acquire(&[1], plain(), Priority::Normal, far())
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "fast-only request was held back"
    );
    let admitted_at = both.await.unwrap().unwrap();
    assert!(admitted_at >= start + Duration::from_secs(9));
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_free_their_place() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[limit("l", 1, 1000, 1, WhenExceeded::Queue)],
        Metrics::new(),
        None,
    )
    .0;
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let l = limiter.clone();
        async move { l.acquire(&[0], plain(), Priority::Normal, far()).await }
    });
    tokio::task::yield_now().await;
    waiting.abort();
    let _ = waiting.await;
    let start = Instant::now();
    limiter
        .acquire(&[0], plain(), Priority::Normal, far())
        .await
        .unwrap();
    // The aborted waiter did not take the next slot (window plus its guard).
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1) + window_guard(Duration::from_secs(1))
    );
}

fn keyed(name: &str, requests: u32, per_ms: u64, max_keys: u32) -> RateLimitConfig {
    RateLimitConfig {
        key: Some(crate::config::LimitKey::Header(
            http::HeaderName::from_static("x-account-id"),
        )),
        max_keys,
        ..limit(name, requests, per_ms, requests, WhenExceeded::Queue)
    }
}

fn account(id: &str) -> Request<()> {
    let mut request = Request::new(());
    if !id.is_empty() {
        request
            .headers_mut()
            .insert("x-account-id", id.parse().unwrap());
    }
    request
}

/// Admits one request of `id` now or says it would have to wait.
fn admits_now(limiter: &RateLimiter, id: &str) -> bool {
    limiter
        .admit_now(&[0], KeySource::of(&account(id)))
        .is_some()
}

fn window_of(per: Duration) -> Duration {
    per + window_guard(per)
}

#[tokio::test(start_paused = true)]
async fn each_value_has_the_whole_limit() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[keyed("l", 1, 1000, 100)],
        Metrics::new(),
        None,
    )
    .0;
    assert!(admits_now(&limiter, "a"));
    assert!(admits_now(&limiter, "b"), "b waited for a");
    assert!(!admits_now(&limiter, "a"), "a went twice in one window");
    // Without the header: one more value, shared by all such requests.
    assert!(admits_now(&limiter, ""));
    assert!(!admits_now(&limiter, ""));
    let start = Instant::now();
    let request = account("a");
    limiter
        .acquire(&[0], KeySource::of(&request), Priority::Normal, far())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), window_of(Duration::from_secs(1)));
    // b's window has passed too; a's has just begun again.
    assert!(admits_now(&limiter, "b"));
    assert!(!admits_now(&limiter, "a"));
}

#[tokio::test(start_paused = true)]
async fn a_full_table_forgets_an_idle_value_and_never_a_counting_one() {
    let metrics = Metrics::new();
    let limiter = RateLimiter::new("t".into(), &[keyed("l", 1, 1000, 2)], metrics.clone(), None).0;
    let tracked = || {
        metrics
            .ratelimit_keys
            .get_or_create(&LimitLabels {
                integration: "t".into(),
                limit: "l".into(),
            })
            .get()
    };
    assert!(admits_now(&limiter, "a"));
    assert!(admits_now(&limiter, "b"));
    assert_eq!(tracked(), 2);
    // Both still count: a third value is refused, never let through by
    // forgetting a or b (which would let that one go twice in a window).
    let request = account("c");
    match limiter
        .acquire(&[0], KeySource::of(&request), Priority::Normal, far())
        .await
    {
        Err(ProxyError::QueueFull { retry_after, .. }) => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= window_of(Duration::from_secs(1))
            )
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let refused = metrics
        .ratelimit_rejected
        .get_or_create(&LimitReasonLabels {
            integration: "t".into(),
            limit: "l".into(),
            reason: Rejection::KeysFull,
        })
        .get();
    assert_eq!(refused, 1);
    assert!(!admits_now(&limiter, "a"), "a was forgotten while counting");

    // b is used again after a window; a is the least recently used idle one.
    tokio::time::advance(window_of(Duration::from_secs(1))).await;
    assert!(admits_now(&limiter, "b"));
    assert!(
        admits_now(&limiter, "c"),
        "no idle value was forgotten for c"
    );
    assert_eq!(tracked(), 2);
    assert!(!admits_now(&limiter, "b"), "b was forgotten instead of a");
    assert!(!admits_now(&limiter, "c"));
}

#[tokio::test(start_paused = true)]
async fn a_new_config_keeps_each_values_history() {
    let config = keyed("l", 1, 1000, 100);
    let limiter = RateLimiter::new(
        "t".into(),
        std::slice::from_ref(&config),
        Metrics::new(),
        None,
    )
    .0;
    assert!(admits_now(&limiter, "a"));
    let slots = limiter.reconfigure(&[RateLimitConfig {
        max_keys: 50,
        ..config.clone()
    }]);
    assert_eq!(slots[&Name::from("l")], 0);
    assert!(!admits_now(&limiter, "a"), "the reload reset a's window");
    assert!(admits_now(&limiter, "b"));
}

#[tokio::test(start_paused = true)]
async fn a_limit_losing_its_key_lets_its_values_waiters_go() {
    let config = keyed("l", 1, 10_000, 100);
    let limiter = RateLimiter::new(
        "t".into(),
        std::slice::from_ref(&config),
        Metrics::new(),
        None,
    )
    .0;
    assert!(admits_now(&limiter, "a"));
    let waiting = tokio::spawn({
        let l = limiter.clone();
        async move {
            let request = account("a");
            l.acquire(&[0], KeySource::of(&request), Priority::Normal, far())
                .await
                .map(|_| ())
        }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    limiter.reconfigure(&[RateLimitConfig {
        key: None,
        ..config
    }]);
    waiting.await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a's waiter was held by a retired value"
    );
    // The limit itself now counts every request, from an empty window.
    assert!(admits_now(&limiter, "z"));
    assert!(!admits_now(&limiter, "y"));
}

#[tokio::test(start_paused = true)]
async fn a_providers_429_holds_only_that_value() {
    let limiter = RateLimiter::new(
        "t".into(),
        &[keyed("l", 10, 1000, 100)],
        Metrics::new(),
        None,
    )
    .0;
    let request = account("a");
    let grant = limiter
        .admit_now(&[0], KeySource::of(&request))
        .expect("room");
    limiter.pause(&grant, Duration::from_secs(5)).await;
    assert!(!admits_now(&limiter, "a"), "a was not held");
    assert!(admits_now(&limiter, "b"), "b was held for a's 429");
}
