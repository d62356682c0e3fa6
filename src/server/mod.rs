//! The embedded MongoDB-compatible server: an in-memory single-node replica-set primary that
//! PyMongo and the Rust driver talk to over TCP, with an oplog written like MongoDB 7.0's.

pub mod clock;
pub mod collection;
pub mod commands;
pub mod cursor;
pub mod error;
pub mod error_labels;
pub mod fail_point;
pub mod oplog_writer;
pub mod query;
pub mod session;
pub mod session_cache;
pub mod shell;
pub mod state;
pub mod update;
pub mod wire;
pub mod write_concern;

mod connection;

use bson::oid::ObjectId;
use parking_lot::Mutex;
use state::State;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub host: String,
    pub port: u16,
    pub replset: String,
    pub oplog_size_bytes: u64,
    /// Test commands (`configureFailPoint`), as `--setParameter enableTestCommands=1` enables.
    pub test_commands: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 0,
            replset: "rs0".into(),
            oplog_size_bytes: 256 * 1024 * 1024,
            test_commands: true,
        }
    }
}

/// Facts about the running server that replies need.
pub struct ServerInfo {
    pub address: String,
    pub replset: String,
    pub process_id: ObjectId,
    pub started: Instant,
    pub started_unix: u32,
    pub connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub test_commands: bool,
    /// Armed fail points (test commands only).
    pub fail_points: Mutex<fail_point::FailPoints>,
}

pub struct Shared {
    pub state: Mutex<State>,
    pub info: ServerInfo,
    /// Mirrors `State::capped_appends`; awaitData getMores wait on it.
    pub appends: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    /// Bumped by `drop_connections`: every open connection closes.
    pub drops: watch::Sender<u64>,
    pub paused_until: Mutex<Option<Instant>>,
}

impl Shared {
    pub fn paused(&self) -> Option<Instant> {
        let until = *self.paused_until.lock();
        until.filter(|u| *u > Instant::now())
    }
}

/// A running server; dropping it does not stop it, `stop()` does.
pub struct MongoServer {
    shared: Arc<Shared>,
    port: u16,
}

impl MongoServer {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(options: ServerOptions) -> std::io::Result<MongoServer> {
        let listener = TcpListener::bind((options.host.as_str(), options.port)).await?;
        let port = listener.local_addr()?.port();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(options.oplog_size_bytes)),
            info: ServerInfo {
                address: format!("{}:{port}", options.host),
                replset: options.replset.clone(),
                process_id: ObjectId::new(),
                started: Instant::now(),
                started_unix,
                connections: AtomicU64::new(0),
                total_connections: AtomicU64::new(0),
                test_commands: options.test_commands,
                fail_points: Mutex::new(fail_point::FailPoints::default()),
            },
            appends: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            drops: watch::channel(0).0,
            paused_until: Mutex::new(None),
        });
        tokio::spawn(connection::accept_loop(listener, shared.clone()));
        Ok(MongoServer { shared, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn address(&self) -> &str {
        &self.shared.info.address
    }

    pub fn replset(&self) -> &str {
        &self.shared.info.replset
    }

    pub fn stop(&self) {
        self.shared.shutdown.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    /// Closes every open client connection (data is kept; clients reconnect).
    pub fn drop_connections(&self) {
        self.shared.drops.send_modify(|g| *g += 1);
    }

    /// For `duration`, new connections are refused and open ones get no answers (data is kept).
    pub fn pause(&self, duration: Duration) {
        *self.shared.paused_until.lock() = Some(Instant::now() + duration);
        self.drop_connections();
    }
}
