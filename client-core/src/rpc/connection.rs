//! One caller's connection: a reader that parses lines and starts calls, a
//! writer that owns the socket's write half, and, once the caller
//! subscribes, a task that turns client events into notifications.
//!
//! Everything a connection holds is bounded: a request line is at most
//! [`MAX_REQUEST_LINE`], at most [`MAX_IN_FLIGHT`] calls run at once (the
//! reader waits for one to finish before reading more), and at most
//! [`OUT_QUEUE`] lines wait for the writer. Answers wait for room in that
//! queue; notifications never do: a subscriber that reads too slowly loses
//! events, is told how many in a `lagged` event, and holds up neither the
//! client nor any other connection.
//!
//! The connection ends when the caller closes its side (calls already made
//! are still answered; the subscription ends) or the server stops.

use super::dispatch;
use super::framing::{encode_line, FrameError, LineReader, MAX_REQUEST_LINE, MAX_RESPONSE_LINE};
use super::methods::{EventParams, NoParams, EVENT, SUBSCRIBE, UNSUBSCRIBE};
use super::server::{EventFeed, FeedItem, RpcBackend, Stop};
use super::wire::{parse_request, ErrorCode, Id, Request, Response, RpcError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, Instrument};

/// Calls one connection may have running at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// Lines (answers and notifications) waiting for a slow caller to read.
pub const OUT_QUEUE: usize = 64;

/// How long a closing connection waits for its writer to drain.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// Serve one caller until it hangs up or the server stops.
pub(crate) async fn serve<B: RpcBackend>(stream: UnixStream, backend: B, mut stop: Stop) {
    let (read, write) = stream.into_split();
    let (out, out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let mut writer = tokio::spawn(write_lines(write, out_rx).in_current_span());
    let mut reader = LineReader::new(BufReader::new(read), MAX_REQUEST_LINE);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let mut events: Option<JoinHandle<()>> = None;

    loop {
        let line = tokio::select! {
            _ = stop.changed() => break,
            line = reader.next_line() => line,
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(FrameError::TooLong { max }) => {
                let err = ErrorCode::RequestTooLarge
                    .error(format!("request line over {max} bytes; it was skipped"));
                answer(&out, None, Err(err)).await;
                continue;
            }
            Err(FrameError::Io(e)) => {
                debug!("reading a caller: {e}");
                break;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request = match parse_request(&line) {
            Ok(request) => request,
            Err(response) => {
                send(&out, &response).await;
                continue;
            }
        };
        match request.method.as_str() {
            SUBSCRIBE | UNSUBSCRIBE => {
                let on = request.method == SUBSCRIBE;
                let result = dispatch::params::<NoParams>(request.params);
                // Subscribe before answering, so that every event after the
                // answer reaches the caller, and start forwarding after it,
                // so that the answer comes first.
                let mut feed = None;
                if result.is_ok() {
                    if !on {
                        if let Some(task) = events.take() {
                            task.abort();
                        }
                    } else if events.as_ref().is_none_or(|t| t.is_finished()) {
                        feed = Some(backend.subscribe());
                    }
                }
                if let Some(id) = request.id {
                    let result = result.map(|NoParams {}| json!({ "subscribed": on }));
                    answer(&out, Some(id), result).await;
                }
                if let Some(feed) = feed {
                    events = Some(tokio::spawn(
                        forward_events(feed, out.clone()).in_current_span(),
                    ));
                }
            }
            _ => {
                // Waiting here (not queueing) is the backpressure: a caller
                // with MAX_IN_FLIGHT calls running is not read further.
                let permit = tokio::select! {
                    _ = stop.changed() => break,
                    permit = permits.clone().acquire_owned() => permit,
                };
                let backend = backend.clone();
                let out = out.clone();
                calls.spawn(
                    async move {
                        let _permit = permit;
                        let Request {
                            method, params, id, ..
                        } = request;
                        debug!(%method, "call");
                        let result = dispatch::call(&backend, &method, params).await;
                        // A notification (no id) gets no answer, even an error.
                        if let Some(id) = id {
                            answer(&out, Some(id), result).await;
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        while calls.try_join_next().is_some() {}
    }

    // Calls already made are answered; the server's shutdown grace bounds
    // how long that may take.
    while calls.join_next().await.is_some() {}
    if let Some(task) = events.take() {
        task.abort();
        let _ = task.await;
    }
    drop(out);
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Write queued lines until the queue closes or the caller goes away.
async fn write_lines(mut socket: OwnedWriteHalf, mut lines: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = socket.write_all(&line).await {
            debug!("writing to a caller: {e}");
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// Queue one message for the writer, waiting for room.
async fn send(out: &mpsc::Sender<Vec<u8>>, response: &Response) {
    match encode_line(response) {
        Ok(line) => {
            // Err means the writer is gone with the caller; nothing to tell.
            let _ = out.send(line).await;
        }
        Err(e) => debug!("encoding an answer: {e}"),
    }
}

/// Answer call `id` with `result`.
async fn answer(out: &mpsc::Sender<Vec<u8>>, id: Option<Id>, result: Result<Value, RpcError>) {
    let response = match result {
        Ok(value) => Response::result(id, value),
        Err(error) => Response::error(id, error),
    };
    let response = match encode_line(&response) {
        Ok(line) if line.len() <= MAX_RESPONSE_LINE => {
            let _ = out.send(line).await;
            return;
        }
        Ok(line) => Response::error(
            response.id,
            ErrorCode::Internal.error(format!(
                "the result is {} bytes, over the {MAX_RESPONSE_LINE}-byte line limit; ask for less",
                line.len()
            )),
        ),
        Err(e) => Response::error(
            response.id,
            ErrorCode::Internal.error(format!("encoding the result: {e}")),
        ),
    };
    send(out, &response).await;
}

/// What became of a notification offered to the writer.
enum Offer {
    Queued,
    Full,
    Closed,
}

fn offer(out: &mpsc::Sender<Vec<u8>>, event: &EventParams) -> Offer {
    let params = match serde_json::to_value(event) {
        Ok(params) => params,
        Err(e) => {
            debug!("encoding an event: {e}");
            return Offer::Queued;
        }
    };
    let line = match encode_line(&Request::notification(EVENT, params)) {
        Ok(line) => line,
        Err(e) => {
            debug!("encoding an event: {e}");
            return Offer::Queued;
        }
    };
    match out.try_send(line) {
        Ok(()) => Offer::Queued,
        Err(TrySendError::Full(_)) => Offer::Full,
        Err(TrySendError::Closed(_)) => Offer::Closed,
    }
}

/// Turn a subscription's events into notifications, dropping (and
/// counting) what a slow caller has no room for.
async fn forward_events<F: EventFeed>(mut feed: F, out: mpsc::Sender<Vec<u8>>) {
    let mut missed: u64 = 0;
    while let Some(item) = feed.next().await {
        let events = match item {
            FeedItem::Lagged(n) => {
                missed = missed.saturating_add(n);
                continue;
            }
            // One event may be several notifications (a receipt batch is
            // one per message id, as `tern listen --json` prints it).
            FeedItem::Event(e) => EventParams::all_from_event(&e),
        };
        for event in events {
            if missed > 0 {
                match offer(&out, &EventParams::Lagged { missed }) {
                    Offer::Queued => missed = 0,
                    Offer::Full => {
                        missed = missed.saturating_add(1);
                        continue;
                    }
                    Offer::Closed => return,
                }
            }
            match offer(&out, &event) {
                Offer::Queued => {}
                Offer::Full => missed = missed.saturating_add(1),
                Offer::Closed => return,
            }
        }
    }
}
