//! Agora's configuration: one typed struct, loaded once from the command line and `AGORA_*`
//! environment variables (SPEC §5), then passed explicitly to every role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agora_eventlog::KafkaSettings;
use agora_ingest::IngestToken;
use agora_projector::ProjectorConfig;
use agora_query::{ReadScope, ReadToken, TargetDefinition, TargetKind};
use agora_store::ClickHouseSettings;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data folder.
pub const DEFAULT_DATA_DIR: &str = "./agora-data";

/// A setting that is missing or does not parse; names the variable and the rule.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required{hint}")]
    Missing { name: &'static str, hint: &'static str },
    #[error("{name}: {rule}")]
    Invalid { name: &'static str, rule: String },
}

/// Where events are kept.
#[derive(Debug, Clone)]
pub enum LogBackend {
    Embedded,
    Kafka(KafkaSettings),
}

/// Where read models are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    Embedded,
    ClickHouse(ClickHouseSettings),
}

/// Everything a role needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_backend: LogBackend,
    pub store_backend: StoreBackend,
    /// Secret for participant pseudonyms; `None` only where no role ingests.
    pub pseudonym_key: Option<String>,
    pub ingest_tokens: Vec<IngestToken>,
    pub read_tokens: Vec<ReadToken>,
    pub public_read: bool,
    pub projector: ProjectorConfig,
    pub targets: Vec<TargetDefinition>,
    /// Seconds given to in-flight work after SIGINT or SIGTERM.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Loads the configuration from `var` (the environment, or a map in tests).
    pub fn load(
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let log_backend = match var("AGORA_KAFKA_BROKERS") {
            Some(brokers) => LogBackend::Kafka(kafka_settings(&var, brokers)?),
            None => LogBackend::Embedded,
        };
        let store_backend = match var("AGORA_CLICKHOUSE_URL") {
            Some(url) => StoreBackend::ClickHouse(ClickHouseSettings {
                url,
                database: var("AGORA_CLICKHOUSE_DATABASE").unwrap_or_else(|| "agora".into()),
                user: var("AGORA_CLICKHOUSE_USER"),
                password: var("AGORA_CLICKHOUSE_PASSWORD"),
                timeout: Duration::from_millis(parse_or(
                    &var,
                    "AGORA_CLICKHOUSE_TIMEOUT_MS",
                    10_000,
                    |n: &u64| *n > 0,
                    "milliseconds above 0",
                )?),
                fold_timeout: Duration::from_millis(parse_or(
                    &var,
                    "AGORA_CLICKHOUSE_FOLD_TIMEOUT_MS",
                    300_000,
                    |n: &u64| *n > 0,
                    "milliseconds above 0",
                )?),
                fold_memory_bytes: parse_or(&var, "AGORA_CLICKHOUSE_FOLD_MEMORY_MB", 2_048, |n: &u64| *n > 0, "megabytes above 0")? << 20,
            }),
            None => StoreBackend::Embedded,
        };
        let defaults = match store_backend {
            // ClickHouse wants few, large inserts: about one per table per second under load.
            StoreBackend::ClickHouse(_) => {
                ProjectorConfig { batch_size: 100_000, linger: Duration::from_secs(1), ..ProjectorConfig::default() }
            }
            StoreBackend::Embedded => ProjectorConfig::default(),
        };
        let projector = ProjectorConfig {
            linger: Duration::from_millis(parse_or(
                &var,
                "AGORA_PROJECTOR_LINGER_MS",
                defaults.linger.as_millis() as u64,
                |_| true,
                "milliseconds",
            )?),
            batch_size: parse_or(&var, "AGORA_PROJECTOR_BATCH_SIZE", defaults.batch_size, |n: &usize| *n > 0, "a whole number above 0")?,
            poll_interval: Duration::from_millis(parse_or(
                &var,
                "AGORA_PROJECTOR_POLL_MS",
                defaults.poll_interval.as_millis() as u64,
                |n: &u64| *n > 0,
                "milliseconds above 0",
            )?),
            ..defaults
        };
        let mut targets = TargetDefinition::defaults();
        for target in &mut targets {
            let name = match target.kind {
                TargetKind::PlatformGrowth => "AGORA_TARGET_PLATFORM_GROWTH",
                TargetKind::DigitalShare => "AGORA_TARGET_DIGITAL_SHARE",
            };
            target.target = parse_or(&var, name, target.target, |v: &f64| v.is_finite(), "a decimal fraction such as 0.5")?;
        }
        Ok(Config {
            listen: listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses")),
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            log_backend,
            store_backend,
            pseudonym_key: var("AGORA_PSEUDONYM_KEY"),
            ingest_tokens: parse_pairs(var("AGORA_INGEST_TOKENS"), "AGORA_INGEST_TOKENS", "source:token")?
                .into_iter()
                .map(|(source, token)| IngestToken { source, token })
                .collect(),
            read_tokens: parse_pairs(var("AGORA_READ_TOKENS"), "AGORA_READ_TOKENS", "scope:token")?
                .into_iter()
                .map(|(scope, token)| ReadToken {
                    scope: if scope == "*" { ReadScope::All } else { ReadScope::Organization(scope) },
                    token,
                })
                .collect(),
            public_read: parse_or(&var, "AGORA_PUBLIC_READ", false, |_| true, "true or false")?,
            projector,
            targets,
            shutdown_grace: Duration::from_secs(parse_or(&var, "AGORA_SHUTDOWN_GRACE_SECONDS", 10, |_| true, "whole seconds")?),
        })
    }

    /// Loads the configuration from the process environment.
    pub fn from_env(listen: Option<SocketAddr>, data_dir: Option<PathBuf>) -> Result<Config, ConfigError> {
        Config::load(listen, data_dir, |name| std::env::var(name).ok())
    }

    /// Returns the pseudonym key, which every ingesting role needs.
    pub fn require_pseudonym_key(&self) -> Result<&str, ConfigError> {
        self.pseudonym_key.as_deref().ok_or(ConfigError::Missing {
            name: "AGORA_PSEUDONYM_KEY",
            hint: " to ingest events: a long random secret, kept the same across restarts so pseudonyms stay stable",
        })
    }
}

/// Reads the Kafka settings; every one but the brokers has a default (see `KafkaSettings`).
fn kafka_settings(var: &impl Fn(&str) -> Option<String>, brokers: String) -> Result<KafkaSettings, ConfigError> {
    let mut settings = KafkaSettings::new(brokers, var("AGORA_KAFKA_TOPIC").unwrap_or_else(|| "agora.events.v1".into()));
    if let Some(topic) = var("AGORA_KAFKA_DEAD_LETTER_TOPIC") {
        settings.dead_letter_topic = topic;
    }
    if let Some(group) = var("AGORA_KAFKA_GROUP") {
        settings.group_id = group;
    }
    settings.partitions = parse_or(var, "AGORA_KAFKA_PARTITIONS", settings.partitions, |n: &i32| *n > 0, "a whole number above 0")?;
    settings.replication_factor =
        parse_or(var, "AGORA_KAFKA_REPLICATION", settings.replication_factor, |n: &i32| *n > 0, "a whole number above 0")?;
    let millis = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        parse_or(var, name, default.as_millis() as u64, |n: &u64| *n > 0, "milliseconds above 0").map(Duration::from_millis)
    };
    settings.session_timeout = millis("AGORA_KAFKA_SESSION_TIMEOUT_MS", settings.session_timeout)?;
    settings.heartbeat_interval = millis("AGORA_KAFKA_HEARTBEAT_MS", settings.heartbeat_interval)?;
    settings.fetch_wait = millis("AGORA_KAFKA_FETCH_WAIT_MS", settings.fetch_wait)?;
    settings.produce_timeout = millis("AGORA_KAFKA_PRODUCE_TIMEOUT_MS", settings.produce_timeout)?;
    settings.request_timeout = millis("AGORA_KAFKA_REQUEST_TIMEOUT_MS", settings.request_timeout)?;
    if settings.heartbeat_interval >= settings.session_timeout {
        return Err(ConfigError::Invalid { name: "AGORA_KAFKA_HEARTBEAT_MS", rule: "must be below AGORA_KAFKA_SESSION_TIMEOUT_MS".into() });
    }
    Ok(settings)
}

fn parse_or<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    valid: impl Fn(&T) -> bool,
    rule: &str,
) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(raw) => {
            raw.parse().ok().filter(|v| valid(v)).ok_or_else(|| ConfigError::Invalid { name, rule: format!("must be {rule}, got {raw:?}") })
        }
    }
}

/// Parses `a:x,b:y` lists; the secret after the first colon may itself hold colons.
fn parse_pairs(raw: Option<String>, name: &'static str, shape: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .enumerate()
        .map(|(i, item)| match item.split_once(':') {
            Some((left, right)) if !left.trim().is_empty() && !right.trim().is_empty() => {
                Ok((left.trim().to_owned(), right.trim().to_owned()))
            }
            _ => Err(ConfigError::Invalid { name, rule: format!("item {} must be {shape}", i + 1) }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(None, None, |name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_to_the_embedded_backends() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(matches!(config.log_backend, LogBackend::Embedded));
        assert_eq!(config.store_backend, StoreBackend::Embedded);
        assert!(!config.public_read);
        assert!(config.require_pseudonym_key().is_err());
    }

    #[test]
    fn reads_kafka_settings_with_defaults() {
        let config = load(&[("AGORA_KAFKA_BROKERS", "b1:9092,b2:9092"), ("AGORA_KAFKA_SESSION_TIMEOUT_MS", "6000")]).unwrap();
        let LogBackend::Kafka(settings) = config.log_backend else { panic!("kafka expected") };
        assert_eq!(settings.brokers, "b1:9092,b2:9092");
        assert_eq!(settings.topic, "agora.events.v1");
        assert_eq!(settings.dead_letter_topic, "agora.events.v1.dead-letter");
        assert_eq!(settings.group_id, "agora-projector");
        assert_eq!(settings.session_timeout, Duration::from_millis(6000));
    }

    #[test]
    fn reads_clickhouse_settings_with_fold_limits() {
        let config = load(&[("AGORA_CLICKHOUSE_URL", "http://ch:8123"), ("AGORA_CLICKHOUSE_FOLD_MEMORY_MB", "512")]).unwrap();
        let StoreBackend::ClickHouse(settings) = config.store_backend else { panic!("clickhouse expected") };
        assert_eq!(settings.database, "agora");
        assert_eq!(settings.timeout, Duration::from_secs(10));
        assert_eq!(settings.fold_timeout, Duration::from_secs(300));
        assert_eq!(settings.fold_memory_bytes, 512 << 20);
        let err = load(&[("AGORA_CLICKHOUSE_URL", "http://ch:8123"), ("AGORA_CLICKHOUSE_FOLD_MEMORY_MB", "0")]).unwrap_err().to_string();
        assert!(err.contains("AGORA_CLICKHOUSE_FOLD_MEMORY_MB") && err.contains("megabytes above 0"), "{err}");
    }

    #[test]
    fn parses_tokens_and_scopes() {
        let config = load(&[("AGORA_INGEST_TOKENS", "platform:abc, other:d:e"), ("AGORA_READ_TOKENS", "*:r1,MSSS:r2")]).unwrap();
        assert_eq!(config.ingest_tokens[1].token, "d:e");
        assert_eq!(config.read_tokens[0].scope, ReadScope::All);
        assert_eq!(config.read_tokens[1].scope, ReadScope::Organization("MSSS".into()));
    }

    #[test]
    fn names_the_variable_and_the_rule() {
        let err = load(&[("AGORA_READ_TOKENS", "nocolon")]).unwrap_err().to_string();
        assert!(err.contains("AGORA_READ_TOKENS") && err.contains("scope:token"), "{err}");
        let err = load(&[("AGORA_PROJECTOR_BATCH_SIZE", "0")]).unwrap_err().to_string();
        assert!(err.contains("AGORA_PROJECTOR_BATCH_SIZE"), "{err}");
        let err = load(&[("AGORA_KAFKA_BROKERS", "b:9092"), ("AGORA_KAFKA_PARTITIONS", "zero")]).unwrap_err().to_string();
        assert!(err.contains("AGORA_KAFKA_PARTITIONS"), "{err}");
        let err = load(&[("AGORA_PUBLIC_READ", "yes")]).unwrap_err().to_string();
        assert!(err.contains("true or false"), "{err}");
    }
}
