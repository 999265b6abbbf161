//! The caller's side of the socket: find the client running for a home,
//! call its methods, and read its events.
//!
//! `tern` commands use this before opening the store: if a client answers
//! on `<home>/tern.sock` they hand it their work, and otherwise they run on
//! their own. Calls are made one at a time; events that arrive while a call
//! waits for its answer are kept for [`RpcClient::next_event`].

use super::framing::{encode_line, FrameError, LineReader, MAX_RESPONSE_LINE};
use super::methods::{EventParams, EVENT};
use super::socket_path;
use super::wire::{Id, Outcome, Request, Response, RpcError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Events kept while a call waits; older ones are dropped past this, and
/// counted into a `lagged` event.
const MAX_KEPT_EVENTS: usize = 1024;

/// What went wrong talking to the running client.
#[derive(Debug, Error)]
pub enum RpcClientError {
    /// The socket exists but could not be connected to.
    #[error("cannot reach the client running for this home at {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The running client went away.
    #[error("the client running for this home closed the connection")]
    Closed,
    /// The socket failed.
    #[error("talking to the client running for this home")]
    Io(#[from] std::io::Error),
    /// The client sent a line over [`MAX_RESPONSE_LINE`].
    #[error("the client running for this home sent a line over {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The client answered something this caller does not understand.
    #[error("the client running for this home answered something unexpected: {0}")]
    BadAnswer(String),
    /// The call failed; the message is the sentence `tern` prints alone.
    #[error("{0}")]
    Remote(RpcError),
}

impl From<FrameError> for RpcClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLong { max } => RpcClientError::TooLong { max },
            FrameError::Io(e) => RpcClientError::Io(e),
        }
    }
}

/// A connection to the client running for a home.
#[derive(Debug)]
pub struct RpcClient {
    reader: LineReader<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    next_id: i64,
    events: VecDeque<EventParams>,
    dropped: u64,
}

impl RpcClient {
    /// Connect to the client running for `home`, or `None` if there is none
    /// (no socket, or one left by a process that has died).
    pub async fn connect(home: &Path) -> Result<Option<Self>, RpcClientError> {
        let path = socket_path(home);
        match UnixStream::connect(&path).await {
            Ok(stream) => Ok(Some(Self::new(stream))),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                Ok(None)
            }
            Err(source) => Err(RpcClientError::Connect { path, source }),
        }
    }

    /// A client over an already connected stream.
    pub fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
        Self {
            reader: LineReader::new(BufReader::new(read), MAX_RESPONSE_LINE),
            writer,
            next_id: 1,
            events: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Call `method` with named `params` and return its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcClientError> {
        let id = Id::Number(self.next_id);
        self.next_id += 1;
        let line = encode_line(&Request::call(id.clone(), method, params))
            .map_err(|e| RpcClientError::BadAnswer(format!("encoding the call: {e}")))?;
        self.writer.write_all(&line).await?;
        loop {
            match self.read_message().await? {
                Incoming::Event(event) => self.keep(event),
                Incoming::Response(response) if response.id.as_ref() == Some(&id) => {
                    return match response.outcome {
                        Outcome::Result(value) => Ok(value),
                        Outcome::Error(e) => Err(RpcClientError::Remote(e)),
                    }
                }
                // An error about an unreadable line (id null) is about ours.
                Incoming::Response(Response {
                    id: None,
                    outcome: Outcome::Error(e),
                    ..
                }) => return Err(RpcClientError::Remote(e)),
                Incoming::Response(other) => {
                    return Err(RpcClientError::BadAnswer(format!(
                        "an answer to another call ({:?})",
                        other.id
                    )))
                }
            }
        }
    }

    /// [`RpcClient::call`] with typed params and result (see
    /// [`super::methods`]).
    pub async fn request<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, RpcClientError> {
        let params = serde_json::to_value(params)
            .map_err(|e| RpcClientError::BadAnswer(format!("encoding params: {e}")))?;
        let value = self.call(method, params).await?;
        serde_json::from_value(value)
            .map_err(|e| RpcClientError::BadAnswer(format!("{method} result: {e}")))
    }

    /// The next event notification (call `subscribe` first); `None` when the
    /// running client closes the connection.
    pub async fn next_event(&mut self) -> Result<Option<EventParams>, RpcClientError> {
        if self.dropped > 0 {
            let missed = std::mem::take(&mut self.dropped);
            return Ok(Some(EventParams::Lagged { missed }));
        }
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        match self.read_message().await {
            Ok(Incoming::Event(event)) => Ok(Some(event)),
            Ok(Incoming::Response(r)) => Err(RpcClientError::BadAnswer(format!(
                "an answer to no call ({:?})",
                r.id
            ))),
            Err(RpcClientError::Closed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn keep(&mut self, event: EventParams) {
        if self.events.len() >= MAX_KEPT_EVENTS {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
    }

    async fn read_message(&mut self) -> Result<Incoming, RpcClientError> {
        loop {
            let line = self
                .reader
                .next_line()
                .await?
                .ok_or(RpcClientError::Closed)?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(&line)
                .map_err(|e| RpcClientError::BadAnswer(format!("not JSON: {e}")))?;
            if value.get("method").is_some() {
                let note: Request = serde_json::from_value(value)
                    .map_err(|e| RpcClientError::BadAnswer(format!("a notification: {e}")))?;
                if note.method != EVENT {
                    // Methods this caller does not know are for newer callers.
                    continue;
                }
                let params = note.params.unwrap_or(Value::Null);
                match serde_json::from_value::<EventParams>(params) {
                    Ok(event) => return Ok(Incoming::Event(event)),
                    // An event type this caller does not know: skip it.
                    Err(_) => continue,
                }
            }
            let response: Response = serde_json::from_value(value)
                .map_err(|e| RpcClientError::BadAnswer(format!("an answer: {e}")))?;
            return Ok(Incoming::Response(response));
        }
    }
}

enum Incoming {
    Event(EventParams),
    Response(Response),
}
