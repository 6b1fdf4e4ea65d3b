//! The event log, Agora's source of truth: ingest appends validated, pseudonymized events;
//! the projector (and the audit) read them back by position. Backends sit behind one enum:
//! the embedded SQLite log in the data folder, or Kafka.
//!
//! Positions follow Kafka's shape so both backends fit: a log has partitions, a record has
//! an offset in its partition, and a consumer's position is the next offset it will read.
//! The embedded log has a single partition, 0.

pub mod codec;
pub mod kafka;
pub mod sqlite;

use std::collections::BTreeMap;

use agora_schemas::Event;
use tokio::sync::watch;

pub use codec::{decode, encode, DecodeError};
pub use kafka::{GroupConsumer, KafkaLog, KafkaSettings};
pub use sqlite::SqliteLog;

/// A partition number.
pub type Partition = i32;

/// Next offset to read, per partition.
pub type Positions = BTreeMap<Partition, i64>;

/// One record read from the log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub partition: Partition,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// Failures at the log boundary.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The backend cannot take or give events right now; the caller may retry.
    #[error("event log unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The event log, whichever backend holds it.
#[derive(Clone)]
pub enum EventLog {
    Sqlite(SqliteLog),
    Kafka(KafkaLog),
}

impl EventLog {
    /// Appends `events` in order and returns once they are durable.
    pub async fn append(&self, events: &[Event]) -> Result<(), LogError> {
        match self {
            EventLog::Sqlite(log) => log.append(events.iter().map(encode).collect()).await,
            EventLog::Kafka(log) => log.append(events.iter().map(|e| (partition_key(e).as_bytes().to_vec(), encode(e))).collect()).await,
        }
    }

    /// Reads at most `max` records of `partition` from offset `from` on.
    pub async fn read(&self, partition: Partition, from: i64, max: usize) -> Result<Vec<LogRecord>, LogError> {
        match self {
            EventLog::Sqlite(log) => log.read(partition, from, max).await,
            EventLog::Kafka(log) => log.read(partition, from, max).await,
        }
    }

    /// Returns, per partition, the offset the next appended record will get.
    pub async fn end_positions(&self) -> Result<Positions, LogError> {
        match self {
            EventLog::Sqlite(log) => log.end_positions().await,
            EventLog::Kafka(log) => log.end_positions().await,
        }
    }

    /// Returns a receiver that changes whenever this process appends to the log, so a
    /// projector in the same process can wake up at once instead of at its next poll.
    pub fn appended(&self) -> watch::Receiver<u64> {
        match self {
            EventLog::Sqlite(log) => log.appended(),
            EventLog::Kafka(log) => log.appended(),
        }
    }

    /// Returns the backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            EventLog::Sqlite(_) => "sqlite",
            EventLog::Kafka(_) => "kafka",
        }
    }
}

/// Returns the key that places an event in its partition: its consultation, so one
/// consultation's events stay in order, or its organization when it has no consultation.
pub fn partition_key(event: &Event) -> &str {
    event.consultation_id.as_deref().unwrap_or(&event.organization_id)
}

/// Returns how many records lie between `positions` and `ends`: what a consumer at
/// `positions` has not read yet.
pub fn lag(ends: &Positions, positions: &Positions) -> u64 {
    ends.iter().map(|(partition, end)| (end - positions.get(partition).copied().unwrap_or(0)).max(0) as u64).sum()
}
