//! Accepting clients and serving one connection: read a message, run it, answer.

use super::commands::{
    allowed_over_op_query, detach_read, error_reply, execute, reattach, to_raw, Detach, Execution,
};
use super::error::ServerError;
use super::wire::{self, Header, WireError, HEADER_LEN};
use super::Shared;
use crate::server::error_codes::ErrorCode;
use bson::Document;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.paused().is_some() {
            drop(stream); // refused while paused
            continue;
        }
        let _ = stream.set_nodelay(true);
        let id = shared
            .info
            .total_connections
            .fetch_add(1, Ordering::Relaxed) as i64
            + 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.info.connections.fetch_add(1, Ordering::Relaxed);
            serve(stream, &shared, id).await;
            shared.info.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Buffers up to this size are kept for the connection's next message (allocating afresh for
/// every message costs page faults, and bulk writes send messages of a few MB each); a larger
/// one is released once its message is handled, so idle connections hold little.
const KEPT_BUFFER: usize = 8 * 1024 * 1024;
/// Bytes read into the buffer per step: a message's buffer grows with the bytes that actually
/// arrive, never to the size an unverified header announces.
const READ_STEP: usize = 64 * 1024;

/// Reads one message into `payload` (reused across messages). `Ok(None)`: the client closed
/// the connection between messages.
async fn read_message(
    stream: &mut TcpStream,
    head: &mut [u8; HEADER_LEN],
    payload: &mut Vec<u8>,
) -> std::io::Result<Option<Header>> {
    match stream.read_exact(head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header =
        Header::parse(head).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let want = header.length - HEADER_LEN;
    payload.clear();
    while payload.len() < want {
        let step = (want - payload.len()).min(READ_STEP.max(payload.len()));
        let start = payload.len();
        payload.resize(start + step, 0);
        let n = stream.read(&mut payload[start..]).await?;
        payload.truncate(start + n);
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(header))
}

async fn serve(mut stream: TcpStream, shared: &Shared, connection_id: i64) {
    let mut drops = shared.drops.subscribe();
    drops.mark_unchanged();
    let mut shutdown = shared.shutdown.subscribe();
    let mut reply_id: i32 = 0;
    let mut payload = Vec::new();
    // The client's appName from its first hello (fail points can target it).
    let mut app_name: Option<String> = None;
    let mut head = [0u8; HEADER_LEN];
    loop {
        if payload.capacity() > KEPT_BUFFER {
            payload = Vec::new();
        }
        let message = tokio::select! {
            m = read_message(&mut stream, &mut head, &mut payload) => m,
            _ = drops.changed() => return,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(Some(header)) = message else {
            return;
        };
        // `select!` picks among ready branches at random: a message that arrived together with
        // a drop must not be served (the drop closes every connection as of its call).
        if drops.has_changed().unwrap_or(true) {
            return;
        }
        // While paused, hold the request unanswered until the pause ends (or the link drops).
        while let Some(until) = shared.paused() {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = drops.changed() => return,
            }
        }
        if header.op_code == wire::OP_MSG {
            if let Err(msg) = wire::verify_checksum(&head, &payload) {
                log::debug!(target: "mmm", "closing connection {connection_id}: {msg}");
                return;
            }
        }
        let request = match header.op_code {
            wire::OP_MSG => wire::parse_op_msg(&payload),
            wire::OP_QUERY => wire::parse_op_query(&payload),
            // Compression is never negotiated and legacy opcodes are gone: close, as mongod does.
            _ => return,
        };
        let request = match request {
            Ok(r) => r,
            Err(WireError::Reply(e)) => {
                // A refused document in a well-framed message: answer, as mongod does.
                let more_to_come = header.op_code == wire::OP_MSG
                    && payload.len() >= 4
                    && u32::from_le_bytes(payload[0..4].try_into().unwrap())
                        & wire::FLAG_MORE_TO_COME
                        != 0;
                if more_to_come {
                    continue;
                }
                reply_id = reply_id.wrapping_add(1);
                let reply = to_raw(&e.to_document());
                let bytes = if header.op_code == wire::OP_QUERY {
                    wire::encode_op_reply(reply_id, header.request_id, &reply)
                } else {
                    wire::encode_op_msg(reply_id, header.request_id, &reply)
                };
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                continue;
            }
            Err(WireError::Close(msg)) => {
                log::debug!(target: "mmm", "closing connection {connection_id}: {msg}");
                return;
            }
        };
        let cmd = request.body.keys().next().cloned().unwrap_or_default();
        if app_name.is_none() && matches!(cmd.as_str(), "hello" | "isMaster" | "ismaster") {
            app_name = client_app_name(&request.body);
        }
        if let Some(wait) = awaitable_hello_wait(&cmd, &request.body, shared) {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = drops.changed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let reply = if request.legacy && !allowed_over_op_query(&cmd) {
            let e = ServerError::new(ErrorCode::UnsupportedOpQueryCommand, format!("Unsupported OP_QUERY command: {cmd}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal"));
            to_raw(&e.to_document())
        } else {
            let intercept = shared.info.test_commands.then(|| {
                let mut fps = shared.info.fail_points.lock();
                fps.before(&request.body, app_name.as_deref(), shared.info.process_id)
            });
            let intercept = intercept.flatten().unwrap_or_default();
            if let Some(pause) = intercept.block {
                tokio::time::sleep(pause).await;
            }
            if intercept.close {
                return;
            }
            match intercept.error {
                Some(e) => error_reply(&shared.state.lock(), e),
                None => {
                    let mut reply = tokio::select! {
                        r = serve_request(shared, &request.body, connection_id) => r,
                        _ = drops.changed() => return,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    if intercept.close_after {
                        return;
                    }
                    if shared.info.test_commands {
                        let mut fps = shared.info.fail_points.lock();
                        fps.after(&request.body, app_name.as_deref(), &mut reply);
                    }
                    super::write_concern::check(&request.body, &mut reply);
                    reply
                }
            }
        };
        if request.more_to_come {
            continue;
        }
        reply_id = reply_id.wrapping_add(1);
        let mut exhaust = request.exhaust_allowed && cmd == "getMore" && streams_on(&reply);
        let bytes = if request.legacy {
            wire::encode_op_reply(reply_id, header.request_id, &reply)
        } else {
            wire::encode_op_msg_flags(reply_id, header.request_id, &reply, more_flag(exhaust))
        };
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        // Exhaust: the next batches follow unasked, each answering the previous reply.
        while exhaust {
            let reply = tokio::select! {
                r = run_request(shared, &request.body, connection_id) => r,
                _ = drops.changed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            exhaust = streams_on(&reply);
            let previous = reply_id;
            reply_id = reply_id.wrapping_add(1);
            let bytes = wire::encode_op_msg_flags(reply_id, previous, &reply, more_flag(exhaust));
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
}

fn more_flag(more: bool) -> u32 {
    if more {
        wire::FLAG_MORE_TO_COME
    } else {
        0
    }
}

/// Whether an exhaust getMore goes on after `reply`: its cursor is open and the batch was not
/// empty (an empty batch of a tailable cursor ends the stream instead of spinning).
fn streams_on(reply: &bson::RawDocumentBuf) -> bool {
    let Ok(cursor) = reply.get_document("cursor") else {
        return false;
    };
    let open = cursor.get_i64("id").is_ok_and(|id| id != 0);
    let non_empty = cursor
        .get_array("nextBatch")
        .is_ok_and(|b| b.into_iter().next().is_some());
    open && non_empty
}

/// `client.application.name` of a handshake.
fn client_app_name(body: &Document) -> Option<String> {
    let app = body
        .get_document("client")
        .ok()?
        .get_document("application")
        .ok()?;
    app.get_str("name").ok().map(str::to_string)
}

/// How long an awaitable hello must wait before answering (server-monitoring specification,
/// "Awaitable hello Server Specification"): a hello carrying our own `topologyVersion` and a
/// `maxAwaitTimeMS` is answered when the topology changes or that time has passed. A single
/// node's topology (counter 0) never changes, so it simply waits. Answering at once instead makes
/// drivers' streaming monitors, which do not sleep between awaitable hellos, spin in a tight loop.
fn awaitable_hello_wait(cmd: &str, body: &Document, shared: &Shared) -> Option<Duration> {
    if !matches!(cmd, "hello" | "isMaster" | "ismaster") {
        return None;
    }
    let tv = body.get_document("topologyVersion").ok()?;
    if tv.get_object_id("processId").ok()? != shared.info.process_id {
        return None; // another process's topology: answer immediately
    }
    let counter = match tv.get("counter")? {
        bson::Bson::Int64(c) => *c,
        bson::Bson::Int32(c) => *c as i64,
        _ => return None,
    };
    if counter < 0 {
        return None; // the client's view is older than ours
    }
    let ms = match body.get("maxAwaitTimeMS")? {
        bson::Bson::Int32(i) => *i as i64,
        bson::Bson::Int64(i) => *i,
        bson::Bson::Double(d) => *d as i64,
        _ => return None,
    };
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// Runs a request between the waits its read and write concerns ask for (`afterClusterTime`
/// before, `w: "majority"` after), none of them holding the server lock.
async fn serve_request(
    shared: &Shared,
    body: &crate::server::wire::Command,
    connection_id: i64,
) -> bson::RawDocumentBuf {
    let started = Instant::now();
    if let Err(e) = super::read_concern::wait_for_read_concern(shared, body, started).await {
        return error_reply(&shared.state.lock(), e);
    }
    let mut reply = run_request(shared, body, connection_id).await;
    super::write_concern::wait_for_majority(shared, body, &mut reply, started).await;
    reply
}

/// Runs a request; an awaitData getMore waits (without the lock) for new capped inserts.
async fn run_request(
    shared: &Shared,
    body: &crate::server::wire::Command,
    connection_id: i64,
) -> bson::RawDocumentBuf {
    let max_await = body
        .get("maxTimeMS")
        .and_then(|v| match v {
            bson::Bson::Int32(i) => Some(*i as u64),
            bson::Bson::Int64(i) => Some(*i as u64),
            bson::Bson::Double(d) => Some(*d as u64),
            _ => None,
        })
        .unwrap_or(1000);
    let deadline = Instant::now() + Duration::from_millis(max_await);
    let mut appends = shared.appends.subscribe();
    loop {
        let final_attempt = Instant::now() >= deadline;
        let detach = detach_read(&mut shared.state.lock(), body);
        let outcome = match detach {
            Detach::Reply(reply) => Execution::Done(reply),
            Detach::View(mut view) => {
                let outcome = without_blocking_others(|| {
                    execute(&mut view, &shared.info, body, connection_id, final_attempt)
                });
                reattach(&mut shared.state.lock(), *view);
                outcome
            }
            Detach::Locked => {
                let mut state = shared.state.lock();
                let before = state.capped_appends;
                let outcome = execute(&mut state, &shared.info, body, connection_id, final_attempt);
                if state.capped_appends != before {
                    shared.appends.send_replace(state.capped_appends);
                }
                state.record_history();
                shared.publish_commit_point(&state);
                outcome
            }
        };
        match outcome {
            Execution::Done(reply) => return reply,
            Execution::Wait { seen } => {
                let _ =
                    tokio::time::timeout_at(deadline.into(), appends.wait_for(|v| *v > seen)).await;
            }
        }
    }
}

/// Runs a (possibly long) read on this worker thread, first handing the worker's other tasks to
/// another thread when the runtime allows it, so other connections keep being served.
fn without_blocking_others<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
