//! The embedded MongoDB-compatible server: an in-memory single-node replica-set primary that
//! PyMongo and the Rust driver talk to over TCP, with an oplog written like MongoDB 7.0's.

pub mod clock;
pub mod collection;
pub mod commands;
pub mod cursor;
pub mod cursor_table;
pub mod error;
pub mod error_codes;
pub mod error_labels;
pub mod fail_point;
pub mod history;
pub mod limits;
pub mod majority;
pub mod oplog_writer;
pub mod query;
pub mod read_concern;
pub mod session;
pub mod session_cache;
pub mod shell;
pub mod state;
pub mod update;
pub mod validation;
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
    /// `host` or `host:port` that `hello` (hosts, me, primary) names; default: the bound
    /// address, or 127.0.0.1 for a wildcard bind (0.0.0.0, ::), which no client can dial.
    pub advertise: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            advertise: None,
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
    /// The majority commit point (`ts_to_u64`): w:majority writes and majority reads with
    /// `afterClusterTime` wait on it.
    pub commit_point: watch::Sender<u64>,
    pub paused_until: Mutex<Option<Instant>>,
}

impl Shared {
    /// Tells waiters where the majority commit point is now (after a write or a release).
    pub fn publish_commit_point(&self, state: &State) {
        let point = majority::point_key(state.majority_point());
        self.commit_point.send_if_modified(|p| {
            let moved = *p != point;
            *p = point;
            moved
        });
    }

    pub fn paused(&self) -> Option<Instant> {
        let until = *self.paused_until.lock();
        until.filter(|u| *u > Instant::now())
    }
}

/// True for an address that listens on every interface.
pub fn is_wildcard(host: &str) -> bool {
    matches!(
        host.parse::<std::net::IpAddr>(),
        Ok(ip) if ip.is_unspecified()
    )
}

/// An advertised address must be a plain `host` or `host:port` (IPv6 literals in brackets
/// when a port follows): it goes verbatim into `hello` replies and connection strings.
pub fn check_advertise(a: &str) -> Result<(), String> {
    let ok_chars = a
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if a.is_empty() || a.len() > 255 || !ok_chars {
        return Err(format!(
            "advertised address {a:?} must be HOST or HOST:PORT (letters, digits, '.', '-', ':', [IPv6])"
        ));
    }
    let host = host_part(a);
    if host.is_empty() || is_wildcard(host) {
        return Err(format!(
            "advertised address {a:?} must name a host clients can reach, not a wildcard"
        ));
    }
    if let Some(port) = port_part(a) {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("advertised address {a:?} has an invalid port"));
        }
    }
    Ok(())
}

/// The host of `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal.
fn host_part(a: &str) -> &str {
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    if a.parse::<std::net::Ipv6Addr>().is_ok() {
        return a;
    }
    a.rsplit_once(':').map_or(a, |(h, _)| h)
}

fn port_part(a: &str) -> Option<&str> {
    if a.starts_with('[') {
        return a.split_once("]:").map(|(_, p)| p);
    }
    if a.parse::<std::net::Ipv6Addr>().is_ok() {
        return None;
    }
    a.rsplit_once(':').map(|(_, p)| p)
}

/// `host:port` as clients must dial it: the advertised address (with the bound port when it
/// names none), else the bound host, 127.0.0.1 for a wildcard; IPv6 literals in brackets.
pub fn advertised_address(options: &ServerOptions, port: u16) -> String {
    let (host, port) = match &options.advertise {
        Some(a) => (
            host_part(a).to_string(),
            port_part(a).and_then(|p| p.parse().ok()).unwrap_or(port),
        ),
        None => {
            let bound = host_part(&options.host);
            let host = if is_wildcard(bound) {
                "127.0.0.1"
            } else {
                bound
            };
            (host.to_string(), port)
        }
    };
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Kills idle cursors (`cursorTimeoutMillis`) twice a second until the server stops.
async fn reap_idle_cursors(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        shared.state.lock().cursors.kill_idle(Instant::now());
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
        if let Some(a) = &options.advertise {
            check_advertise(a)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let bind_host = options.host.trim_start_matches('[').trim_end_matches(']');
        let listener = TcpListener::bind((bind_host, options.port)).await?;
        let port = listener.local_addr()?.port();
        let address = advertised_address(&options, port);
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(options.oplog_size_bytes)),
            info: ServerInfo {
                address,
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
            commit_point: watch::channel(0).0,
            paused_until: Mutex::new(None),
        });
        shared.publish_commit_point(&shared.state.lock());
        tokio::spawn(connection::accept_loop(listener, shared.clone()));
        tokio::spawn(reap_idle_cursors(shared.clone()));
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

    /// Freezes the majority commit point where it is, as a lagging secondary would: majority
    /// reads see no later write and w:majority writes wait (see [`majority`]). Holding it again
    /// changes nothing.
    pub fn hold_majority(&self) {
        let mut state = self.shared.state.lock();
        state.hold_majority();
        self.shared.publish_commit_point(&state);
    }

    /// Lets the majority commit point catch up with every write: waiting writes are
    /// acknowledged, majority tailers see the entries written meanwhile. Without a hold,
    /// nothing happens.
    pub fn release_majority(&self) {
        let mut state = self.shared.state.lock();
        if state.release_majority() {
            // Wake awaitData getMores, as mongod signals oplog waiters when the point moves.
            state.capped_appends += 1;
            self.shared.appends.send_replace(state.capped_appends);
        }
        self.shared.publish_commit_point(&state);
    }

    /// Whether the majority commit point is held.
    pub fn majority_held(&self) -> bool {
        self.shared.state.lock().majority.held().is_some()
    }

    /// For `duration`, new connections are refused and open ones get no answers (data is kept).
    pub fn pause(&self, duration: Duration) {
        *self.shared.paused_until.lock() = Some(Instant::now() + duration);
        self.drop_connections();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, advertise: Option<&str>) -> String {
        let options = ServerOptions {
            host: host.into(),
            advertise: advertise.map(String::from),
            ..ServerOptions::default()
        };
        advertised_address(&options, 27017)
    }

    #[test]
    fn advertised_addresses() {
        assert_eq!(addr("127.0.0.1", None), "127.0.0.1:27017");
        assert_eq!(addr("0.0.0.0", None), "127.0.0.1:27017");
        assert_eq!(addr("::", None), "127.0.0.1:27017");
        assert_eq!(addr("::1", None), "[::1]:27017");
        assert_eq!(addr("[::1]", None), "[::1]:27017");
        assert_eq!(addr("0.0.0.0", Some("db.example")), "db.example:27017");
        assert_eq!(addr("0.0.0.0", Some("db.example:4000")), "db.example:4000");
        assert_eq!(addr("::", Some("fe80::1")), "[fe80::1]:27017");
        assert_eq!(addr("::", Some("[fe80::1]:9")), "[fe80::1]:9");
    }

    #[test]
    fn hostile_advertised_addresses_are_refused() {
        for bad in [
            "", "0.0.0.0", "::", "[::]:1", "a b", "h/x", "u:p@h", "h:0", "h:99999", "h,i", "h?x=1",
        ] {
            assert!(check_advertise(bad).is_err(), "{bad:?}");
        }
        for good in [
            "h",
            "h:1",
            "10.0.0.2:27017",
            "[::1]:5",
            "fe80::1",
            "my-host.local",
        ] {
            assert!(check_advertise(good).is_ok(), "{good:?}");
        }
    }
}
