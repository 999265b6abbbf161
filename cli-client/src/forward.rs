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

use anyhow::{anyhow, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tern_client::rpc::methods::*;
use tern_client::rpc::RpcClient;
use tern_client::trust::{TrustRequest, TrustResult};

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
    /// `tern status MESSAGE_ID [--json]`
    Status {
        /// Message id, hex.
        id: String,
        /// One JSON object per recipient per line.
        json: bool,
    },
    /// `tern typing CONTACT [--json]`
    Typing {
        /// Contact name.
        contact: String,
        /// Print a JSON object.
        json: bool,
    },
    /// `tern settings read-receipts [on|off]`
    ReadReceipts {
        /// The new value, if one is given.
        set: Option<bool>,
    },
    /// `tern settings direct [on|off|verified]`
    Direct {
        /// The new value, if one is given.
        set: Option<tern_client::settings::DirectMode>,
    },
    /// `tern group ...` and `tern history --group NAME`
    Group {
        /// The command.
        call: tern_client::GroupCall,
        /// Print JSON where the command can.
        json: bool,
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

/// One event as `tern listen` prints it. Only messages and new contacts
/// are shown; falling behind is said on stderr.
fn print_event(
    out: &mut impl Write,
    err: &mut impl Write,
    event: &EventParams,
    json: bool,
) -> Result<()> {
    match event {
        EventParams::Lagged { missed } => line(
            err,
            format!("tern: fell behind; {missed} event(s) not shown (they are in `tern history`)"),
        ),
        EventParams::Delivery { .. } | EventParams::Connection { .. } => Ok(()),
        event if json => line(out, json_line(serde_json::to_value(event))?),
        EventParams::Message {
            from,
            sent_at,
            text,
            group: Some(g),
            ..
        } => line(out, format!("[{sent_at}] #{g} {from}: {text}")),
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
        EventParams::Receipt { from, id, status } => {
            line(out, format!("* {from}: {} {id}", status.as_str()))
        }
        EventParams::Typing {
            from,
            group: Some(g),
        } => line(out, format!("* {from} is typing in #{g}")),
        EventParams::Typing { from, group: None } => line(out, format!("* {from} is typing")),
        EventParams::KeyChange { name, verified } => {
            line(out, crate::key_change_line(name, *verified))
        }
        EventParams::Path {
            contact,
            state,
            rtt_ms,
        } => line(out, crate::path_line(contact, *state, *rtt_ms)),
        EventParams::Presence {
            contact,
            online,
            last_seen,
        } => line(
            out,
            match (online, last_seen) {
                (true, _) => format!("{contact} online"),
                (false, Some(t)) => format!("{contact} offline, last seen {t}"),
                (false, None) => format!("{contact} offline"),
            },
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
    err: &mut impl Write,
    json: bool,
    until: impl std::future::Future<Output = ()>,
) -> Result<bool> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return Ok(true),
            event = client.next_event() => match event? {
                Some(event) => print_event(out, err, &event, json)?,
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
            let verified = if json {
                match client.request(TRUST, &TrustRequest::Verified).await? {
                    TrustResult::Verified { contacts } => contacts,
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            };
            for c in contacts {
                if json {
                    let mut v = serde_json::to_value(&c)?;
                    if let serde_json::Value::Object(m) = &mut v {
                        let is = verified.iter().any(|(n, v)| *n == c.name && *v);
                        m.insert("verified".into(), is.into());
                    }
                    line(out, json_line(Ok(v))?)?;
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
                print_events(&mut client, out, err, json, deadline).await?;
            }
        }
        Forward::Listen { json } => {
            client.call(SUBSCRIBE, serde_json::json!({})).await?;
            if !print_events(&mut client, out, err, json, stop).await? {
                return Err(anyhow!("the client running for this home stopped"));
            }
        }
        Forward::Group { call, json } => {
            let v: serde_json::Value = client.request(GROUP, &call).await?;
            crate::groups::render(&call, &v, json, out, err)?;
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
        Forward::Status { id, json } => {
            let contacts: Vec<ContactInfo> = client.request(CONTACTS, &NoParams {}).await?;
            if contacts.iter().any(|c| c.name == id) {
                let p: PathResult = client.request(PATH, &PathParams { contact: id }).await?;
                let text = crate::path_status_line(&p.contact, p.direct, p.rtt_ms, json);
                return line(out, text);
            }
            let lines: Vec<StatusLine> = client.request(STATUS, &StatusParams { id }).await?;
            for l in lines {
                if json {
                    line(out, json_line(serde_json::to_value(&l))?)?;
                } else {
                    let at = l.time.as_deref().unwrap_or("-");
                    line(out, format!("{}\t{}\t{}", l.name, l.status.as_str(), at))?;
                }
            }
        }
        Forward::Typing { contact, json } => {
            let r: TypingResult = client.request(TYPING, &TypingParams { contact }).await?;
            if json {
                line(out, json_line(serde_json::to_value(&r))?)?;
            } else {
                match r.retry_after_ms {
                    None => line(out, format!("told {} you are typing", r.contact))?,
                    Some(ms) => line(
                        out,
                        format!(
                            "not sent: {} was told moments ago (again in {:.1} s)",
                            r.contact,
                            ms as f64 / 1000.0
                        ),
                    )?,
                }
            }
        }
        Forward::ReadReceipts { set } => {
            let s: tern_client::Settings = client
                .request(
                    SETTINGS,
                    &SettingsParams {
                        read_receipts: set,
                        direct: None,
                    },
                )
                .await?;
            let on = if s.read_receipts { "on" } else { "off" };
            line(out, format!("read-receipts {on}"))?;
        }
        Forward::Direct { set } => {
            let s: tern_client::Settings = client
                .request(
                    SETTINGS,
                    &SettingsParams {
                        read_receipts: None,
                        direct: set,
                    },
                )
                .await?;
            line(out, format!("direct {}", crate::direct_mode_name(s.direct)))?;
        }
        Forward::Block { contact } => {
            let blocked: BlockResult = client.request(BLOCK, &BlockParams { contact }).await?;
            line(
                out,
                format!(
                    "blocked {}: the relay now drops their messages, unseen by them",
                    blocked.blocked
                ),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
