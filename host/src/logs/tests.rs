//! The store on a real directory: rotation, the caps, age, restarts, torn lines, removal,
//! dropping when the writer is behind, and following.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::test_support::TempDir;

fn key(tenant: Option<&str>, name: &str) -> FunctionKey {
    FunctionKey::new(tenant, name)
}

fn config(per_function: u64, per_tenant: u64, total: u64) -> LogsConfig {
    LogsConfig {
        persist: true,
        max_bytes_per_function: per_function,
        max_bytes_per_tenant: per_tenant,
        max_bytes_total: total,
        max_age: Duration::from_secs(3600),
    }
}

/// A line of about `len` bytes of text, `n` in front.
fn line(n: usize, len: usize, version: &str, request_id: &str) -> LogLine {
    let mut text = format!("line {n} ");
    text.extend(std::iter::repeat_n('x', len.saturating_sub(text.len())));
    LogLine {
        time: crate::time::now_rfc3339(),
        version: version.into(),
        request_id: request_id.into(),
        stream: if n.is_multiple_of(2) {
            Stream::Stdout
        } else {
            Stream::Stderr
        },
        line: text,
    }
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                disk_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn all(limit: usize) -> LogQuery {
    LogQuery {
        limit,
        ..LogQuery::default()
    }
}

fn texts(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.line.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn segments_rotate_and_the_function_cap_keeps_the_newest() {
    let dir = TempDir::new("logs-rotate");
    let f = key(None, "f");
    let store = LogStore::open(&dir, config(64 << 10, 1 << 30, 1 << 30), [&f]).unwrap();
    let log = store.function(&f);
    // 400 lines of ~1 KiB: six times the cap, a request of four lines at a time.
    for r in 0..100 {
        log.append(
            (0..4)
                .map(|i| line(r * 4 + i, 1000, "v1", &format!("r{r}")))
                .collect(),
        );
    }
    store.settled().await;
    let fdir = dir.join("functions/f");
    let segments = files::segments(&fdir);
    assert!(segments.len() >= 3, "rotated into segments: {segments:?}");
    for (_, path) in &segments {
        let len = fs::metadata(path).unwrap().len();
        assert!(len <= LogsConfig::segment_bytes(&store.config), "{len}");
    }
    let on_disk = disk_bytes(&dir);
    assert!(on_disk <= 64 << 10, "{on_disk} bytes on disk, over the cap");
    assert_eq!(store.shared.bytes.load(Ordering::Relaxed), on_disk);
    assert!(
        on_disk >= 40 << 10,
        "retention keeps most of the cap: {on_disk}"
    );

    let lines = store.read(&f, &all(MAX_LIMIT));
    assert_eq!(
        texts(&lines).last().unwrap(),
        "line 399",
        "the newest stays"
    );
    let numbers: Vec<usize> = (texts(&lines).iter())
        .map(|t| t[5..].parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "oldest first, none missing: {numbers:?}"
    );
    assert!(numbers[0] > 300, "the oldest went: {numbers:?}");

    let newest = store.read(&f, &all(3));
    assert_eq!(texts(&newest), ["line 397", "line 398", "line 399"]);
    let one_request = LogQuery {
        request_id: Some("r98".into()),
        ..all(MAX_LIMIT)
    };
    assert_eq!(
        texts(&store.read(&f, &one_request)),
        ["line 392", "line 393", "line 394", "line 395"]
    );
}

#[tokio::test]
async fn a_small_cap_holds_and_a_line_over_it_is_not_written() {
    let dir = TempDir::new("logs-small");
    let f = key(None, "f");
    let store = LogStore::open(&dir, config(8 << 10, 1 << 30, 1 << 30), [&f]).unwrap();
    let log = store.function(&f);
    for r in 0..20 {
        // Each line longer than a segment (1 KiB here): a segment of its own.
        log.append(vec![line(r, 3000, "v1", "r")]);
        store.settled().await;
        let on_disk = disk_bytes(&dir);
        assert!(on_disk <= 8 << 10, "{on_disk} bytes after line {r}");
    }
    assert_eq!(texts(&store.read(&f, &all(10))), ["line 18", "line 19"]);
    log.append(vec![line(20, 9000, "v1", "r")]);
    store.settled().await;
    assert_eq!(store.shared.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(texts(&store.read(&f, &all(1))), ["line 19"]);
}

#[tokio::test]
async fn tenant_and_node_caps_count_every_function() {
    let dir = TempDir::new("logs-tenant");
    let (a, b, c) = (
        key(Some("acme"), "a"),
        key(Some("acme"), "b"),
        key(Some("zeta"), "c"),
    );
    let cfg = config(100 << 10, 128 << 10, 200 << 10);
    let store = LogStore::open(&dir, cfg, [&a, &b, &c]).unwrap();
    let logs = [store.function(&a), store.function(&b), store.function(&c)];
    for r in 0..300 {
        let log = &logs[r % 3];
        log.append(vec![line(r, 1500, "v1", &format!("r{r}"))]);
    }
    store.settled().await;
    let acme = disk_bytes(&dir.join("tenants/acme"));
    assert!(acme <= 128 << 10, "acme holds {acme} bytes");
    for name in ["acme/a", "acme/b", "zeta/c"] {
        let bytes = disk_bytes(&dir.join("tenants").join(name));
        assert!(bytes <= 100 << 10, "{name} holds {bytes} bytes");
        assert!(bytes > 0, "{name} keeps its newest lines");
    }
    assert!(disk_bytes(&dir) <= 200 << 10);
    // Both of acme's functions keep their newest lines.
    assert_eq!(texts(&store.read(&a, &all(1))), ["line 297"]);
    assert_eq!(texts(&store.read(&b, &all(1))), ["line 298"]);
}

#[tokio::test]
async fn a_node_that_does_not_persist_keeps_nothing() {
    let dir = TempDir::new("logs-off");
    let f = key(None, "f");
    let off = LogsConfig {
        persist: false,
        ..config(1 << 20, 1 << 30, 1 << 30)
    };
    let store = LogStore::open(&dir, off, [&f]).unwrap();
    store.function(&f).append(vec![line(1, 10, "v1", "r1")]);
    store.settled().await;
    assert!(store.read(&f, &all(10)).is_empty());
    assert_eq!(disk_bytes(&dir), 0);
}

#[tokio::test]
async fn lines_survive_a_restart_and_torn_ones_are_skipped() {
    let dir = TempDir::new("logs-restart");
    let (f, gone) = (key(None, "f"), key(None, "gone"));
    {
        let store = LogStore::open(&dir, config(1 << 20, 1 << 30, 1 << 30), [&f, &gone]).unwrap();
        store.function(&f).append(vec![line(1, 10, "v1", "r1")]);
        store.function(&gone).append(vec![line(2, 10, "v1", "r2")]);
        store.settled().await;
    }
    // A crash in the middle of a write: the segment ends in half a line, after a corrupt one.
    let (seq, path) = files::segments(&dir.join("functions/f")).pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"time\": garbage}\n{\"time\":\"2025-01-01T00:00:00Z\",\"versi");
    fs::write(&path, bytes).unwrap();

    // `gone` was deleted while the node was down.
    let store = LogStore::open(&dir, config(1 << 20, 1 << 30, 1 << 30), [&f]).unwrap();
    assert!(!dir.join("functions/gone").exists());
    assert_eq!(texts(&store.read(&f, &all(10))), ["line 1"]);
    store.function(&f).append(vec![line(3, 10, "v2", "r3")]);
    store.settled().await;
    assert_eq!(texts(&store.read(&f, &all(10))), ["line 1", "line 3"]);
    let segments = files::segments(&dir.join("functions/f"));
    assert_eq!(
        segments.len(),
        2,
        "a restarted node starts a new segment: {segments:?}"
    );
    assert!(segments[1].0 > seq);
    let v2 = LogQuery {
        version: Some("v2".into()),
        ..all(10)
    };
    assert_eq!(texts(&store.read(&f, &v2)), ["line 3"]);
}

#[tokio::test]
async fn old_lines_go_by_age() {
    let dir = TempDir::new("logs-age");
    let f = key(None, "f");
    let fdir = dir.join("functions/f");
    fs::create_dir_all(&fdir).unwrap();
    let old = LogLine {
        time: "2001-01-01T00:00:00Z".into(),
        ..line(1, 10, "v1", "r1")
    };
    let mut record = serde_json::to_vec(&old).unwrap();
    record.push(b'\n');
    let path = files::segment_path(&fdir, 1);
    fs::write(&path, &record).unwrap();
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(978_307_200))
        .unwrap();
    drop(file);
    // A second segment, new on disk, whose old line is not shown either.
    fs::write(files::segment_path(&fdir, 2), &record).unwrap();

    let store = LogStore::open(&dir, config(1 << 20, 1 << 30, 1 << 30), [&f]).unwrap();
    assert!(!path.exists(), "a segment older than max_age goes at start");
    assert!(store.read(&f, &all(10)).is_empty());
    store.function(&f).append(vec![line(2, 10, "v1", "r2")]);
    store.settled().await;
    assert_eq!(texts(&store.read(&f, &all(10))), ["line 2"]);
    let since_now = LogQuery {
        since: Some(crate::time::now_secs() + 60),
        ..all(10)
    };
    assert!(store.read(&f, &since_now).is_empty());
}

#[tokio::test]
async fn a_removed_function_takes_its_logs_and_late_lines_are_not_written() {
    let dir = TempDir::new("logs-remove");
    let f = key(Some("acme"), "f");
    let store = LogStore::open(&dir, config(1 << 20, 1 << 30, 1 << 30), [&f]).unwrap();
    let old = store.function(&f);
    old.append(vec![line(1, 10, "v1", "r1")]);
    store.settled().await;
    assert!(dir.join("tenants/acme/f").exists());
    store.remove(&f);
    // A request of the deleted function that ends after the delete.
    old.append(vec![line(2, 10, "v1", "r2")]);
    store.settled().await;
    assert!(
        !dir.join("tenants/acme").exists(),
        "{:?}",
        files::scan(&dir)
    );
    assert!(store.read(&f, &all(10)).is_empty());
    assert_eq!(store.shared.bytes.load(Ordering::Relaxed), 0);
    // Deployed again: a new log.
    store.function(&f).append(vec![line(3, 10, "v2", "r3")]);
    store.settled().await;
    assert_eq!(texts(&store.read(&f, &all(10))), ["line 3"]);
}

#[tokio::test]
async fn lines_over_the_queue_are_dropped_and_said_so() {
    let dir = TempDir::new("logs-drop");
    let f = key(None, "f");
    let store = LogStore::open(&dir, config(1 << 20, 1 << 30, 1 << 30), [&f]).unwrap();
    let log = store.function(&f);
    // The writer is behind by a full queue.
    store.shared.queued.store(QUEUE_BYTES, Ordering::Relaxed);
    log.append(vec![line(1, 10, "v1", "r1"), line(2, 10, "v1", "r1")]);
    assert_eq!(store.shared.dropped.load(Ordering::Relaxed), 2);
    store.shared.queued.store(0, Ordering::Relaxed);
    log.append(vec![line(3, 10, "v1", "r2")]);
    store.settled().await;
    let lines = store.read(&f, &all(10));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].line.contains("2 lines of output dropped"),
        "{lines:?}"
    );
    assert_eq!(texts(&lines[1..]), ["line 3"]);
    let mut metrics = String::new();
    store.render(&mut metrics);
    assert!(
        metrics.contains("tensorlet_guest_log_lines_dropped_total 2"),
        "{metrics}"
    );
}

/// A follower's next line, within a bounded wait.
async fn next_line(follow: &mut Follow) -> String {
    tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .expect("a line within 10s")
        .expect("the stream goes on")
        .line
}

#[tokio::test]
async fn a_follower_gets_what_is_kept_then_each_new_line_once() {
    let dir = TempDir::new("logs-follow");
    let f = key(None, "f");
    let store = LogStore::open(&dir, config(1 << 20, 1 << 30, 1 << 30), [&f]).unwrap();
    let log = store.function(&f);
    log.append(vec![line(1, 10, "v1", "r1")]);
    store.settled().await;
    let only_r2 = LogQuery {
        request_id: Some("r2".into()),
        ..all(10)
    };
    let mut everything = store.follow(&f, all(10));
    let mut filtered = store.follow(&f, only_r2);
    log.append(vec![line(2, 10, "v1", "r2"), line(3, 10, "v1", "r3")]);
    assert!(next_line(&mut everything).await.starts_with("line 1"));
    assert!(next_line(&mut everything).await.starts_with("line 2"));
    assert!(next_line(&mut everything).await.starts_with("line 3"));
    assert!(next_line(&mut filtered).await.starts_with("line 2"));
    // Deleting the function ends its followers' streams.
    store.remove(&f);
    store.settled().await;
    assert!(everything.next().await.is_none());
    store.close_followers();
    assert!(store.follow(&f, all(1)).next().await.is_none());
}
