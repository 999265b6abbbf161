//! The socket server and caller over a real Unix socket in a temp dir.
//!
//! The backend is the TEST BACKEND of `test_backend.rs`. The end-to-end
//! test (`tern listen` plus `tern send` against a relay) lands with the
//! client handle.

use super::methods::*;
use super::server::{RpcServer, ServeError};
use super::test_backend::TestBackend;
use super::wire::ErrorCode;
use super::{socket_path, RpcClient, RpcClientError};
use crate::Event;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::timeout;

/// An owner-only home in a temp dir.
fn home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

async fn caller(home: &Path) -> RpcClient {
    RpcClient::connect(home)
        .await
        .unwrap()
        .expect("a live server")
}

/// A raw line-level connection, for what `RpcClient` would never send.
struct Raw {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Raw {
    async fn connect(home: &Path) -> Self {
        let (read, write) = UnixStream::connect(socket_path(home))
            .await
            .unwrap()
            .into_split();
        Self {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let line = timeout(Duration::from_secs(5), self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

#[tokio::test]
async fn rpc_socket_is_owner_only_and_the_home_must_be() {
    let home = home();
    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let mode = std::fs::metadata(server.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    server.shutdown().await;

    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServeError::HomeNotPrivate { mode: 0o755, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn rpc_stale_socket_is_replaced_and_a_live_one_refused() {
    let home = home();
    // A socket file whose process is gone: bound, then the listener closed.
    drop(std::os::unix::net::UnixListener::bind(socket_path(home.path())).unwrap());
    assert!(socket_path(home.path()).exists());
    assert!(RpcClient::connect(home.path()).await.unwrap().is_none());

    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let second = RpcServer::start(home.path(), TestBackend::new()).await;
    match second {
        Err(e @ ServeError::AlreadyRunning { .. }) => {
            assert!(e
                .to_string()
                .contains("another client is running for this home"))
        }
        other => panic!("{other:?}"),
    }
    // The first server is untouched by the refused one.
    let mut c = caller(home.path()).await;
    let p: ProfileResult = c.request(PROFILE, &NoParams {}).await.unwrap();
    assert_eq!(p.name, "alice");
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_a_regular_file_in_the_way_is_left_alone() {
    let home = home();
    std::fs::write(socket_path(home.path()), b"mine").unwrap();
    let err = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::NotASocket { .. }));
    assert_eq!(std::fs::read(socket_path(home.path())).unwrap(), b"mine");
}

#[tokio::test]
async fn rpc_methods_answer_with_the_cli_shapes() {
    let home = home();
    let backend = TestBackend::new();
    let server = RpcServer::start(home.path(), backend.clone())
        .await
        .unwrap();
    let mut c = caller(home.path()).await;

    let sent = c
        .call(SEND, json!({ "contact": "bob", "text": "hello" }))
        .await
        .unwrap();
    assert_eq!(
        sent,
        json!({ "id": format!("{:032x}", 1), "status": "sent" })
    );

    let contacts = c.call(CONTACTS, Value::Null).await.unwrap();
    assert_eq!(
        contacts,
        json!([{ "name": "bob", "relay": "tern://relay.test:4433/#2", "identity_key": hex::encode([2u8; 32]),
                 "direct": false, "rtt_ms": null }])
    );

    let history: Vec<HistoryEntry> = c
        .request(HISTORY, &json!({ "contact": "bob", "limit": 10 }))
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].from.as_str(), history[0].text.as_str()),
        ("alice", "hello")
    );
    assert_eq!(history[0].status, "sent");

    let invite: InviteResult = c.request(INVITE, &NoParams {}).await.unwrap();
    let accepted: AcceptResult = c
        .request(
            ACCEPT,
            &AcceptParams {
                code: invite.code,
                name: "carol".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(accepted.contact.name, "carol");
    assert!(!accepted.introduction_queued);

    let blocked: BlockResult = c
        .request(
            BLOCK,
            &BlockParams {
                contact: "bob".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(blocked.blocked, "bob");
    assert_eq!(
        backend.state.lock().unwrap().blocked,
        vec!["bob".to_string()]
    );

    let outbox: OutboxResult = c.request(FLUSH_OUTBOX, &NoParams {}).await.unwrap();
    assert_eq!(outbox, OutboxResult::default());
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_errors_are_typed_and_keep_the_cli_sentence() {
    let home = home();
    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let mut c = caller(home.path()).await;
    let code = |e: RpcClientError| match e {
        RpcClientError::Remote(e) => (e.code, e.message),
        other => panic!("{other:?}"),
    };

    let e = c
        .call(SEND, json!({ "contact": "zed", "text": "x" }))
        .await
        .unwrap_err();
    assert_eq!(
        code(e),
        (
            ErrorCode::UnknownContact.code(),
            "no contact named \"zed\"".into()
        )
    );
    let e = c.call("nope", Value::Null).await.unwrap_err();
    assert_eq!(code(e).0, -32601);
    let e = c.call(SEND, json!({ "contact": "bob" })).await.unwrap_err();
    assert_eq!(code(e).0, -32602);
    let e = c.call(SEND, json!(["bob", "x"])).await.unwrap_err();
    assert_eq!(code(e).0, -32602);
    let e = c
        .call(ACCEPT, json!({ "code": "bad", "name": "x" }))
        .await
        .unwrap_err();
    assert_eq!(code(e).0, ErrorCode::InvalidInvite.code());
    // The connection is still good after errors.
    assert!(c.call(CONTACTS, Value::Null).await.is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_malformed_and_oversize_lines_get_errors_and_the_connection_stays_usable() {
    let home = home();
    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let mut raw = Raw::connect(home.path()).await;

    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\n").await;
    let r = raw.recv().await;
    assert_eq!(r["error"]["code"], -32700);
    assert_eq!(r["id"], Value::Null);

    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":2}\n").await;
    let r = raw.recv().await;
    assert_eq!(
        (r["error"]["code"].clone(), r["id"].clone()),
        (json!(-32600), json!(2))
    );

    let mut big =
        br#"{"jsonrpc":"2.0","id":3,"method":"send","params":{"contact":"bob","text":""#.to_vec();
    big.extend(vec![b'x'; super::framing::MAX_REQUEST_LINE]);
    big.extend(b"\"}}\n");
    raw.send(&big).await;
    let r = raw.recv().await;
    assert_eq!(r["error"]["code"], ErrorCode::RequestTooLarge.code());
    assert_eq!(r["error"]["data"]["kind"], "request_too_large");

    // A notification (no id) is run but not answered; the call after it is.
    raw.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"profile\"}\n")
        .await;
    raw.send(b"\r\n{\"jsonrpc\":\"2.0\",\"id\":\"last\",\"method\":\"profile\"}\r\n")
        .await;
    let r = raw.recv().await;
    assert_eq!(r["id"], "last");
    assert_eq!(r["result"]["name"], "alice");
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_a_subscriber_receives_events_as_notifications() {
    let home = home();
    let backend = TestBackend::new();
    let server = RpcServer::start(home.path(), backend.clone())
        .await
        .unwrap();

    let mut raw = Raw::connect(home.path()).await;
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"subscribe\"}\n")
        .await;
    assert_eq!(raw.recv().await["result"], json!({ "subscribed": true }));
    backend.emit("bob", "hi", 1);
    let note = raw.recv().await;
    assert_eq!(note.get("id"), None);
    assert_eq!(note["method"], "event");
    assert_eq!(
        note["params"],
        json!({
            "type": "message", "from": "bob", "text": "hi", "id": format!("{:032x}", 1),
            "sent_at": rfc3339_ms(1_700_000_000_001), "received_at": rfc3339_ms(1_700_000_000_501),
        })
    );

    let mut c = caller(home.path()).await;
    c.call(SUBSCRIBE, Value::Null).await.unwrap();
    let _ = backend
        .events
        .send(Event::ContactAdded { name: "dan".into() });
    let event = timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap();
    assert_eq!(
        event.unwrap(),
        Some(EventParams::Contact { name: "dan".into() })
    );

    // Events that arrive while a call waits are kept for next_event.
    backend.emit("bob", "during", 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.call(PROFILE, Value::Null).await.unwrap();
    let event = timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap();
    assert!(matches!(event.unwrap(), Some(EventParams::Message { text, .. }) if text == "during"));

    c.call(UNSUBSCRIBE, Value::Null).await.unwrap();
    backend.emit("bob", "after", 3);
    c.call(PROFILE, Value::Null).await.unwrap();
    assert!(timeout(Duration::from_millis(200), c.next_event())
        .await
        .is_err());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_a_slow_subscriber_blocks_no_one() {
    const EVENTS: u64 = 3000;
    let home = home();
    let backend = TestBackend::new();
    let server = RpcServer::start(home.path(), backend.clone())
        .await
        .unwrap();

    // The slow one subscribes, then reads nothing for a while.
    let mut slow = Raw::connect(home.path()).await;
    slow.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"subscribe\"}\n")
        .await;
    assert_eq!(slow.recv().await["result"]["subscribed"], true);

    let mut fast = caller(home.path()).await;
    fast.call(SUBSCRIBE, Value::Null).await.unwrap();
    let mut other = caller(home.path()).await;

    // Events big enough that the slow caller's socket buffer and queue fill.
    let text = "x".repeat(600);
    let emitter = {
        let backend = backend.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS {
                backend.emit("bob", &text, n);
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    // The fast one keeps receiving: everything, or (on a loaded machine)
    // nearly everything with the rest counted.
    let (mut seen, mut fast_missed) = (0u64, 0u64);
    while seen + fast_missed < EVENTS {
        let event = timeout(Duration::from_secs(10), fast.next_event())
            .await
            .expect("the fast subscriber kept receiving")
            .unwrap();
        match event {
            Some(EventParams::Message { .. }) => seen += 1,
            Some(EventParams::Lagged { missed }) => fast_missed += missed,
            other => panic!("{other:?}"),
        }
    }
    assert!(seen > fast_missed, "fast saw {seen}, missed {fast_missed}");
    emitter.await.unwrap();
    // Calls on other connections are answered at once.
    let answered = timeout(Duration::from_secs(2), other.call(PROFILE, Value::Null)).await;
    assert!(answered.unwrap().is_ok());

    // The slow one now reads what was buffered for it, then, after one more
    // event, word of what it missed.
    let mut got = 0u64;
    while let Ok(line) = timeout(Duration::from_millis(500), slow.lines.next_line()).await {
        let note: Value = serde_json::from_str(&line.unwrap().unwrap()).unwrap();
        assert_eq!(note["params"]["type"], "message");
        got += 1;
    }
    backend.emit("bob", "final", EVENTS);
    let lagged = slow.recv().await;
    assert_eq!(lagged["params"]["type"], "lagged");
    let missed = lagged["params"]["missed"].as_u64().unwrap();
    assert_eq!(slow.recv().await["params"]["text"], "final");
    assert!(missed > 0, "the slow subscriber was told it lagged");
    assert_eq!(got + missed, EVENTS, "every event is delivered or counted");
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_shutdown_removes_the_socket_and_ends_connections() {
    let home = home();
    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let mut c = caller(home.path()).await;
    c.call(SUBSCRIBE, Value::Null).await.unwrap();
    timeout(Duration::from_secs(5), server.shutdown())
        .await
        .unwrap();
    assert!(!socket_path(home.path()).exists());
    let end = timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap();
    assert_eq!(end.unwrap(), None);
    assert!(RpcClient::connect(home.path()).await.unwrap().is_none());
    // The home can be served again.
    let again = RpcServer::start(home.path(), TestBackend::new()).await;
    assert!(again.is_ok());
}

#[tokio::test]
async fn rpc_calls_on_one_connection_run_concurrently() {
    let home = home();
    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let mut raw = Raw::connect(home.path()).await;
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"send\",\"params\":{\"contact\":\"bob\",\"text\":\"slow\"}}\n")
        .await;
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"contacts\"}\n")
        .await;
    assert_eq!(raw.recv().await["id"], 2, "the quick call is not held up");
    assert_eq!(raw.recv().await["id"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_a_caller_that_closes_its_side_still_gets_its_answers() {
    // What `socat` and `nc` do when their input ends.
    let home = home();
    let server = RpcServer::start(home.path(), TestBackend::new())
        .await
        .unwrap();
    let mut raw = Raw::connect(home.path()).await;
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"send\",\"params\":{\"contact\":\"bob\",\"text\":\"slow\"}}\n")
        .await;
    raw.write.shutdown().await.unwrap();
    assert_eq!(raw.recv().await["result"]["status"], "sent");
    let end = timeout(Duration::from_secs(5), raw.lines.next_line()).await;
    assert!(matches!(end, Ok(Ok(None))), "then the server closes");
    server.shutdown().await;
}
