//! The embedded event log: one SQLite database (WAL, `synchronous=FULL`) in the data folder,
//! one table whose row id is the offset plus one. An append is one transaction: when it
//! returns, the batch is on disk. Separate processes (ingest, projector, query) may share the
//! file; SQLite's locking orders their access.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::watch;

use crate::{LogError, LogRecord, Partition, Positions};

/// File name of the embedded log inside the data folder.
pub const FILE_NAME: &str = "events.sqlite";

/// The embedded SQLite event log.
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    appended: watch::Sender<u64>,
}

impl SqliteLog {
    /// Opens (creating if needed) the log in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("failed to create data folder {}", data_dir.display()))?;
        let path = data_dir.join(FILE_NAME);
        let writer = connect(&path)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    payload BLOB NOT NULL
                );",
            )
            .context("failed to create the events table")?;
        let reader = connect(&path)?;
        let (appended, _) = watch::channel(0);
        Ok(SqliteLog { inner: Arc::new(Inner { path, writer: Mutex::new(writer), reader: Mutex::new(reader), appended }) })
    }

    /// Returns the database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends encoded records in one durable transaction.
    pub async fn append(&self, payloads: Vec<Vec<u8>>) -> Result<(), LogError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let count = payloads.len() as u64;
        run_blocking(move || {
            let mut conn = inner.writer.lock().expect("log writer lock");
            let tx = conn.transaction().context("failed to begin append")?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO events (payload) VALUES (?1)")?;
                for payload in &payloads {
                    insert.execute(params![payload])?;
                }
            }
            tx.commit().context("failed to commit append")?;
            Ok(())
        })
        .await?;
        self.inner.appended.send_modify(|n| *n += count);
        Ok(())
    }

    /// Reads up to `max` records from `from` on; the embedded log has partition 0 only.
    pub async fn read(&self, partition: Partition, from: i64, max: usize) -> Result<Vec<LogRecord>, LogError> {
        if partition != 0 {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        run_blocking(move || {
            let conn = inner.reader.lock().expect("log reader lock");
            let mut stmt = conn.prepare_cached("SELECT seq, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt.query_map(params![from, max as i64], |row| {
                Ok(LogRecord { partition: 0, offset: row.get::<_, i64>(0)? - 1, payload: row.get(1)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Returns the next offset of partition 0.
    pub async fn end_positions(&self) -> Result<Positions, LogError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let conn = inner.reader.lock().expect("log reader lock");
            let end: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
            Ok(Positions::from([(0, end)]))
        })
        .await
    }

    /// Returns a receiver that changes on every append made through this handle.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("failed to open event log {}", path.display()))?;
    use_wal(&conn, Duration::from_secs(10)).context("failed to switch the event log to WAL")?;
    // FULL: a commit is on disk before `append` returns, power loss included.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Sets `busy` as the connection's busy timeout and puts its database in WAL mode. SQLite
/// answers "database is locked" at once, without waiting, when another process holds the
/// file while the mode changes (two roles opening a fresh data folder together), so the
/// switch is retried until `busy` has passed; a database already in WAL mode needs none.
pub fn use_wal(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    let started = std::time::Instant::now();
    loop {
        let attempt = conn.pragma_query_value(None, "journal_mode", |row| row.get::<_, String>(0)).and_then(|mode| {
            if mode.eq_ignore_ascii_case("wal") {
                Ok(())
            } else {
                conn.pragma_update(None, "journal_mode", "WAL")
            }
        });
        match attempt {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy && started.elapsed() < busy => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Runs SQLite work off the async runtime, mapping failures to `Unavailable`: a locked,
/// full or unreadable database is a backend that cannot serve now.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Unexpected(anyhow::anyhow!("log task failed: {e}")))?
        .map_err(LogError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_opening_a_fresh_database_together_all_get_wal() {
        // Processes starting on one new data folder race to switch it to WAL.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("race.sqlite");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let conn = Connection::open(&path).unwrap();
                        use_wal(&conn, Duration::from_secs(10)).map_err(|e| e.to_string())?;
                        conn.pragma_query_value(None, "journal_mode", |row| row.get::<_, String>(0)).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for thread in threads {
                assert_eq!(thread.join().unwrap().as_deref(), Ok("wal"));
            }
        }
    }

    #[tokio::test]
    async fn appends_durably_and_reads_back_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path()).unwrap();
        let appended = log.appended();
        log.append(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]).await.unwrap();
        assert!(appended.has_changed().unwrap());
        assert_eq!(log.end_positions().await.unwrap(), Positions::from([(0, 3)]));
        let records = log.read(0, 1, 10).await.unwrap();
        assert_eq!(records.iter().map(|r| (r.offset, r.payload.clone())).collect::<Vec<_>>(), vec![(1, b"b".to_vec()), (2, b"c".to_vec())]);
        // A second handle on the same file (another process) sees the same records.
        let other = SqliteLog::open(dir.path()).unwrap();
        assert_eq!(other.read(0, 0, 2).await.unwrap().len(), 2);
    }
}
