//! The Kafka event log (production): ingest produces to the events topic, projectors consume
//! it as one consumer group, the audit and rebuilds read it partition by partition.
//!
//! - Producing is idempotent with `acks=all` and zstd compression, keyed by `consultation_id`
//!   (by organization when there is none), so each consultation's events keep their order in
//!   one partition. `append` returns only when the broker acknowledged every record, and fails
//!   with [`LogError::Unavailable`] once the bounded produce timeout has passed.
//! - Consuming ([`GroupConsumer`]) never commits on its own: the projector commits a position
//!   only after the store applied every record before it. Records fetched for a partition that
//!   a rebalance took away are dropped, to be read again by the new owner from the last
//!   committed position; a commit refused because the group moved on (`ERR__STATE`, illegal
//!   generation, rebalance in progress) is logged and tolerated.
//! - The dead-letter topic receives what the projector cannot apply, with the reason and the
//!   source position in headers.
//! - Topics are created when missing, with a configurable partition count.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{LogError, LogRecord, Partition, Positions};

/// Everything the Kafka log needs; see [`KafkaSettings::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Where records the projector cannot apply go.
    pub dead_letter_topic: String,
    /// Partition count used when the topics are created here.
    pub partitions: i32,
    /// Replication factor used when the topics are created here.
    pub replication_factor: i32,
    /// The projectors' consumer group.
    pub group_id: String,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Longest the broker may hold a consumer's fetch while waiting for data.
    pub fetch_wait: Duration,
    /// Longest an append waits for the broker's acknowledgement before giving up.
    pub produce_timeout: Duration,
    /// Longest a metadata, watermark or offset request waits.
    pub request_timeout: Duration,
}

impl KafkaSettings {
    /// Returns settings for `brokers` and `topic` with the defaults: dead-letter topic
    /// `<topic>.dead-letter`, 6 partitions, replication 1, group `agora-projector`, 10 s
    /// sessions with 1 s heartbeats, 500 ms fetch wait, 10 s produce timeout, 5 s request timeout.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        KafkaSettings {
            brokers: brokers.into(),
            dead_letter_topic: format!("{topic}.dead-letter"),
            topic,
            partitions: 6,
            replication_factor: 1,
            group_id: "agora-projector".into(),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            fetch_wait: Duration::from_millis(500),
            produce_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", "agora");
        config
    }
}

/// The Kafka event log.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    /// Replaced when it fails fatally (fenced after a timeout's epoch bump, say): an
    /// idempotent producer cannot recover from that, a new one can.
    producer: RwLock<Arc<FutureProducer>>,
    /// A group-less consumer for metadata and watermarks; a second one carries the group id
    /// to read the projectors' committed positions without joining the group.
    metadata: BaseConsumer,
    group_offsets: BaseConsumer,
    /// One end prober per topic (events, dead letters); see [`probe_ends`].
    end_probers: [Mutex<BaseConsumer<ProbeContext>>; 2],
    reader: Mutex<Option<Reader>>,
    appended: watch::Sender<u64>,
}

/// Why an append failed: the error for the caller, the broker's or librdkafka's code, and
/// whether a record had been handed to the producer (so its idempotence state moved on).
struct ProduceFailure {
    error: LogError,
    code: Option<RDKafkaErrorCode>,
    delivered: bool,
}

/// A cached assignment for sequential `read` calls (rebuilds, the audit).
struct Reader {
    consumer: BaseConsumer,
    partition: Partition,
    next: i64,
}

impl KafkaLog {
    /// Connects to the brokers and creates the events and dead-letter topics when missing.
    pub async fn open(settings: KafkaSettings) -> anyhow::Result<Self> {
        let producer = RwLock::new(Arc::new(new_producer(&settings)?));
        let metadata: BaseConsumer = settings.client_config().create().context("failed to create the Kafka metadata client")?;
        let group_offsets: BaseConsumer = settings
            .client_config()
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .context("failed to create the Kafka offsets client")?;
        let prober = || -> anyhow::Result<Mutex<BaseConsumer<ProbeContext>>> {
            Ok(Mutex::new(
                settings
                    .client_config()
                    .set("group.id", "agora-end-probe")
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "true")
                    // End-of-file comes with an empty fetch: do not let the broker hold it.
                    .set("fetch.wait.max.ms", "1")
                    .create_with_context(ProbeContext)
                    .context("failed to create a kafka end prober")?,
            ))
        };
        let end_probers = [prober()?, prober()?];
        let (appended, _) = watch::channel(0);
        let log = KafkaLog {
            inner: Arc::new(Inner { settings, producer, metadata, group_offsets, end_probers, reader: Mutex::new(None), appended }),
        };
        log.ensure_topics().await?;
        Ok(log)
    }

    async fn ensure_topics(&self) -> anyhow::Result<()> {
        let settings = &self.inner.settings;
        let admin: AdminClient<DefaultClientContext> =
            settings.client_config().create().context("failed to create the Kafka admin client")?;
        let replication = || TopicReplication::Fixed(settings.replication_factor);
        let topics = [
            NewTopic::new(&settings.topic, settings.partitions, replication()),
            NewTopic::new(&settings.dead_letter_topic, settings.partitions, replication()),
        ];
        let options = AdminOptions::new().operation_timeout(Some(settings.request_timeout)).request_timeout(Some(settings.request_timeout));
        let results = admin
            .create_topics(&topics, &options)
            .await
            .with_context(|| format!("failed to reach the Kafka brokers at {} to create the topics", settings.brokers))?;
        for result in results {
            match result {
                Ok(topic) => info!(topic, partitions = settings.partitions, "kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(anyhow!("failed to create kafka topic {topic}: {code}")),
            }
        }
        Ok(())
    }

    /// Produces `(key, payload)` records to the events topic and returns once the broker
    /// acknowledged all of them. On failure no record of the call is left queued or in flight
    /// in this process: every delivery has been reported (`message.timeout.ms` bounds that by
    /// the produce timeout) before the error is returned.
    pub async fn append(&self, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), LogError> {
        let count = records.len() as u64;
        let topic = self.inner.settings.topic.clone();
        let deadline = Instant::now() + self.inner.settings.produce_timeout;
        let producer = self.producer();
        if let Err(failure) = self.produce_all(&producer, &topic, &records, deadline).await {
            self.replace_after(&producer, failure.code, failure.delivered);
            return Err(failure.error);
        }
        self.inner.appended.send_modify(|n| *n += count);
        Ok(())
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.inner.producer.read().expect("producer lock").clone()
    }

    /// Replaces `failed` with a new producer, which later appends use, when it is in a fatal
    /// state, when the broker refused its producer id or epoch, or when a delivery failed.
    /// After a failed delivery librdkafka bumps the idempotent producer's epoch on its own;
    /// a fresh producer asks the broker for a new id instead, which every broker accepts
    /// (Tansu 0.6's SQLite engine panics on a client-bumped epoch it has never issued).
    fn replace_after(&self, failed: &Arc<FutureProducer>, code: Option<RDKafkaErrorCode>, delivered: bool) {
        let fenced = matches!(
            code,
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerIdMapping
            )
        );
        let (code, reason) = match (failed.client().fatal_error(), code) {
            (Some(fatal), _) => fatal,
            (None, Some(code)) if fenced => (code, "producer id refused by the broker".to_owned()),
            (None, Some(code)) if delivered => (code, "a delivery failed; the producer's epoch moved on".to_owned()),
            _ => return,
        };
        let mut current = self.inner.producer.write().expect("producer lock");
        if !Arc::ptr_eq(&current, failed) {
            return; // another request replaced it already
        }
        match new_producer(&self.inner.settings) {
            Ok(fresh) => {
                warn!(error = %code, reason, "kafka producer replaced by a new one");
                *current = Arc::new(fresh);
            }
            Err(error) => warn!(error = format!("{error:#}"), "failed to replace the failed kafka producer"),
        }
    }

    async fn produce_all(
        &self,
        producer: &FutureProducer,
        topic: &str,
        records: &[(Vec<u8>, Vec<u8>)],
        deadline: Instant,
    ) -> Result<(), ProduceFailure> {
        let failure = |error: KafkaError, what: &'static str, delivered: bool| ProduceFailure {
            code: error.rdkafka_error_code(),
            error: LogError::Unavailable(anyhow!(error).context(what)),
            delivered,
        };
        let mut deliveries = Vec::with_capacity(records.len());
        let mut failed = None;
        'records: for (key, payload) in records {
            let mut record = FutureRecord::to(topic).key(key.as_slice()).payload(payload.as_slice());
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // The local queue is full: wait for earlier deliveries to drain it.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) if Instant::now() < deadline => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((error, _)) => {
                        failed = Some(failure(error, "failed to queue a record for kafka", false));
                        break 'records;
                    }
                }
            }
        }
        // Every queued record is awaited, even after a failure: none may still reach the
        // broker once the caller has been told that nothing was accepted.
        for delivery in deliveries {
            let outcome = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((error, _))) => failure(error, "kafka did not acknowledge a record", true),
                Err(_) => ProduceFailure {
                    code: None,
                    error: LogError::Unexpected(anyhow!("kafka producer dropped a delivery report")),
                    delivered: true,
                },
            };
            failed.get_or_insert(outcome);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Produces one dead letter: the original payload, with the reason and the source position
    /// in headers, and returns once it is acknowledged.
    pub async fn dead_letter(&self, partition: Partition, offset: i64, payload: &[u8], reason: &str) -> Result<(), LogError> {
        let settings = &self.inner.settings;
        let key = format!("{partition}-{offset}");
        let partition = partition.to_string();
        let offset = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "agora.reason", value: Some(reason) })
            .insert(Header { key: "agora.source.topic", value: Some(settings.topic.as_str()) })
            .insert(Header { key: "agora.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "agora.source.offset", value: Some(offset.as_str()) });
        let produced = FutureRecord::to(&settings.dead_letter_topic).key(&key).payload(payload).headers(headers);
        let producer = self.producer();
        match producer.send(produced, settings.produce_timeout).await {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                self.replace_after(&producer, error.rdkafka_error_code(), true);
                Err(LogError::Unavailable(anyhow!(error).context("failed to produce a dead letter")))
            }
        }
    }

    /// Reads at most `max` records of `partition` from offset `from` on, without joining
    /// the group.
    pub async fn read(&self, partition: Partition, from: i64, max: usize) -> Result<Vec<LogRecord>, LogError> {
        let inner = self.inner.clone();
        blocking(move || {
            let ends = probe_ends(&inner, &inner.settings.topic, &inner.end_probers[0])?;
            let high = ends.get(&partition).copied().unwrap_or(0);
            if from >= high {
                return Ok(Vec::new());
            }
            let mut cached = inner.reader.lock().expect("reader lock");
            let reusable = matches!(&*cached, Some(r) if r.partition == partition && r.next == from);
            if !reusable {
                let consumer: BaseConsumer = inner
                    .settings
                    .client_config()
                    .set("group.id", "agora-reader")
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "false")
                    .create()
                    .context("failed to create a kafka reader")?;
                let mut assignment = TopicPartitionList::new();
                assignment
                    .add_partition_offset(&inner.settings.topic, partition, Offset::Offset(from))
                    .context("failed to build a reader assignment")?;
                consumer.assign(&assignment).context("failed to assign the reader")?;
                *cached = Some(Reader { consumer, partition, next: from });
            }
            let reader = cached.as_mut().expect("reader set above");
            let wanted = max.min((high - from) as usize);
            let mut records = Vec::with_capacity(wanted);
            let deadline = Instant::now() + inner.settings.request_timeout;
            while records.len() < wanted {
                let Some(message) = reader.consumer.poll(Duration::from_millis(100)) else {
                    if Instant::now() > deadline {
                        *cached = None;
                        return Err(anyhow!("kafka returned no records before the request timeout"));
                    }
                    continue;
                };
                let message = message.context("failed to read from kafka")?;
                if message.offset() < reader.next {
                    continue;
                }
                records.push(LogRecord { partition, offset: message.offset(), payload: message.payload().unwrap_or_default().to_vec() });
                reader.next = message.offset() + 1;
            }
            Ok(records)
        })
        .await
    }

    /// Returns each partition's high watermark: the offset the next record will get.
    pub async fn end_positions(&self) -> Result<Positions, LogError> {
        let inner = self.inner.clone();
        blocking(move || probe_ends(&inner, &inner.settings.topic, &inner.end_probers[0])).await
    }

    /// Returns how many records the dead-letter topic holds.
    pub async fn dead_letter_count(&self) -> Result<u64, LogError> {
        let inner = self.inner.clone();
        blocking(move || {
            let ends = probe_ends(&inner, &inner.settings.dead_letter_topic, &inner.end_probers[1])?;
            Ok(ends.values().map(|&end| end.max(0) as u64).sum())
        })
        .await
    }

    /// Returns the projectors' committed position per partition (0 where none is committed).
    pub async fn group_positions(&self) -> Result<Positions, LogError> {
        let inner = self.inner.clone();
        blocking(move || {
            let settings = &inner.settings;
            let ends = watermarks(&inner.metadata, &settings.topic, settings.request_timeout)?;
            let mut wanted = TopicPartitionList::new();
            for &partition in ends.keys() {
                wanted.add_partition(&settings.topic, partition);
            }
            let committed = inner
                .group_offsets
                .committed_offsets(wanted, settings.request_timeout)
                .context("failed to read the group's committed offsets")?;
            Ok(committed.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { 0 })).collect())
        })
        .await
    }

    /// Returns a receiver that changes whenever this process appends to the log.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }

    /// Joins the projectors' consumer group on the events topic.
    pub fn group_consumer(&self) -> anyhow::Result<GroupConsumer> {
        let settings = &self.inner.settings;
        let state = Arc::new(GroupState::default());
        let consumer: StreamConsumer<GroupContext> = settings
            .client_config()
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", settings.heartbeat_interval.as_millis().to_string())
            .set("fetch.wait.max.ms", settings.fetch_wait.as_millis().to_string())
            .create_with_context(GroupContext { state: state.clone() })
            .context("failed to create the kafka group consumer")?;
        consumer.subscribe(&[&settings.topic]).context("failed to subscribe to the events topic")?;
        info!(group = settings.group_id, topic = settings.topic, "joining the projector group");
        Ok(GroupConsumer { consumer: Arc::new(consumer), topic: settings.topic.clone(), state })
    }
}

/// A member of the projectors' consumer group.
pub struct GroupConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    topic: String,
    state: Arc<GroupState>,
}

#[derive(Default)]
struct GroupState {
    owned: Mutex<BTreeSet<Partition>>,
}

struct GroupContext {
    state: Arc<GroupState>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut owned = self.state.owned.lock().expect("owned lock");
            for element in list.elements() {
                owned.remove(&element.partition());
            }
            info!(revoked = list.count(), still_owned = owned.len(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut owned = self.state.owned.lock().expect("owned lock");
                owned.extend(list.elements().iter().map(|e| e.partition()));
                info!(assigned = list.count(), owned = owned.len(), "partitions assigned");
            }
            Rebalance::Error(error) => warn!(error = %error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl GroupConsumer {
    /// Waits up to `wait` for a first record, then gathers what else is already fetched, or
    /// arrives within `linger` of the first, up to `max` records. Returns only records of
    /// partitions this member still owns.
    pub async fn next_batch(&self, max: usize, wait: Duration, linger: Duration) -> Result<Vec<LogRecord>, LogError> {
        let mut records = Vec::new();
        let mut timeout = wait;
        let mut first_at = None;
        let started = tokio::time::Instant::now();
        let mut connection_error = None;
        while records.len() < max {
            let message = match tokio::time::timeout(timeout, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => message,
                // Queued while the brokers were away; they may be back: read on until `wait`
                // ends, so a pile of them costs one back-off, not one each.
                Ok(Err(error)) if is_connection_error(&error) && records.is_empty() => {
                    connection_error = Some(error);
                    timeout = wait.saturating_sub(started.elapsed());
                    continue;
                }
                Ok(Err(error)) => {
                    if records.is_empty() {
                        return Err(LogError::Unavailable(anyhow!(error).context("failed to consume from kafka")));
                    }
                    break;
                }
            };
            records.push(LogRecord {
                partition: message.partition(),
                offset: message.offset(),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
            // After the first record, take what is already there or about to be, and keep
            // taking it for up to `linger` so a store that wants few, large inserts gets them.
            let first_at = *first_at.get_or_insert_with(tokio::time::Instant::now);
            timeout = linger.saturating_sub(first_at.elapsed()).max(Duration::from_millis(2));
        }
        if let (true, Some(error)) = (records.is_empty(), connection_error) {
            return Err(LogError::Unavailable(anyhow!(error).context("failed to consume from kafka")));
        }
        let owned = self.owned();
        records.retain(|r| owned.contains(&r.partition));
        Ok(records)
    }

    /// Returns the partitions this member owns now.
    pub fn owned(&self) -> BTreeSet<Partition> {
        self.state.owned.lock().expect("owned lock").clone()
    }

    /// Commits `positions` (next offsets to read) for the group. Returns `false`, after a
    /// warning, when the group moved on and refused the commit: the records after the last
    /// accepted commit will be read again by their new owner, which the store tolerates.
    pub async fn commit(&self, positions: &Positions) -> Result<bool, LogError> {
        if positions.is_empty() {
            return Ok(true);
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in positions {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next)).context("failed to build a commit")?;
        }
        let consumer = self.consumer.clone();
        let outcome = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| LogError::Unexpected(anyhow!("commit task failed: {e}")))?;
        match outcome {
            Ok(()) => Ok(true),
            Err(KafkaError::ConsumerCommit(
                code @ (RDKafkaErrorCode::State
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::UnknownPartition),
            )) => {
                warn!(error = %code, "commit refused after a rebalance; the new owner reads from the last commit");
                Ok(false)
            }
            Err(error) => Err(LogError::Unavailable(anyhow!(error).context("failed to commit positions"))),
        }
    }

    /// Leaves the group at once, so the other members take the partitions over without
    /// waiting for the session to time out.
    pub fn leave(self) {
        self.consumer.unsubscribe();
    }
}

/// Creates the idempotent, `acks=all`, zstd-compressed producer.
fn new_producer(settings: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    settings
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set("message.timeout.ms", settings.produce_timeout.as_millis().to_string())
        .create()
        .context("failed to create the kafka producer")
}

fn watermarks(client: &BaseConsumer, topic: &str, timeout: Duration) -> anyhow::Result<Positions> {
    let metadata = client.fetch_metadata(Some(topic), timeout).with_context(|| format!("failed to read metadata of topic {topic}"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(anyhow!("kafka topic {topic} does not exist"));
    };
    if let Some(error) = found.error() {
        return Err(anyhow!("kafka topic {topic} is not readable: {:?}", RDKafkaErrorCode::from(error)));
    }
    let mut ends = Positions::new();
    for partition in found.partitions() {
        let (_, high) = client
            .fetch_watermarks(topic, partition.id(), timeout)
            .with_context(|| format!("failed to read watermarks of {topic}/{}", partition.id()))?;
        ends.insert(partition.id(), high);
    }
    Ok(ends)
}

/// The end prober's context: end-of-partition is what it looks for, not an error to report
/// when librdkafka delivers it outside a poll.
struct ProbeContext;

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            warn!(error = %error, reason, "kafka end prober error");
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// Returns each partition's end: the offset the next record will get.
///
/// The high watermark from ListOffsets is the answer on Apache Kafka. Some Kafka-protocol
/// brokers (Tansu 0.6, the test broker) answer with the last batch's base offset plus one
/// instead, hiding the rest of that batch. So the end is confirmed by reading from the
/// watermark's last record to the partition's end-of-file: one small fetch per partition,
/// exact on both.
fn probe_ends(inner: &Inner, topic: &str, prober: &Mutex<BaseConsumer<ProbeContext>>) -> anyhow::Result<Positions> {
    let timeout = inner.settings.request_timeout;
    let mut ends = watermarks(&inner.metadata, topic, timeout)?;
    let mut pending: BTreeSet<Partition> = ends.iter().filter(|(_, &end)| end > 0).map(|(&p, _)| p).collect();
    if pending.is_empty() {
        return Ok(ends);
    }
    let mut assignment = TopicPartitionList::new();
    for &partition in &pending {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(ends[&partition] - 1))
            .context("failed to build a probe assignment")?;
    }
    let prober = prober.lock().expect("prober lock");
    prober.assign(&assignment).context("failed to assign the end prober")?;
    let deadline = Instant::now() + timeout;
    let mut connection_error: Option<KafkaError> = None;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = prober.unassign();
            let late = anyhow!("kafka did not report the end of {} partition(s) of {topic} in time", pending.len());
            return Err(match connection_error {
                Some(error) => anyhow!(error).context(late),
                None => late,
            });
        }
        match prober.poll(left) {
            // Queued while the brokers were away; the watermarks above just came back.
            Some(Err(error)) if is_connection_error(&error) => connection_error = Some(error),
            None => {}
            Some(Ok(message)) => {
                let end = ends.entry(message.partition()).or_insert(0);
                *end = (*end).max(message.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                pending.remove(&partition);
            }
            Some(Err(error)) => {
                let _ = prober.unassign();
                return Err(anyhow!(error).context("failed to probe a partition's end"));
            }
        }
    }
    // Unassigned, the prober stops fetching (and reporting end-of-file) until the next probe.
    prober.unassign().context("failed to release the end prober")?;
    Ok(ends)
}

/// Whether `error` only says a connection to the brokers failed. librdkafka queues one for
/// each failed attempt and keeps reconnecting on its own, so once the brokers are back, a
/// reader still finds those errors ahead of its records.
fn is_connection_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve)
    )
}

/// Runs blocking librdkafka calls off the async runtime; failures mean the brokers cannot
/// serve now.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Unexpected(anyhow!("kafka task failed: {e}")))?
        .map_err(LogError::Unavailable)
}
