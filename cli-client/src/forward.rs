//! Handing a command to the client already running for this home.
//!
//! While `tern listen` (or an app built on tern-client) runs for a home, it
//! holds the store's lock, so other commands cannot open the store. Before
//! opening it, `run` offers the command to [`try_forward`]: if a client
//! answers on `<home>/tern.sock`, the command is done there and printed
//! here exactly as it prints alone; if not, `try_forward` returns `None`
//! and the command runs on its own.
//!
//! Two commands mean something slightly different when forwarded, because
//! the running client already receives everything as it arrives: `recv`
//! delivers the outbox and prints what arrives in the next `--wait` seconds,
//! and `listen` prints what arrives from now on. `init` is never forwarded
//! (the home has an account already).

// Merge note: main.rs calls `try_forward` once the new `run` lands; until
// then only the tests do.
#![allow(dead_code)]

use anyhow::{anyhow, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tern_client::rpc::methods::*;
use tern_client::rpc::RpcClient;

/// A command that can be handed to a running client, with its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// `tern invite [--qr]`
    Invite {
        /// Also draw a QR code.
        qr: bool,
    },
    /// `tern accept CODE --name NAME`
    Accept {
        /// The invite code.
        code: String,
        /// The new contact's name.
        name: String,
    },
    /// `tern contacts [--json]`
    Contacts {
        /// One JSON object per line.
        json: bool,
    },
    /// `tern send CONTACT TEXT [--json]`
    Send {
        /// Contact name.
        contact: String,
        /// The message.
        text: String,
        /// Print a JSON object.
        json: bool,
    },
    /// `tern recv [--wait S] [--json]`
    Recv {
        /// Seconds to print arrivals for.
        wait: u64,
        /// One JSON object per line.
        json: bool,
    },
    /// `tern listen [--json]`
    Listen {
        /// One JSON object per line.
        json: bool,
    },
    /// `tern history CONTACT [--limit N] [--json]`
    History {
        /// Contact name.
        contact: String,
        /// At most this many of the latest.
        limit: usize,
        /// One JSON object per line.
        json: bool,
    },
    /// `tern block CONTACT`
    Block {
        /// Contact name.
        contact: String,
    },
}

/// Run `command` in the client running for `home`, printing to stdout and
/// stderr what the command prints alone. `None` if no client runs there:
/// the caller then runs the command itself.
pub async fn try_forward(home: &Path, command: Forward) -> Option<Result<()>> {
    let client = match RpcClient::connect(home).await {
        Ok(Some(client)) => client,
        Ok(None) => return None,
        Err(e) => return Some(Err(e.into())),
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Some(
        forward(
            client,
            command,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
            stop,
        )
        .await,
    )
}

/// Print one line and flush it (a `listen` is read as it goes).
fn line(to: &mut impl Write, text: impl std::fmt::Display) -> Result<()> {
    writeln!(to, "{text}")?;
    to.flush()?;
    Ok(())
}

/// A result object as the CLI prints it: keys sorted, as `json!` makes them
/// (a `Value`'s map is ordered by key).
fn json_line(value: serde_json::Result<serde_json::Value>) -> Result<String> {
    Ok(value?.to_string())
}

/// One event as `tern listen` prints it.
fn print_event(out: &mut impl Write, event: &EventParams, json: bool) -> Result<()> {
    if json {
        return line(out, json_line(serde_json::to_value(event))?);
    }
    match event {
        EventParams::Message {
            from,
            sent_at,
            text,
            ..
        } => line(out, format!("[{sent_at}] {from}: {text}")),
        EventParams::Contact { name } => line(
            out,
            format!("* {name} accepted your invite and is now a contact"),
        ),
        EventParams::Lagged { missed } => line(
            out,
            format!("* {missed} event(s) not shown: this terminal read too slowly"),
        ),
    }
}

/// What `tern recv` tells the user about the outbox.
fn print_outbox(err: &mut impl Write, report: &OutboxResult) -> Result<()> {
    if !report.sent.is_empty() {
        line(
            err,
            format!(
                "delivered {} queued message(s) to their relays",
                report.sent.len()
            ),
        )?;
    }
    for f in &report.failed {
        line(err, format!("message {} was refused: {}", f.id, f.error))?;
    }
    if let Some(first) = report.queued.first() {
        line(
            err,
            format!(
                "{} message(s) still queued: {}",
                report.queued.len(),
                first.reason
            ),
        )?;
    }
    Ok(())
}

/// Print events until `until` resolves or the running client stops.
async fn print_events(
    client: &mut RpcClient,
    out: &mut impl Write,
    json: bool,
    until: impl std::future::Future<Output = ()>,
) -> Result<bool> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return Ok(true),
            event = client.next_event() => match event? {
                Some(event) => print_event(out, &event, json)?,
                None => return Ok(false),
            },
        }
    }
}

/// Run `command` over `client`, printing to `out` and `err`; `stop` ends a
/// `listen` (Ctrl-C).
pub async fn forward(
    mut client: RpcClient,
    command: Forward,
    out: &mut impl Write,
    err: &mut impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    match command {
        Forward::Invite { qr } => {
            let invite: InviteResult = client.request(INVITE, &NoParams {}).await?;
            line(out, &invite.code)?;
            if qr {
                let qr =
                    qrcode::QrCode::new(invite.code.as_bytes()).context("drawing the QR code")?;
                let art = qr
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build();
                line(out, art)?;
            }
        }
        Forward::Accept { code, name } => {
            let accepted: AcceptResult =
                client.request(ACCEPT, &AcceptParams { code, name }).await?;
            line(out, format!("added contact {}", accepted.contact.name))?;
            if accepted.introduction_queued {
                line(err, "their relay is unreachable; the introduction is queued and goes out with the next send or recv")?;
            }
        }
        Forward::Contacts { json } => {
            let contacts: Vec<ContactInfo> = client.request(CONTACTS, &NoParams {}).await?;
            for c in contacts {
                if json {
                    line(out, json_line(serde_json::to_value(&c))?)?;
                } else {
                    line(out, format!("{}\t{}", c.name, c.relay))?;
                }
            }
        }
        Forward::Send {
            contact,
            text,
            json,
        } => {
            let sent: SendResult = client.request(SEND, &SendParams { contact, text }).await?;
            if json {
                line(out, json_line(serde_json::to_value(&sent))?)?;
            } else {
                match (sent.status, sent.reason) {
                    (SendStatus::Queued, Some(why)) => line(
                        out,
                        format!(
                            "queued {}: {why}; it goes out with the next `tern send` or `tern recv`",
                            sent.id
                        ),
                    )?,
                    _ => line(out, format!("sent {}", sent.id))?,
                }
            }
        }
        Forward::Recv { wait, json } => {
            // Subscribe first, so nothing arriving during the flush is missed.
            if wait > 0 {
                client.call(SUBSCRIBE, serde_json::json!({})).await?;
            }
            let report: OutboxResult = client.request(FLUSH_OUTBOX, &NoParams {}).await?;
            print_outbox(err, &report)?;
            if wait > 0 {
                let deadline = tokio::time::sleep(Duration::from_secs(wait));
                print_events(&mut client, out, json, deadline).await?;
            }
        }
        Forward::Listen { json } => {
            client.call(SUBSCRIBE, serde_json::json!({})).await?;
            if !print_events(&mut client, out, json, stop).await? {
                return Err(anyhow!("the client running for this home stopped"));
            }
        }
        Forward::History {
            contact,
            limit,
            json,
        } => {
            let entries: Vec<HistoryEntry> = client
                .request(HISTORY, &HistoryParams { contact, limit })
                .await?;
            for m in entries {
                if json {
                    line(out, json_line(serde_json::to_value(&m))?)?;
                } else {
                    let mark = if m.status == "queued" {
                        " (queued)"
                    } else if m.status.starts_with("failed") {
                        " (failed)"
                    } else {
                        ""
                    };
                    line(
                        out,
                        format!("[{}] {}: {}{}", m.sent_at, m.from, m.text, mark),
                    )?;
                }
            }
        }
        Forward::Block { contact } => {
            let blocked: BlockResult = client.request(BLOCK, &BlockParams { contact }).await?;
            line(
                out,
                format!(
                    "blocked {}: the relay now refuses their messages",
                    blocked.blocked
                ),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Forwarded commands against a server over a real socket, with a TEST
    //! BACKEND in place of a running client; each expected line is what
    //! main.rs prints for the same result alone.

    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    use tern_client::rpc::{EventFeed, FeedItem, RpcBackend, RpcServer};
    use tern_client::store::Profile;
    use tern_client::{
        ClientError, Contact, Event, OutboxReport, ReceivedMessage, SendOutcome, Status,
        StoredMessage,
    };
    use tokio::sync::broadcast;

    /// TEST BACKEND: fixed answers and a broadcast channel of events.
    #[derive(Clone)]
    struct TestBackend {
        events: broadcast::Sender<Event>,
        queued: Arc<Mutex<Vec<(String, String)>>>,
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
                "{{\"identity_key\":\"{}\",\"name\":\"bob\",\"relay\":\"tern://relay.test:4433/#ff\"}}\n",
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
            "blocked bob: the relay now refuses their messages\n"
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
}
