//! A durable, append-only event queue on disk, one per webhook.
//!
//! Appends go to one writer thread that batches whatever is waiting, writes
//! it, and calls `fdatasync` once for the batch (group commit): an event is
//! acknowledged to the provider only after that returns, so a kill -9 at any
//! moment loses nothing acknowledged, and throughput holds because many
//! events share one sync. De-duplication ids are made durable in the same
//! commit.
//!
//! Layout of a queue directory:
//!
//! ```text
//! seg-<first seq, 20 digits>.log   records: [len u32][crc32 u32][payload]
//! cursor                           last seq delivered or dead-lettered
//! dedup.log                        "<expires unix ms> <event id>" lines
//! dead/<seq>.json                  dead letters
//! ```
//!
//! Delivery is at least once: a crash between delivering an event and
//! recording the cursor delivers it again (with the same `x-sluice-event-id`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};

const SEGMENT_BYTES: u64 = 16 << 20;
const MAX_BATCH: usize = 4096;
const MAX_RECORD: u32 = 64 << 20;

pub use crate::dead_letter::StoredEvent;

/// A record's payload: `[meta len u32][meta JSON][body]`.
fn to_payload(event: &StoredEvent) -> Vec<u8> {
    let meta = serde_json::to_vec(event).expect("event metadata serializes");
    let mut payload = Vec::with_capacity(4 + meta.len() + event.body.len());
    payload.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(&event.body);
    payload
}

fn from_payload(payload: &[u8]) -> io::Result<StoredEvent> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "corrupt queue record");
    let meta_len =
        u32::from_le_bytes(payload.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
    let meta = payload.get(4..4 + meta_len).ok_or_else(bad)?;
    let mut event: StoredEvent = serde_json::from_slice(meta).map_err(|_| bad())?;
    event.body = Bytes::copy_from_slice(&payload[4 + meta_len..]);
    Ok(event)
}
/// What the writer has made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub last_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the webhook queue is full ({0} bytes on disk)")]
    Full(u64),
    #[error("writing the webhook queue failed: {0}")]
    Io(String),
    #[error("the webhook queue is shutting down")]
    Closed,
}

struct Append {
    event: StoredEvent,
    dedup_expires_ms: Option<u64>,
    done: oneshot::Sender<Result<u64, String>>,
}

/// Counters the metrics read.
#[derive(Default)]
pub struct QueueStats {
    pub fsyncs: AtomicU64,
    pub bytes: AtomicU64,
    pub cursor: AtomicU64,
    pub last_seq: AtomicU64,
}

/// The sending side of a queue; cheap to clone.
#[derive(Clone)]
pub struct QueueWriter {
    tx: mpsc::Sender<Append>,
    max_bytes: u64,
    pub stats: Arc<QueueStats>,
}

impl QueueWriter {
    /// Stores `event` durably (with its dedup id, if given) and returns its seq.
    pub async fn append(
        &self,
        event: StoredEvent,
        dedup_expires_ms: Option<u64>,
    ) -> Result<u64, EnqueueError> {
        let used = self.stats.bytes.load(Ordering::Relaxed);
        if used + event.body.len() as u64 > self.max_bytes {
            return Err(EnqueueError::Full(used));
        }
        let (done, result) = oneshot::channel();
        self.tx
            .send(Append {
                event,
                dedup_expires_ms,
                done,
            })
            .await
            .map_err(|_| EnqueueError::Closed)?;
        result
            .await
            .map_err(|_| EnqueueError::Closed)?
            .map_err(EnqueueError::Io)
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let seq = name
                .strip_prefix("seg-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((seq, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Reads whole, intact records from `file`; stops at a torn or corrupt tail.
/// Returns the events and the length of the intact prefix.
fn read_records(file: &mut File) -> io::Result<(Vec<StoredEvent>, u64)> {
    let mut reader = BufReader::new(file);
    let mut events = Vec::new();
    let mut good = 0u64;
    loop {
        let mut head = [0u8; 8];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(head[..4].try_into().unwrap());
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
        if len > MAX_RECORD {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        match from_payload(&payload) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
        good += 8 + u64::from(len);
    }
    Ok((events, good))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The metric handles a queue keeps current.
#[derive(Clone, Default)]
pub struct QueueMetrics {
    pub fsyncs: Counter,
    /// Accepted events not yet delivered (or dead-lettered).
    pub depth: Gauge,
}

/// Everything recovered from a queue directory at start.
pub struct Recovered {
    pub pending: u64,
    pub dedup: HashMap<String, u64>,
}

/// Opens (creating if needed) the queue in `dir`; spawns its writer thread.
/// Returns the writer, the reader for the deliverer, and what was recovered.
pub fn open(
    dir: &Path,
    max_bytes: u64,
    now_ms: u64,
    metrics: QueueMetrics,
) -> io::Result<(QueueWriter, QueueReader, Recovered)> {
    fs::create_dir_all(dir.join("dead"))?;
    let cursor = read_cursor(dir)?;
    let mut last_seq = cursor;
    let mut bytes = 0u64;
    let mut pending = 0u64;
    let mut segment_ids = Vec::new();
    let all = segments(dir)?;
    for (index, (_, path)) in all.iter().enumerate() {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let (events, good) = read_records(&mut file)?;
        let len = file.metadata()?.len();
        if good < len {
            if index + 1 == all.len() {
                // A torn write from a crash: never acknowledged, drop it.
                file.set_len(good)?;
                file.sync_all()?;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is corrupt in the middle of the queue", path.display()),
                ));
            }
        }
        if let Some(last) = events.last() {
            last_seq = last_seq.max(last.seq);
        }
        pending += events.iter().filter(|e| e.seq > cursor).count() as u64;
        for event in &events {
            if let Some(expires) = event.dedup_expires_ms.filter(|e| *e > now_ms) {
                segment_ids.push((event.id.clone(), expires));
            }
        }
        bytes += good;
    }
    let mut dedup = load_dedup(dir, now_ms)?;
    dedup.extend(segment_ids);
    metrics.depth.set(pending as i64);
    let stats = Arc::new(QueueStats::default());
    stats.bytes.store(bytes, Ordering::Relaxed);
    stats.cursor.store(cursor, Ordering::Relaxed);
    stats.last_seq.store(last_seq, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(MAX_BATCH);
    let (committed_tx, committed_rx) = watch::channel(Committed { last_seq });
    let writer_state = WriterState {
        dir: dir.to_owned(),
        next_seq: last_seq + 1,
        active: None,
        dedup_log: OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dedup.log"))?,
        stats: stats.clone(),
        committed: committed_tx,
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("sluice-queue-writer".into())
        .spawn(move || writer_thread(writer_state, rx))?;
    let reader = QueueReader {
        dir: dir.to_owned(),
        cursor,
        committed: committed_rx,
        stats: stats.clone(),
        current: None,
        cursor_file_lock: Arc::new(Mutex::new(())),
        depth: metrics.depth,
        cursor_written: std::time::Instant::now(),
        cursor_dirty: false,
    };
    Ok((
        QueueWriter {
            tx,
            max_bytes,
            stats,
        },
        reader,
        Recovered { pending, dedup },
    ))
}

fn read_cursor(dir: &Path) -> io::Result<u64> {
    match fs::read_to_string(dir.join("cursor")) {
        Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Loads unexpired dedup ids and rewrites the log without the expired ones.
fn load_dedup(dir: &Path, now_ms: u64) -> io::Result<HashMap<String, u64>> {
    let path = dir.join("dedup.log");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut ids = HashMap::new();
    for line in text.lines() {
        if let Some((expires, id)) = line.split_once(' ')
            && let Ok(expires) = expires.parse::<u64>()
            && expires > now_ms
        {
            ids.insert(id.to_owned(), expires);
        }
    }
    let tmp = dir.join("dedup.log.tmp");
    let mut out = File::create(&tmp)?;
    for (id, expires) in &ids {
        writeln!(out, "{expires} {id}")?;
    }
    out.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(ids)
}

struct WriterState {
    dir: PathBuf,
    next_seq: u64,
    active: Option<(File, u64)>,
    dedup_log: File,
    stats: Arc<QueueStats>,
    committed: watch::Sender<Committed>,
    metrics: QueueMetrics,
}

impl WriterState {
    fn segment_for_write(&mut self) -> io::Result<&mut (File, u64)> {
        let rotate = match &self.active {
            None => true,
            Some((_, size)) => *size >= SEGMENT_BYTES,
        };
        if rotate {
            let existing = segments(&self.dir)?;
            // Reopen the newest segment after a restart if it has room.
            let reuse = match (&self.active, existing.last()) {
                (None, Some((_, path))) => {
                    let len = fs::metadata(path)?.len();
                    (len < SEGMENT_BYTES).then(|| (path.clone(), len))
                }
                _ => None,
            };
            let (path, size) = match reuse {
                Some(found) => found,
                None => (self.dir.join(segment_name(self.next_seq)), 0),
            };
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            if size == 0 {
                sync_dir(&self.dir)?;
            }
            self.active = Some((file, size));
        }
        Ok(self.active.as_mut().expect("just opened"))
    }

    fn write_batch(&mut self, batch: &mut [Append]) -> io::Result<()> {
        let mut buffer = Vec::new();
        let mut dedup_lines = String::new();
        for append in batch.iter_mut() {
            append.event.seq = self.next_seq;
            append.event.dedup_expires_ms = append.dedup_expires_ms;
            self.next_seq += 1;
            let payload = to_payload(&append.event);
            buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buffer.extend_from_slice(&payload);
            if let Some(expires) = append.dedup_expires_ms {
                dedup_lines.push_str(&format!("{expires} {}\n", append.event.id));
            }
        }
        if !dedup_lines.is_empty() {
            // Not synced here: the segment record carries the id durably; the
            // log is synced before a segment is deleted (QueueReader::ack).
            self.dedup_log.write_all(dedup_lines.as_bytes())?;
        }
        let (file, size) = self.segment_for_write()?;
        file.write_all(&buffer)?;
        file.sync_data()?;
        *size += buffer.len() as u64;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.metrics.fsyncs.inc();
        self.stats
            .bytes
            .fetch_add(buffer.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn writer_thread(mut state: WriterState, mut rx: mpsc::Receiver<Append>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let result = state.write_batch(&mut batch);
        if result.is_ok() {
            let last = state.next_seq - 1;
            state.stats.last_seq.store(last, Ordering::Relaxed);
            let cursor = state.stats.cursor.load(Ordering::Relaxed);
            state.metrics.depth.set(last.saturating_sub(cursor) as i64);
            state.committed.send_replace(Committed { last_seq: last });
        } else {
            // Nothing of this batch is acknowledged; a partial write is a torn
            // tail that recovery drops. Start a fresh segment for the next batch.
            state.active = None;
        }
        for append in batch {
            let reply = match &result {
                Ok(()) => Ok(append.event.seq),
                Err(e) => Err(e.to_string()),
            };
            let _ = append.done.send(reply);
        }
    }
}

/// The consuming side: yields committed events in order, from the cursor on.
pub struct QueueReader {
    dir: PathBuf,
    cursor: u64,
    committed: watch::Receiver<Committed>,
    stats: Arc<QueueStats>,
    /// The open segment: its first seq, the file, and the read offset.
    current: Option<(u64, File, u64)>,
    cursor_file_lock: Arc<Mutex<()>>,
    depth: Gauge,
    /// The cursor on disk lags by at most this; a crash redelivers the gap.
    cursor_written: std::time::Instant,
    cursor_dirty: bool,
}

/// How often the delivery cursor is written while events flow.
const CURSOR_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

impl QueueReader {
    pub fn stats(&self) -> Arc<QueueStats> {
        self.stats.clone()
    }

    /// The next event after the cursor, waiting until one is committed.
    /// `None` when the writer is gone.
    pub async fn next(&mut self) -> Option<StoredEvent> {
        loop {
            let committed = self.committed.borrow().last_seq;
            if committed > self.cursor {
                match self.read_after_cursor() {
                    Ok(Some(event)) => return Some(event),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(%error, dir = %self.dir.display(), "reading the webhook queue failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // Idle: make the cursor current before waiting.
            if self.cursor_dirty
                && let Err(error) = self.flush_cursor()
            {
                tracing::error!(%error, "recording webhook progress failed");
            }
            if self.committed.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Scans forward from the current segment for the first event past the cursor.
    fn read_after_cursor(&mut self) -> io::Result<Option<StoredEvent>> {
        let committed = self.committed.borrow().last_seq;
        loop {
            if self.current.is_none() {
                let all = segments(&self.dir)?;
                // The segment holding cursor + 1: the last one starting at or before it.
                let Some((first, path)) = all
                    .iter()
                    .rev()
                    .find(|(first, _)| *first <= self.cursor + 1)
                    .or_else(|| all.first())
                    .cloned()
                else {
                    return Ok(None);
                };
                self.current = Some((first, File::open(path)?, 0));
            }
            let (first, file, offset) = self.current.as_mut().expect("opened above");
            file.seek(SeekFrom::Start(*offset))?;
            let mut head = [0u8; 8];
            match file.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // End of this segment: move on if a newer one exists.
                    let first = *first;
                    let newer = segments(&self.dir)?.into_iter().find(|(f, _)| *f > first);
                    match newer {
                        Some((f, path)) if self.cursor + 1 >= f || committed >= f => {
                            self.current = Some((f, File::open(path)?, 0));
                            continue;
                        }
                        _ => return Ok(None),
                    }
                }
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes(head[..4].try_into().unwrap());
            let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            file.read_exact(&mut payload)?;
            if crc32fast::hash(&payload) != crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "queue record checksum mismatch",
                ));
            }
            *offset += 8 + u64::from(len);
            let event = from_payload(&payload)?;
            if event.seq > self.cursor {
                return Ok(Some(event));
            }
        }
    }

    /// Marks everything up to `seq` done. The cursor reaches the disk within
    /// `CURSOR_PERIOD` (or when the queue goes idle); at-least-once delivery
    /// covers the gap after a crash.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        self.cursor = seq;
        self.cursor_dirty = true;
        self.stats.cursor.store(seq, Ordering::Relaxed);
        let last = self.stats.last_seq.load(Ordering::Relaxed);
        self.depth.set(last.saturating_sub(seq) as i64);
        if self.cursor_written.elapsed() >= CURSOR_PERIOD {
            self.flush_cursor()?;
        }
        Ok(())
    }

    /// Writes the cursor now if it moved (on a graceful stop).
    pub fn close(&mut self) {
        if self.cursor_dirty
            && let Err(error) = self.flush_cursor()
        {
            tracing::error!(%error, "recording webhook progress failed");
        }
    }

    /// Writes the cursor and removes segments that hold only done events.
    fn flush_cursor(&mut self) -> io::Result<()> {
        let seq = self.cursor;
        let _guard = self.cursor_file_lock.lock().expect("cursor lock");
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, seq.to_string())?;
        fs::rename(&tmp, self.dir.join("cursor"))?;
        self.cursor_written = std::time::Instant::now();
        self.cursor_dirty = false;
        let all = segments(&self.dir)?;
        let mut dedup_synced = false;
        for window in all.windows(2) {
            let ((first, path), (next_first, _)) = (&window[0], &window[1]);
            // Every event of this segment is below the next segment's first seq.
            if *next_first <= seq + 1 && self.current.as_ref().is_none_or(|(f, _, _)| f != first) {
                if !dedup_synced {
                    // The segment was the durable copy of its dedup ids.
                    File::open(self.dir.join("dedup.log"))?.sync_all()?;
                    dedup_synced = true;
                }
                let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(path)?;
                self.stats.bytes.fetch_sub(
                    size.min(self.stats.bytes.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;

    fn event(id: &str, body: &'static str) -> StoredEvent {
        StoredEvent {
            seq: 0,
            id: id.into(),
            received_at_ms: 1,
            verified_by: "GitHub".into(),
            headers: vec![("x-a".into(), BASE64.encode("1"))],
            dedup_expires_ms: None,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-queue-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_the_cursor_skips_delivered() {
        let dir = temp("reopen");
        {
            let (writer, mut reader, _) = open(&dir, 1 << 30, 0, QueueMetrics::default()).unwrap();
            for i in 0..5 {
                let seq = writer
                    .append(event(&format!("e{i}"), "body"), Some(u64::MAX))
                    .await
                    .unwrap();
                assert_eq!(seq, i + 1);
            }
            let first = reader.next().await.unwrap();
            assert_eq!(
                (first.seq, first.id.as_str(), &first.body[..]),
                (1, "e0", &b"body"[..])
            );
            reader.ack(2).unwrap();
            reader.flush_cursor().unwrap();
        }
        let (writer, mut reader, recovered) =
            open(&dir, 1 << 30, 0, QueueMetrics::default()).unwrap();
        assert_eq!(recovered.pending, 3);
        assert_eq!(recovered.dedup.len(), 5);
        assert_eq!(reader.next().await.unwrap().seq, 3);
        let seq = writer.append(event("e5", "more"), None).await.unwrap();
        assert_eq!(seq, 6, "sequence continues after a restart");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_torn_tail_is_dropped_on_recovery() {
        let dir = temp("torn");
        {
            let (writer, _, _) = open(&dir, 1 << 30, 0, QueueMetrics::default()).unwrap();
            writer.append(event("a", "x"), None).await.unwrap();
            writer.append(event("b", "y"), None).await.unwrap();
        }
        let (_, path) = segments(&dir).unwrap().pop().unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let (_, mut reader, recovered) = open(&dir, 1 << 30, 0, QueueMetrics::default()).unwrap();
        assert_eq!(recovered.pending, 2);
        assert_eq!(reader.next().await.unwrap().id, "a");
        assert_eq!(reader.next().await.unwrap().id, "b");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn full_queue_refuses() {
        let dir = temp("full");
        let (writer, _, _) = open(&dir, 100, 0, QueueMetrics::default()).unwrap();
        writer.append(event("a", "0123456789"), None).await.unwrap();
        let error = writer
            .append(event("b", "0123456789"), None)
            .await
            .unwrap_err();
        assert!(matches!(error, EnqueueError::Full(_)), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let dir = temp("group");
        let (writer, _, _) = open(&dir, 1 << 30, 0, QueueMetrics::default()).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(
                    async move { w.append(event(&format!("e{i}"), "b"), None).await.unwrap() },
                )
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        let fsyncs = writer.stats.fsyncs.load(Ordering::Relaxed);
        assert!(fsyncs < 200, "{fsyncs} fsyncs for 200 appends: no grouping");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn dedup_ids_survive_a_crash_through_the_segment() {
        let dir = temp("dedup-crash");
        {
            let (writer, _, _) = open(&dir, 1 << 30, 0, QueueMetrics::default()).unwrap();
            writer
                .append(event("evt_1", "x"), Some(10_000))
                .await
                .unwrap();
        }
        // dedup.log is not synced per batch: pretend the crash lost it.
        fs::remove_file(dir.join("dedup.log")).unwrap();
        let (_, _, recovered) = open(&dir, 1 << 30, 5_000, QueueMetrics::default()).unwrap();
        assert_eq!(recovered.dedup.get("evt_1"), Some(&10_000));
        let (_, _, later) = open(&dir, 1 << 30, 20_000, QueueMetrics::default()).unwrap();
        assert!(later.dedup.is_empty(), "expired ids are not recovered");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expired_dedup_ids_are_compacted_away() {
        let dir = temp("dedup");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("dedup.log"), "100 old\n5000 fresh\ngarbage\n").unwrap();
        let ids = load_dedup(&dir, 1000).unwrap();
        assert_eq!(ids.keys().collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(
            fs::read_to_string(dir.join("dedup.log")).unwrap(),
            "5000 fresh\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
