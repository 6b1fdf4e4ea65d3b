//! Real backing services for the end-to-end suite, one private instance per test: a Tansu
//! broker (Kafka protocol, in-memory storage, or for restart tests its SQLite storage engine
//! over a data folder of its own) and a ClickHouse server with its own data folder, each on
//! loopback ports of its own. `scripts/test.sh` installs them when missing; these
//! helpers only find and start them.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Which backends a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite log and SQLite store in the data folder.
    Embedded,
    /// Kafka log (Tansu), SQLite store.
    Kafka,
    /// Kafka log (Tansu), ClickHouse store.
    KafkaClickHouse,
}

/// Returns a loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finds an executable: the variable `env` names, else `~/.cache/agora/bin/<name>`, else
/// `<name>` on the PATH.
fn executable(env: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let cache = std::env::var("AGORA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/agora"));
    let cached = cache.join("bin").join(name);
    if cached.exists() {
        return cached;
    }
    PathBuf::from(name)
}

/// A private Tansu broker.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub address: String,
    log: TempDir,
    /// The folder where a durable broker keeps its topics, offsets and groups (SQLite);
    /// `None`: in its memory.
    storage: Option<TempDir>,
}

impl Broker {
    /// Starts a broker on a free loopback port, keeping everything in its memory, and waits
    /// until it listens.
    pub fn start() -> Broker {
        Self::start_on(None)
    }

    /// Starts a broker that keeps its data in a SQLite file of its own (the Tansu build in
    /// `AGORA_TANSU_DURABLE_BIN`), so that it can be killed and started again without losing
    /// what it acknowledged.
    pub fn start_durable() -> Broker {
        Self::start_on(Some(tempfile::tempdir().unwrap()))
    }

    fn start_on(storage: Option<TempDir>) -> Broker {
        let port = free_port();
        let log = tempfile::tempdir().unwrap();
        let mut broker = Broker { child: None, port, address: format!("127.0.0.1:{port}"), log, storage };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let bin = match &self.storage {
            None => executable("AGORA_TANSU_BIN", "tansu"),
            Some(_) => executable("AGORA_TANSU_DURABLE_BIN", "tansu-durable"),
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(self.log.path().join("tansu.log")).unwrap();
        let mut command = Command::new(&bin);
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine"]);
        match &self.storage {
            None => command.arg("memory://tansu/"),
            // Tansu resolves the SQLite path against its working folder.
            Some(dir) => command.arg("sqlite://tansu.db").current_dir(dir.path()),
        };
        let mut child = command
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start tansu ({}): {e}; run scripts/test.sh, which installs it", bin.display()));
        wait_for_port(self.port, &mut child, "tansu", Duration::from_secs(20));
        self.child = Some(child);
    }

    /// Kills the broker (SIGKILL): clients find nothing listening on its port.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed durable broker again on the same port, over the same storage.
    pub fn start_again(&mut self) {
        assert!(self.storage.is_some(), "only a durable broker keeps its topics across a restart");
        assert!(self.child.is_none(), "the broker is still running");
        self.spawn();
    }

    /// Freezes the broker (SIGSTOP): it holds its data but answers nothing.
    pub fn freeze(&self) {
        signal(self.child.as_ref().unwrap(), "-STOP");
    }

    /// Thaws a frozen broker (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.as_ref().unwrap(), "-CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "-CONT");
        }
        self.kill();
        // A failing test shows what the broker said last; its folder goes with it.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log.path().join("tansu.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the broker's log ---");
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} failed");
}

/// A private ClickHouse server with its own data folder.
pub struct ClickHouse {
    child: Option<Child>,
    pub http_port: u16,
    pub tcp_port: u16,
    interserver_port: u16,
    pub url: String,
    dir: TempDir,
}

impl ClickHouse {
    /// Starts a server on free loopback ports and waits until its HTTP port answers.
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let mut server = ClickHouse {
            child: None,
            http_port,
            tcp_port: free_port(),
            interserver_port: free_port(),
            url: format!("http://127.0.0.1:{http_port}"),
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = executable("AGORA_CLICKHOUSE_SERVER_BIN", "clickhouse-server");
        let bin = if bin.exists() || bin.is_absolute() { bin } else { PathBuf::from("/usr/sbin/clickhouse-server") };
        let d = self.dir.path().display().to_string();
        let mut child = Command::new(&bin)
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", self.tcp_port))
            .arg(format!("--interserver_http_port={}", self.interserver_port))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--path={d}/data/"))
            .arg(format!("--tmp_path={d}/tmp/"))
            .arg(format!("--logger.log={d}/ch.log"))
            .arg(format!("--logger.errorlog={d}/err.log"))
            .arg(format!("--user_files_path={d}/uf/"))
            .arg(format!("--format_schema_path={d}/fs/"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("failed to start clickhouse-server ({}): {e}; run scripts/test.sh, which installs it", bin.display())
            });
        wait_for_port(self.http_port, &mut child, "clickhouse-server", Duration::from_secs(60));
        self.child = Some(child);
    }

    /// Runs one SQL statement over HTTP and returns what the server printed; panics on an
    /// error answer.
    pub fn sql(&self, statement: &str) -> String {
        use std::io::{Read, Write};
        // Plain HTTP/1.0 over a socket: the test needs no client library to plant a row.
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).expect("failed to reach clickhouse");
        write!(stream, "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{statement}", statement.len()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "clickhouse refused {statement}: {body}");
        body.to_owned()
    }

    /// Stops the server (SIGKILL) and waits for it to exit; its data folder stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data folder.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The services a test server runs on, kept alive as long as the test needs them.
#[derive(Default)]
pub struct Services {
    pub broker: Option<Broker>,
    pub clickhouse: Option<ClickHouse>,
}

impl Services {
    /// Starts what `backend` needs.
    pub fn start(backend: Backend) -> Services {
        match backend {
            Backend::Embedded => Services::default(),
            Backend::Kafka => Services { broker: Some(Broker::start()), clickhouse: None },
            Backend::KafkaClickHouse => Services { broker: Some(Broker::start()), clickhouse: Some(ClickHouse::start()) },
        }
    }

    /// Returns the `AGORA_*` settings that point Agora at these services.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if let Some(broker) = &self.broker {
            vars.push(("AGORA_KAFKA_BROKERS".into(), broker.address.clone()));
            vars.push(("AGORA_KAFKA_PARTITIONS".into(), "3".into()));
            vars.push(("AGORA_KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into()));
            vars.push(("AGORA_KAFKA_HEARTBEAT_MS".into(), "500".into()));
            vars.push(("AGORA_KAFKA_PRODUCE_TIMEOUT_MS".into(), "5000".into()));
            vars.push(("AGORA_KAFKA_FETCH_WAIT_MS".into(), "50".into()));
        }
        if let Some(clickhouse) = &self.clickhouse {
            vars.push(("AGORA_CLICKHOUSE_URL".into(), clickhouse.url.clone()));
            vars.push(("AGORA_CLICKHOUSE_DATABASE".into(), "agora_test".into()));
            // Tests wait on figures; a short linger keeps them quick without changing the path.
            vars.push(("AGORA_PROJECTOR_LINGER_MS".into(), "100".into()));
        }
        vars
    }
}
