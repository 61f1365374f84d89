use super::*;

fn stripe() -> PollingConfig {
    serde_yaml_ng::from_str(
        "{path: /v1/events, items: /data, id: /id, created: /created, cursor: {param: starting_after}, hasMore: /has_more}",
    )
    .unwrap()
}

#[test]
fn a_stripe_page_gives_its_events_as_written_and_the_last_id_as_cursor() {
    let body = br#"{"object":"list","data":[{"id":"evt_2","created":1700000001,"type":"charge.succeeded" },{"created":1700000000,"id":"evt_1"}],"has_more":true}"#;
    let page = read(body, &stripe()).unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(
        page.items[0].json.get(),
        r#"{"id":"evt_2","created":1700000001,"type":"charge.succeeded" }"#,
        "byte for byte, the space before the brace kept"
    );
    assert_eq!(page.items[0].id.as_deref(), Some("evt_2"));
    assert_eq!(page.items[0].created_ms, Some(1_700_000_001_000));
    assert_eq!(page.next.as_deref(), Some("evt_1"));
}

#[test]
fn the_last_page_has_no_cursor() {
    let body = br#"{"data":[{"id":"evt_1","created":1}],"has_more":false}"#;
    assert_eq!(read(body, &stripe()).unwrap().next, None);
    let body = br#"{"data":[{"id":"evt_1","created":1}]}"#;
    assert_eq!(
        read(body, &stripe()).unwrap().next,
        None,
        "a missing flag is not more"
    );
}

#[test]
fn without_a_flag_a_page_with_events_asks_for_the_next() {
    let mut polling = stripe();
    polling.has_more = None;
    let page = read(
        br#"{"data":[{"id":7,"created":"2026-12-07T10:00:00Z"}]}"#,
        &polling,
    )
    .unwrap();
    assert_eq!(
        page.next.as_deref(),
        Some("7"),
        "a numeric id is its digits"
    );
    assert_eq!(page.items[0].created_ms, Some(1_796_637_600_000));
    let empty = read(br#"{"data":[]}"#, &polling).unwrap();
    assert!(empty.items.is_empty() && empty.next.is_none());
}

#[test]
fn a_next_page_token_comes_from_its_pointer() {
    let mut polling = stripe();
    polling.cursor.from = CursorFrom::Pointer("/meta/next".into());
    polling.has_more = None;
    polling.items = "/results".into();
    let body = br#"{"results":[{"id":"a","created":1700000000123}],"meta":{"next":"tok-2"}}"#;
    let page = read(body, &polling).unwrap();
    assert_eq!(page.next.as_deref(), Some("tok-2"));
    assert_eq!(
        page.items[0].created_ms,
        Some(1_700_000_000_123),
        "milliseconds"
    );
}

#[test]
fn unusable_ids_and_times_are_none_not_errors() {
    let body = br#"{"data":[{"id":"","created":-5},{"id":{"x":1},"created":"yesterday"},{}],"has_more":false}"#;
    let page = read(body, &stripe()).unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(
        page.items
            .iter()
            .all(|i| i.id.is_none() && i.created_ms.is_none())
    );
}

#[test]
fn a_page_that_is_not_a_listing_is_an_error_naming_the_pointer() {
    assert!(matches!(
        read(b"<html>", &stripe()),
        Err(PageError::NotJson(_))
    ));
    assert_eq!(
        read(br#"{"data":{"id":1}}"#, &stripe()).unwrap_err(),
        PageError::NoItems("/data".into())
    );
    assert_eq!(
        read(br#"{"error":{"message":"x"}}"#, &stripe())
            .unwrap_err()
            .to_string(),
        "the page has no array of events at /data (polling.items)"
    );
}

#[test]
fn pointers_follow_rfc_6901() {
    let raw: &RawValue = serde_json::from_str(r#"{"a/b":{"m~n":[10,{"x":true}]}}"#).unwrap();
    assert_eq!(raw_at(raw, "/a~1b/m~0n/1/x").unwrap().get(), "true");
    assert_eq!(raw_at(raw, "/a~1b/m~0n/0").unwrap().get(), "10");
    assert!(raw_at(raw, "/a~1b/m~0n/2").is_none());
    assert!(raw_at(raw, "/a~1b/m~0n/x").is_none());
    assert!(raw_at(raw, "no-slash").is_none());
    assert_eq!(raw_at(raw, "").unwrap().get(), raw.get());
}
