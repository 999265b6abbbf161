//! Forwarded commands against a server over a real socket, with a TEST
//! BACKEND in place of a running client; each expected line is what
//! main.rs prints for the same result alone.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use tern_client::rpc::{EventFeed, FeedItem, RpcBackend, RpcServer};
use tern_client::store::Profile;
use tern_client::{
    ClientError, Contact, Event, MessageReport, OutboxReport, ReceiptState, ReceivedMessage,
    RecipientReport, SendOutcome, Settings, Status, StoredMessage, TypingOutcome,
};
use tokio::sync::broadcast;

/// TEST BACKEND: fixed answers and a broadcast channel of events.
#[derive(Clone)]
struct TestBackend {
    events: broadcast::Sender<Event>,
    queued: Arc<Mutex<Vec<(String, String)>>>,
    read_receipts: Arc<Mutex<bool>>,
}

struct TestFeed(broadcast::Receiver<Event>);

impl EventFeed for TestFeed {
    async fn next(&mut self) -> Option<FeedItem> {
        match self.0.recv().await {
            Ok(e) => Some(FeedItem::Event(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(FeedItem::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

fn bob() -> Contact {
    Contact {
        name: "bob".into(),
        identity_key: [0xab; 32],
        signing_key: [0; 32],
        seal_key: [0; 32],
        relay_url: "tern://relay.test:4433/#ff".into(),
        mailbox_id: [0; 16],
        send_token: [0; 32],
        token_given: None,
        added_at_ms: 0,
    }
}

impl RpcBackend for TestBackend {
    type Events = TestFeed;

    async fn group(&self, call: tern_client::GroupCall) -> Result<serde_json::Value, ClientError> {
        match call {
            tern_client::GroupCall::Send { name, .. } if name == "team" => Ok(serde_json::json!({
                "id": "0a", "report": {"sent": ["0a"], "failed": [], "queued": []}
            })),
            _ => Err(ClientError::UnknownGroup("nope".into())),
        }
    }

    async fn send_text(
        &self,
        contact: &str,
        text: &str,
    ) -> Result<(String, SendOutcome), ClientError> {
        match (contact, text) {
            ("bob", "offline") => Ok(("02".into(), SendOutcome::Queued("relay down".into()))),
            ("bob", _) => Ok(("01".into(), SendOutcome::Sent)),
            _ => Err(ClientError::UnknownContact(contact.into())),
        }
    }
    async fn invite(&self) -> Result<String, ClientError> {
        Ok("CODE".into())
    }
    async fn accept(&self, _code: &str, name: &str) -> Result<Contact, ClientError> {
        self.queued
            .lock()
            .unwrap()
            .push(("03".into(), "relay down".into()));
        Ok(Contact {
            name: name.into(),
            ..bob()
        })
    }
    async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        Ok(vec![bob()])
    }
    async fn history(
        &self,
        _contact: &str,
        _limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let m = |id: &str, outgoing, status| StoredMessage {
            id: id.into(),
            contact: [0xab; 32],
            outgoing,
            text: format!("text {id}"),
            sent_at_ms: 1_700_000_000_000,
            stored_at_ms: 1_700_000_000_000,
            status,
        };
        Ok(vec![
            m("01", false, Status::Received),
            m("02", true, Status::Queued),
            m("03", true, Status::Failed("Blocked".into())),
        ])
    }
    async fn block(&self, _contact: &str) -> Result<(), ClientError> {
        Ok(())
    }
    async fn trust(
        &self,
        req: tern_client::trust::TrustRequest,
    ) -> Result<tern_client::trust::TrustResult, ClientError> {
        use tern_client::trust::{TrustRequest, TrustResult};
        match req {
            TrustRequest::Verified => Ok(TrustResult::Verified {
                contacts: vec![("bob".into(), true)],
            }),
            _ => Err(ClientError::Store("not kept by this backend".into())),
        }
    }
    async fn flush_outbox(&self) -> Result<OutboxReport, ClientError> {
        Ok(OutboxReport {
            sent: vec!["09".into()],
            failed: vec![],
            queued: self.queued.lock().unwrap().clone(),
        })
    }
    async fn profile(&self) -> Result<Profile, ClientError> {
        Ok(Profile {
            name: "alice".into(),
            relay_url: "tern://relay.test:4433/#ee".into(),
            mailbox_id: [0; 16],
        })
    }
    fn subscribe(&self) -> TestFeed {
        TestFeed(self.events.subscribe())
    }
    async fn message_status(&self, id: &str) -> Result<MessageReport, ClientError> {
        if id != "0a" {
            return Err(ClientError::UnknownMessage(id.into()));
        }
        let line = |name: &str, status, at: Option<u64>| RecipientReport {
            name: name.into(),
            identity_key: "ab".into(),
            status,
            time_ms: at,
            sent_at_ms: at,
            delivered_at_ms: None,
            read_at_ms: None,
        };
        Ok(MessageReport {
            id: id.into(),
            recipients: vec![
                line("bob", ReceiptState::Sent, Some(1_700_000_000_000)),
                line("carol", ReceiptState::Queued, None),
            ],
        })
    }
    async fn send_typing(&self, contact: &str) -> Result<TypingOutcome, ClientError> {
        Ok(match contact {
            "bob" => TypingOutcome::Sent,
            _ => TypingOutcome::TooSoon(Duration::from_millis(1_500)),
        })
    }
    async fn settings(&self, read_receipts: Option<bool>) -> Result<Settings, ClientError> {
        let mut on = self.read_receipts.lock().unwrap();
        if let Some(v) = read_receipts {
            *on = v;
        }
        Ok(Settings {
            read_receipts: *on,
            ..Settings::default()
        })
    }
}

struct Fixture {
    home: tempfile::TempDir,
    backend: TestBackend,
    server: RpcServer,
}

async fn fixture() -> Fixture {
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let backend = TestBackend {
        events: broadcast::channel(64).0,
        queued: Arc::default(),
        read_receipts: Arc::new(Mutex::new(true)),
    };
    let server = RpcServer::start(home.path(), backend.clone())
        .await
        .unwrap();
    Fixture {
        home,
        backend,
        server,
    }
}

/// Forward `command`; what it printed to stdout and stderr.
async fn run(f: &Fixture, command: Forward) -> (Result<()>, String, String) {
    let client = RpcClient::connect(f.home.path()).await.unwrap().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = forward(client, command, &mut out, &mut err, std::future::pending()).await;
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

async fn ok(f: &Fixture, command: Forward) -> (String, String) {
    let (r, out, err) = run(f, command).await;
    r.unwrap();
    (out, err)
}

const AT: &str = "2023-11-14T22:13:20.000Z";

#[tokio::test]
async fn no_running_client_means_run_alone() {
    let home = tempfile::tempdir().unwrap();
    assert!(try_forward(home.path(), Forward::Contacts { json: false })
        .await
        .is_none());
}

#[tokio::test]
async fn forwarded_commands_print_what_they_print_alone() {
    let f = fixture().await;
    let send = |text: &str, json| Forward::Send {
        contact: "bob".into(),
        text: text.into(),
        json,
    };
    assert_eq!(ok(&f, send("hi", false)).await.0, "sent 01\n");
    assert_eq!(
        ok(&f, send("hi", true)).await.0,
        "{\"id\":\"01\",\"status\":\"sent\"}\n"
    );
    assert_eq!(
        ok(&f, send("offline", false)).await.0,
        "queued 02: relay down; it goes out with the next `tern send` or `tern recv`\n"
    );
    assert_eq!(
        ok(&f, send("offline", true)).await.0,
        "{\"id\":\"02\",\"reason\":\"relay down\",\"status\":\"queued\"}\n"
    );

    assert_eq!(
        ok(&f, Forward::Contacts { json: false }).await.0,
        "bob\ttern://relay.test:4433/#ff\n"
    );
    assert_eq!(
        ok(&f, Forward::Contacts { json: true }).await.0,
        format!(
            "{{\"direct\":false,\"identity_key\":\"{}\",\"name\":\"bob\",\"relay\":\"tern://relay.test:4433/#ff\",\"rtt_ms\":null,\"verified\":true}}\n",
            "ab".repeat(32)
        )
    );

    let history = |json| Forward::History {
        contact: "bob".into(),
        limit: 50,
        json,
    };
    assert_eq!(
        ok(&f, history(false)).await.0,
        format!(
            "[{AT}] bob: text 01\n[{AT}] alice: text 02 (queued)\n[{AT}] alice: text 03 (failed)\n"
        )
    );
    let json = ok(&f, history(true)).await.0;
    assert_eq!(
        json.lines().nth(2).unwrap(),
        format!(
            "{{\"from\":\"alice\",\"id\":\"03\",\"outgoing\":true,\"sent_at\":\"{AT}\",\"status\":\"failed(\\\"blocked\\\")\",\"text\":\"text 03\",\"type\":\"message\"}}"
        )
    );

    assert_eq!(
        ok(
            &f,
            Forward::Block {
                contact: "bob".into()
            }
        )
        .await
        .0,
        "blocked bob: the relay now drops their messages, unseen by them\n"
    );
    assert_eq!(ok(&f, Forward::Invite { qr: false }).await.0, "CODE\n");
    let accept = Forward::Accept {
        code: "CODE".into(),
        name: "carol".into(),
    };
    assert_eq!(
        ok(&f, accept).await,
        (
            "added contact carol\n".into(),
            "their relay is unreachable; the introduction is queued and goes out with the next send or recv\n".into()
        )
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_refusal_prints_the_same_error() {
    let f = fixture().await;
    let (r, out, _) = run(
        &f,
        Forward::Send {
            contact: "zed".into(),
            text: "x".into(),
            json: false,
        },
    )
    .await;
    assert_eq!(out, "");
    let e = r.unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        ClientError::UnknownContact("zed".into()).to_string()
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn listen_and_recv_print_arrivals() {
    let f = fixture().await;
    let backend = f.backend.clone();
    // Emit once the forwarded listen has subscribed.
    let emitter = tokio::spawn(async move {
        while backend.events.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = backend.events.send(Event::Message(ReceivedMessage {
            id: "aa".into(),
            from: "bob".into(),
            text: "hello".into(),
            sent_at_ms: 1_700_000_000_000,
            received_at_ms: 1_700_000_000_000,
            group: None,
            read: false,
        }));
        let _ = backend
            .events
            .send(Event::ContactAdded { name: "dan".into() });
    });
    let client = RpcClient::connect(f.home.path()).await.unwrap().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stop = async {
        emitter.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    forward(
        client,
        Forward::Listen { json: false },
        &mut out,
        &mut err,
        stop,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("[{AT}] bob: hello\n* dan accepted your invite and is now a contact\n")
    );

    let (out, err) = ok(
        &f,
        Forward::Recv {
            wait: 0,
            json: true,
        },
    )
    .await;
    assert_eq!(out, "");
    assert_eq!(err, "delivered 1 queued message(s) to their relays\n");

    // A listen whose running client stops says so.
    let client = RpcClient::connect(f.home.path()).await.unwrap().unwrap();
    let server = f.server;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.shutdown().await;
    });
    let r = forward(
        client,
        Forward::Listen { json: true },
        &mut Vec::new(),
        &mut Vec::new(),
        std::future::pending(),
    )
    .await;
    stopper.await.unwrap();
    assert!(r.unwrap_err().to_string().contains("stopped"));
}

#[test]
fn events_print_as_listen_prints_them() {
    let print = |event: EventParams, json| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        print_event(&mut out, &mut err, &event, json).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    assert_eq!(
        print(EventParams::Contact { name: "dan".into() }, true),
        (
            "{\"name\":\"dan\",\"type\":\"contact\"}\n".into(),
            String::new()
        )
    );
    assert_eq!(
        print(EventParams::Lagged { missed: 3 }, true),
        (
            String::new(),
            "tern: fell behind; 3 event(s) not shown (they are in `tern history`)\n".into()
        )
    );
    assert_eq!(
        print(EventParams::Connection { connected: true }, false),
        (String::new(), String::new())
    );
}

#[tokio::test]
async fn status_typing_and_settings_print_what_they_print_alone() {
    let f = fixture().await;
    let status = |json| Forward::Status {
        id: "0a".into(),
        json,
    };
    assert_eq!(
        ok(&f, status(false)).await.0,
        format!("bob\tsent\t{AT}\ncarol\tqueued\t-\n")
    );
    assert_eq!(
        ok(&f, status(true)).await.0,
        format!(
            "{{\"id\":\"0a\",\"identity_key\":\"ab\",\"name\":\"bob\",\"sent_at\":\"{AT}\",\"status\":\"sent\",\"time\":\"{AT}\"}}\n\
             {{\"id\":\"0a\",\"identity_key\":\"ab\",\"name\":\"carol\",\"status\":\"queued\"}}\n"
        )
    );
    let (r, _, _) = run(
        &f,
        Forward::Status {
            id: "0b".into(),
            json: false,
        },
    )
    .await;
    assert_eq!(r.unwrap_err().to_string(), "no message sent with id \"0b\"");

    let typing = |contact: &str, json| Forward::Typing {
        contact: contact.into(),
        json,
    };
    assert_eq!(
        ok(&f, typing("bob", false)).await.0,
        "told bob you are typing\n"
    );
    assert_eq!(
        ok(&f, typing("bob", true)).await.0,
        "{\"contact\":\"bob\",\"sent\":true}\n"
    );
    assert_eq!(
        ok(&f, typing("dan", false)).await.0,
        "not sent: dan was told moments ago (again in 1.5 s)\n"
    );
    assert_eq!(
        ok(&f, typing("dan", true)).await.0,
        "{\"contact\":\"dan\",\"retry_after_ms\":1500,\"sent\":false}\n"
    );

    let rr = |set| Forward::ReadReceipts { set };
    assert_eq!(ok(&f, rr(None)).await.0, "read-receipts on\n");
    assert_eq!(ok(&f, rr(Some(false))).await.0, "read-receipts off\n");
    assert_eq!(ok(&f, rr(None)).await.0, "read-receipts off\n");
}

#[tokio::test]
async fn a_receipt_batch_is_a_line_per_message_and_typing_a_line() {
    let f = fixture().await;
    let backend = f.backend.clone();
    let emitter = tokio::spawn(async move {
        while backend.events.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = backend.events.send(Event::Receipt {
            from: "bob".into(),
            delivered: vec!["01".into()],
            read: vec!["01".into(), "02".into()],
        });
        let _ = backend.events.send(Event::Typing {
            from: "bob".into(),
            group: None,
        });
    });
    let client = RpcClient::connect(f.home.path()).await.unwrap().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stop = async {
        emitter.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    forward(
        client,
        Forward::Listen { json: true },
        &mut out,
        &mut err,
        stop,
    )
    .await
    .unwrap();
    let line = |id: &str, status: &str| {
        format!(
            "{{\"from\":\"bob\",\"id\":\"{id}\",\"status\":\"{status}\",\"type\":\"receipt\"}}\n"
        )
    };
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "{}{}{}{{\"from\":\"bob\",\"type\":\"typing\"}}\n",
            line("01", "delivered"),
            line("01", "read"),
            line("02", "read")
        )
    );
    // Without --json, as `tern listen` prints them.
    let print = |event: EventParams| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        print_event(&mut out, &mut err, &event, false).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        print(EventParams::Receipt {
            from: "bob".into(),
            id: "01".into(),
            status: ReceiptState::Read
        }),
        "* bob: read 01\n"
    );
    assert_eq!(
        print(EventParams::Typing {
            from: "bob".into(),
            group: None,
        }),
        "* bob is typing\n"
    );
}

#[tokio::test]
async fn a_forwarded_group_send_prints_sent_and_an_unknown_group_the_error() {
    let f = fixture().await;
    let call = |name: &str| Forward::Group {
        call: tern_client::GroupCall::Send {
            name: name.into(),
            text: "hi".into(),
        },
        json: false,
    };
    assert_eq!(ok(&f, call("team")).await.0, "sent 0a\n");
    let (r, out, _) = run(&f, call("other")).await;
    assert!(r.is_err() && out.is_empty(), "{r:?} {out:?}");
}
