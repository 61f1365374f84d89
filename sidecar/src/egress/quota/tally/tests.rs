use super::*;
use crate::state_file::test_dir as tempdir;

const DAY: i64 = 86_400;
/// Noon of some day: the 24h window runs from `NOON - DAY / 2`.
const NOON: i64 = 20_000 * DAY + DAY / 2;

fn day() -> QuotaPeriod {
    "24h".parse().unwrap()
}

fn file_of(dir: &tempdir::Dir) -> PathBuf {
    dir.path().join("quotas").join("maps.elements.json")
}

fn on_disk(path: &Path) -> (i64, u64) {
    let file: UsageFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (file.window_start, file.used)
}

fn charged(v: Verdict) -> u64 {
    match v {
        Verdict::Charged { used, .. } => used,
        other => panic!("expected a charge, got {other:?}"),
    }
}

#[tokio::test]
async fn the_file_is_ahead_of_the_usage_before_a_request_counts() {
    let dir = tempdir::Dir::new();
    let path = file_of(&dir);
    let tally = Tally::in_file(day(), 1000, path.clone(), NOON).unwrap();
    assert_eq!(charged(tally.charge(3, Some(1000), NOON).await), 3);
    // A step is 1 % of 1000: the file says 13 before the 3 count.
    assert_eq!(on_disk(&path), (NOON - DAY / 2, 13));
    for _ in 0..10 {
        tally.charge(1, Some(1000), NOON).await;
    }
    assert_eq!(on_disk(&path).1, 13, "within the reservation: no write");
    assert_eq!(charged(tally.charge(1, Some(1000), NOON).await), 14);
    assert_eq!(on_disk(&path).1, 24);

    // A crash (no flush) over-counts by less than a step, never under.
    std::mem::forget(tally);
    let after_crash = Tally::in_file(day(), 1000, path.clone(), NOON).unwrap();
    assert_eq!(after_crash.refresh(NOON).await, 24);
    // A clean stop writes the exact usage.
    after_crash.charge(2, Some(1000), NOON).await;
    after_crash.flush();
    assert_eq!(on_disk(&path).1, 26);
    drop(after_crash);
    let again = Tally::in_file(day(), 1000, path.clone(), NOON).unwrap();
    assert_eq!(again.refresh(NOON).await, 26);
}

#[tokio::test]
async fn reject_holds_at_the_limit_and_a_new_window_starts_empty() {
    let dir = tempdir::Dir::new();
    let path = file_of(&dir);
    let tally = Tally::in_file(day(), 10, path.clone(), NOON).unwrap();
    for n in 1..=10 {
        assert_eq!(charged(tally.charge(1, Some(10), NOON).await), n);
    }
    assert!(matches!(
        tally.charge(1, Some(10), NOON).await,
        Verdict::Exhausted { used: 10, window } if window.end == NOON + DAY / 2
    ));
    assert_eq!(
        charged(tally.charge(1, None, NOON).await),
        11,
        "a warning quota counts past it"
    );
    drop(tally);
    let restarted = Tally::in_file(day(), 10, path.clone(), NOON + 60).unwrap();
    assert!(matches!(
        restarted.charge(1, Some(10), NOON + 60).await,
        Verdict::Exhausted { .. }
    ));
    assert_eq!(charged(restarted.charge(1, Some(10), NOON + DAY).await), 1);
    // The clock stepping back does not bring the old window back.
    assert_eq!(charged(restarted.charge(1, Some(10), NOON).await), 2);
    drop(restarted);
    let next_day = Tally::in_file(day(), 10, path, NOON + DAY).unwrap();
    assert_eq!(next_day.refresh(NOON + DAY).await, 2);
}

#[tokio::test]
async fn a_refund_gives_back_only_its_own_window() {
    let tally = Tally::in_memory(day(), 10, NOON);
    let Verdict::Charged { window, .. } = tally.charge(4, Some(10), NOON).await else {
        panic!("charged")
    };
    tally.refund(3, window, NOON).await;
    assert_eq!(tally.refresh(NOON).await, 1);
    tally.charge(5, Some(10), NOON + DAY).await;
    tally.refund(1, window, NOON + DAY).await;
    assert_eq!(tally.refresh(NOON + DAY).await, 5);
}

#[test]
fn an_unreadable_file_is_an_error_naming_it() {
    let dir = tempdir::Dir::new();
    let path = file_of(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"{not json").unwrap();
    let error = Tally::in_file(day(), 10, path.clone(), NOON)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("remove it"),
        "{error}"
    );
}
