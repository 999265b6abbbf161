//! End-to-end tests across crates live in `tests/tests/`; this library holds
//! their shared harness: relays on `127.0.0.1:0` in temp directories
//! ([`TestRelay`]), users with a real client in a temp home ([`TestUser`]),
//! a raw protocol stream for tests that speak the wire format themselves
//! ([`RawStream`]), and the workspace's binaries as child processes
//! ([`process`]: every test that starts `tern-relay` or `tern` uses it).
//!
//! Everything here panics on failure: it only ever runs inside tests, where a
//! panic with a clear message is the failure report. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use prost::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tern_client::transport::{Dialer, RelayLink};
pub use tern_client::{now_ms, random16};
use tern_client::{Client, Event, ReceivedMessage, SendOutcome};
use tern_protocol::io::{read_frame, ReadFrameError};
use tern_protocol::pb;
use tern_protocol::url::RelayUrl;
use tern_relay::store::EmbeddedStore;
use tern_relay::{
    Clock, Limits, ManualClock, Observer, RelayConfig, RunningRelay, StartError, SystemClock,
};

pub mod hostile;
pub mod linking;
pub mod listen;
pub mod process;
pub mod redis_cluster;

/// Upper bound on any single wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a `receive` keeps listening after the backlog in polling loops.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// A relay on `127.0.0.1` with its data in a temp directory. It can be
/// stopped and restarted on the same address and data, as clients keep the
/// relay URL (with its port) they registered with.
pub struct TestRelay {
    dir: TempDir,
    addr: SocketAddr,
    url: RelayUrl,
    clock: Arc<dyn Clock>,
    limits: Limits,
    observer: Observer,
    running: Option<RunningRelay>,
}

impl TestRelay {
    /// A relay with the system clock and default limits.
    pub async fn start() -> Self {
        Self::start_with(None, Limits::default()).await
    }

    /// A relay with `clock` (the system clock if `None`) and `limits`.
    pub async fn start_with(clock: Option<ManualClock>, limits: Limits) -> Self {
        Self::start_observed(clock, limits, Observer::default()).await
    }

    /// As [`TestRelay::start_with`], telling `observer` what the relay sees
    /// per connection.
    pub async fn start_observed(
        clock: Option<ManualClock>,
        limits: Limits,
        observer: Observer,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = match clock {
            Some(c) => Arc::new(c),
            None => Arc::new(SystemClock),
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let running = launch(dir.path(), listen, &clock, &limits, &observer).await;
        Self {
            addr: running.local_addr,
            url: running.url.clone(),
            dir,
            clock,
            limits,
            observer,
            running: Some(running),
        }
    }

    /// The URL clients register with.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// The bound UDP address (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running relay; panics if it is stopped.
    pub fn running(&self) -> &RunningRelay {
        self.running.as_ref().expect("the relay is stopped")
    }

    /// Shut the relay down gracefully (close connections, flush the store).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Start the relay again on the same address and data directory,
    /// stopping it first if it runs. The URL must not change.
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = launch(
            self.dir.path(),
            self.addr,
            &self.clock,
            &self.limits,
            &self.observer,
        )
        .await;
        assert_eq!(running.url, self.url, "the relay URL changed on restart");
        self.running = Some(running);
    }

    /// Stop the relay and open its database directly, for looking at what
    /// it stored. Restart the relay after dropping the store.
    pub async fn open_store(&mut self) -> EmbeddedStore {
        self.stop().await;
        let db = self.dir.path().join("db");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match EmbeddedStore::open(&db) {
                Ok(s) => return s,
                // The stopped relay's last tasks may still hold the database
                // lock for a moment; there is no signal for its release.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot open the relay's store: {e}"),
            }
        }
    }
}

async fn launch(
    dir: &Path,
    listen: SocketAddr,
    clock: &Arc<dyn Clock>,
    limits: &Limits,
    observer: &Observer,
) -> RunningRelay {
    let config = RelayConfig {
        listen,
        data_dir: dir.to_path_buf(),
        public_host: None,
        limits: limits.clone(),
        observer: observer.clone(),
        ..RelayConfig::default()
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        match RunningRelay::start(config.clone(), Arc::clone(clock)).await {
            Ok(r) => return r,
            // After a shutdown in this process the old relay's database lock
            // and UDP socket are released by tasks winding down on their own;
            // nothing signals when, so retry within a bound.
            Err(StartError::Store(_) | StartError::Bind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("relay did not start on {listen}: {e}"),
        }
    }
}

/// A user: a real client with its account in a temp home directory.
pub struct TestUser {
    /// The name the user registered with (what contacts call them).
    pub name: String,
    /// The client.
    pub client: Client,
    home: TempDir,
}

impl TestUser {
    /// Create an account named `name` with `relay` as home relay.
    pub async fn new(relay: &TestRelay, name: &str) -> Self {
        Self::on(relay.url(), name).await
    }

    /// Create an account named `name` on the relay at `url` (also a relay
    /// this process does not run, such as a `tern-relay` child process).
    pub async fn on(url: &RelayUrl, name: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let client = Client::init(&home.path().join("home"), url, name)
            .await
            .unwrap_or_else(|e| panic!("init {name}: {e}"));
        // Timing is not what these tests look at (unlinkable.rs sets its own).
        client.set_send_spacing(Duration::ZERO, Duration::ZERO);
        Self {
            name: name.to_string(),
            client,
            home,
        }
    }

    /// The directory holding everything this client stores.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// This user's mailbox id on its home relay.
    pub fn mailbox(&self) -> [u8; 16] {
        self.client.profile().mailbox_id
    }

    /// Drop the client (closing its store) and keep only the home directory.
    pub fn into_home(self) -> TempDir {
        drop(self.client);
        self.home
    }

    /// Send `text` to `to` and insist it reached the contact's relay now.
    pub async fn send(&mut self, to: &str, text: &str) -> String {
        let (id, outcome) = self
            .client
            .send_text(to, text)
            .await
            .unwrap_or_else(|e| panic!("{} -> {to}: {e}", self.name));
        assert_eq!(outcome, SendOutcome::Sent, "{} -> {to}: {text}", self.name);
        id
    }

    /// Receive repeatedly until `done` holds for everything received so far;
    /// panics after [`DEADLINE`]. Returns everything received.
    pub async fn receive_until(
        &mut self,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + DEADLINE;
        let mut events = Vec::new();
        loop {
            let got = self
                .client
                .receive(POLL_WAIT)
                .await
                .unwrap_or_else(|e| panic!("{} receiving: {e}", self.name));
            events.extend(got);
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{} waited too long for {what}; got {events:?}",
                self.name
            );
        }
    }

    /// Receive until `n` text messages have arrived; returns them.
    pub async fn receive_messages(&mut self, n: usize) -> Vec<ReceivedMessage> {
        let events = self
            .receive_until(&format!("{n} messages"), |e| messages(e).len() >= n)
            .await;
        messages(&events)
    }

    /// One more receive, for checking that nothing else is waiting.
    pub async fn receive_rest(&mut self) -> Vec<Event> {
        self.client
            .receive(POLL_WAIT)
            .await
            .unwrap_or_else(|e| panic!("{} receiving: {e}", self.name))
    }
}

/// The text messages among `events`.
pub fn messages(events: &[Event]) -> Vec<ReceivedMessage> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The texts of `messages`, in order.
pub fn texts(messages: &[ReceivedMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

/// Make `inviter` and `acceptor` contacts: `acceptor` accepts an invite of
/// `inviter` (calling them by their name), and `inviter` receives the hello
/// (calling `acceptor` by theirs).
pub async fn befriend(inviter: &mut TestUser, acceptor: &mut TestUser) {
    let code = inviter.client.invite().await.unwrap();
    acceptor
        .client
        .accept(&code, &inviter.name)
        .await
        .unwrap_or_else(|e| panic!("{} accepting: {e}", acceptor.name));
    let added = Event::ContactAdded {
        name: acceptor.name.clone(),
    };
    let events = inviter
        .receive_until("the contact's hello", |e| e.contains(&added))
        .await;
    assert_eq!(
        events,
        vec![added],
        "{} got more than a hello",
        inviter.name
    );
}

/// A connection to `url` for speaking the protocol directly. Keep the
/// dialer alive as long as the link.
pub async fn connect(url: &RelayUrl) -> (Dialer, RelayLink) {
    let mut dialer = Dialer::default();
    let link = dialer.connect(url).await.unwrap();
    (dialer, link)
}

/// The mailbox id and send token an invite code carries.
pub fn invite_address(code: &str) -> ([u8; 16], [u8; 32]) {
    let invite = tern_protocol::invite::decode_invite(code).unwrap();
    let address = invite.address.unwrap();
    (
        address.mailbox_id[..].try_into().unwrap(),
        address.send_token[..].try_into().unwrap(),
    )
}

/// A `Send` frame.
pub fn send_frame(
    request_id: u64,
    mailbox: &[u8],
    token: &[u8],
    message_id: &[u8],
    payload: &[u8],
) -> pb::ClientFrame {
    pb::ClientFrame::send(
        request_id,
        Bytes::copy_from_slice(mailbox),
        Bytes::copy_from_slice(token),
        Bytes::copy_from_slice(message_id),
        Bytes::copy_from_slice(payload),
    )
}

/// One bidirectional stream written and read by hand.
pub struct RawStream {
    /// Our side.
    pub send: quinn::SendStream,
    /// The relay's side.
    pub recv: quinn::RecvStream,
}

impl RawStream {
    /// Open a stream and write its kind byte.
    pub async fn open(link: &RelayLink, kind: u8) -> Self {
        let mut s = Self::open_bare(link).await;
        s.write(&[kind]).await;
        s
    }

    /// Open a stream without writing anything.
    pub async fn open_bare(link: &RelayLink) -> Self {
        let (send, recv) = link.open_raw_stream().await.unwrap();
        Self { send, recv }
    }

    /// Write raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Write `body` as one frame (length prefix and body).
    pub async fn write_body(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.write(&frame).await;
    }

    /// Write `msg` as one frame.
    pub async fn write_msg<M: Message>(&mut self, msg: &M) {
        self.write_body(&msg.encode_to_vec()).await;
    }

    /// Finish our side.
    pub fn finish(&mut self) {
        self.send.finish().unwrap();
    }

    /// Read the next frame body (`Ok(None)` once the relay finished).
    pub async fn read_body(&mut self) -> Result<Option<Bytes>, ReadFrameError> {
        tokio::time::timeout(
            DEADLINE,
            read_frame(&mut self.recv, tern_protocol::limits::DEFAULT_MAX_FRAME),
        )
        .await
        .expect("the relay did not answer in time")
    }

    /// Read the next `RelayFrame`; panics if the stream ends or breaks.
    pub async fn read_relay(&mut self) -> pb::relay_frame::Frame {
        let body = self.read_body().await.unwrap().expect("stream ended");
        pb::RelayFrame::decode(&body[..]).unwrap().frame.unwrap()
    }

    /// Read the next `ControlResponse`; panics if the stream ends or breaks.
    pub async fn read_control(&mut self) -> pb::control_response::Response {
        let body = self.read_body().await.unwrap().expect("stream ended");
        pb::ControlResponse::decode(&body[..])
            .unwrap()
            .response
            .unwrap()
    }

    /// Write one `Send` and read its `SendResult` (nothing else may come).
    pub async fn send(&mut self, frame: &pb::ClientFrame) -> pb::SendResult {
        self.write_msg(frame).await;
        match self.read_relay().await {
            pb::relay_frame::Frame::SendResult(r) => r,
            other => panic!("expected a SendResult, got {other:?}"),
        }
    }
}

/// The error code of a `pb::Error`.
pub fn code(e: &pb::Error) -> pb::ErrorCode {
    pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified)
}

/// 32 random bytes (a made-up token).
pub fn random32() -> [u8; 32] {
    rand::random()
}

/// Whether any file under `dir` contains `needle` (a relay's data
/// directory: was an envelope stored?).
pub fn disk_contains(dir: &Path, needle: &[u8]) -> bool {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}
