//! `tern`: the command-line Tern client. It parses arguments, calls
//! tern-client, and prints; nothing else lives here.

mod devices;
#[cfg(unix)]
mod forward;
pub(crate) mod groups;
mod history_cli;
mod presence_cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};
use tern_client::history::request::{HistoryRequest, HistoryResult};
use tern_client::trust::{TrustRequest, TrustResult};
use tern_client::{Client, Event, SendOutcome, TypingOutcome};
use tern_protocol::url::RelayUrl;

/// Tern: end-to-end encrypted chat through relays that see only sealed envelopes.
#[derive(Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    /// Where this account lives (default: the user's data directory).
    #[arg(long, global = true, env = "TERN_HOME")]
    home: Option<PathBuf>,
    /// Milliseconds kept between this device's authentication (or token
    /// minting) and its sends, drawn at random from MIN-MAX each time
    /// (default 300-3000), so a relay cannot pair them by timing. 0 turns
    /// it off (for tests).
    #[arg(long, global = true, env = "TERN_SEND_SPACING_MS", value_parser = parse_spacing, value_name = "MIN-MAX")]
    send_spacing_ms: Option<(Duration, Duration)>,
    /// Read the account's passphrase from this file (its first line);
    /// otherwise from the TERN_PASSPHRASE environment variable. Never
    /// prompted for.
    #[arg(long, global = true, value_name = "PATH")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account and register a mailbox on a relay.
    Init {
        /// The relay URL printed by `tern-relay run` (with --link: this
        /// device's relay, default the code's).
        #[arg(long, required_unless_present_any = ["restore", "link"])]
        relay: Option<String>,
        /// The name contacts see (with --link: this device's name).
        #[arg(long, required_unless_present_any = ["restore", "link"])]
        name: Option<String>,
        /// Bring back the account in this backup (`tern backup export`)
        /// instead of creating one.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["relay", "name", "link"])]
        restore: Option<PathBuf>,
        /// The backup's recovery phrase (else the TERN_RECOVERY_PHRASE
        /// environment variable). Never prompted for.
        #[arg(long, requires = "restore")]
        phrase: Option<String>,
        /// Protect the store key with a passphrase (Argon2id), read from
        /// --passphrase-file or TERN_PASSPHRASE; every command then needs it.
        #[arg(long)]
        passphrase: bool,
        /// Join an existing account with the code `tern device link` printed.
        #[arg(long, value_name = "CODE")]
        link: Option<String>,
        /// With --link: accept once the check codes are shown (also
        /// TERN_LINK_CONFIRM=1). Compare them first.
        #[arg(long, requires = "link")]
        yes: bool,
        /// With --link: seconds to wait for the existing device (default 600).
        #[arg(long, value_name = "SECS", requires = "link")]
        timeout: Option<u64>,
    },
    /// Link, list, rename and remove this account's devices.
    Device {
        #[command(subcommand)]
        command: devices::DeviceCommand,
    },
    /// Print an invite code to give to one contact (or list or revoke
    /// the invites made).
    Invite {
        /// Also draw it as a QR code.
        #[arg(long)]
        qr: bool,
        /// Days the invite stays usable (default 7, or the
        /// TERN_INVITE_EXPIRES_DAYS setting; fractions allowed).
        #[arg(long, value_name = "DAYS", value_parser = parse_days, env = "TERN_INVITE_EXPIRES_DAYS")]
        expires: Option<Duration>,
        /// List the invites made: id, state, expiry.
        #[arg(long, conflicts_with_all = ["qr", "expires", "revoke"])]
        list: bool,
        /// With --list: one JSON object per line.
        #[arg(long, requires = "list")]
        json: bool,
        /// Revoke the invite with this id (its token too, at the relay).
        #[arg(long, value_name = "ID", conflicts_with_all = ["qr", "expires"])]
        revoke: Option<String>,
    },
    /// Accept an invite code and add its maker as a contact.
    Accept {
        /// The invite code.
        code: String,
        /// Your name for this contact.
        #[arg(long)]
        name: String,
    },
    /// List contacts.
    Contacts {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Send a message (queued on disk if the relay is unreachable).
    Send {
        /// Contact name.
        contact: String,
        /// The message.
        text: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fetch, store, acknowledge and print everything waiting.
    Recv {
        /// Keep waiting this many seconds after the backlog for new messages.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stay connected and print messages as they arrive (Ctrl-C to stop).
    Listen {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the local conversation with a contact (or a group: --group).
    History {
        /// Contact name.
        #[arg(required_unless_present_any = ["group", "restore"])]
        contact: Option<String>,
        /// Print this group's conversation instead.
        #[arg(long, conflicts_with = "contact")]
        group: Option<String>,
        /// At most this many of the latest messages (default 50; 20 with
        /// --remote).
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Page the conversation from the relay's history blobs (newest
        /// first) instead of this device's store.
        #[arg(long, conflicts_with_all = ["group", "restore"])]
        remote: bool,
        /// With --remote: only messages sent before this time (RFC 3339,
        /// as `history` prints it, or ms since the epoch).
        #[arg(long, requires = "remote", value_name = "TIMESTAMP", value_parser = parse_timestamp)]
        before: Option<u64>,
        /// Pull every conversation's history blobs from the relay and
        /// store them here (messages already here are skipped).
        #[arg(long, conflicts_with_all = ["contact", "group"])]
        restore: bool,
    },
    /// Account backups.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Block a contact: revoke the send token they hold for your mailbox.
    Block {
        /// Contact name.
        contact: String,
    },
    /// Show where a message you sent stands, per recipient: sent (their
    /// relay has it), delivered (their device stored it), read (they saw it).
    /// With a contact's name instead: whether a running `tern listen` has
    /// a direct path to them, and its round-trip time.
    Status {
        /// The id `tern send` printed, or a contact's name.
        message_id: String,
        /// One JSON object per recipient per line.
        #[arg(long)]
        json: bool,
    },
    /// Tell a contact or a group you are typing (shown only to those
    /// connected; at most one every 3 seconds per contact or group). A
    /// contact's name is taken first, then a group's.
    Typing {
        /// Contact name, or group name.
        contact: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Contacts' presence: online, or offline and when last seen (as far
    /// as they share it).
    Presence {
        /// Only this contact.
        contact: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show or change settings.
    Settings {
        #[command(subcommand)]
        setting: Setting,
    },
    /// Group chat: create, change membership, list, send.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Protect this account with a new passphrase (from TERN_NEW_PASSPHRASE
    /// or --new-passphrase-file), or remove it; the current one, if any,
    /// as for every command.
    Passphrase {
        /// Read the new passphrase from this file (its first line).
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
        /// Store the key unprotected again.
        #[arg(long, conflicts_with = "new_passphrase_file")]
        remove: bool,
    },
    /// Give a contact a new token to write to you with (through the
    /// end-to-end channel); the old one stops working after a grace period.
    Rotate {
        /// Contact name.
        contact: String,
    },
    /// Show the safety number to compare with a contact (in person or over
    /// another channel), and mark them verified.
    Verify {
        /// Contact name.
        contact: String,
        /// Also draw the safety number as a QR code.
        #[arg(long)]
        qr: bool,
        /// Record the contact as verified (after comparing the numbers).
        #[arg(long, conflicts_with_all = ["unmark", "confirm"])]
        mark: bool,
        /// Record the contact as not verified.
        #[arg(long, conflicts_with = "confirm")]
        unmark: bool,
        /// Accept the contact's new identity key after a key change.
        #[arg(long)]
        confirm: bool,
    },
}

/// `tern group ...`
#[derive(Subcommand, Clone)]
enum GroupCommand {
    /// Create a group with these contacts; you are its admin.
    Create {
        /// The group's name.
        name: String,
        /// Contacts to add.
        contacts: Vec<String>,
    },
    /// Add a contact to a group (admins only).
    Add {
        /// The group's name.
        name: String,
        /// Contact name.
        contact: String,
        /// Make them an admin too.
        #[arg(long)]
        admin: bool,
    },
    /// Remove a member from a group (admins only).
    Remove {
        /// The group's name.
        name: String,
        /// The member (contact name or their name in the group).
        contact: String,
    },
    /// Leave a group.
    Leave {
        /// The group's name.
        name: String,
    },
    /// List your groups.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List a group's members.
    Members {
        /// The group's name.
        name: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Send a message to a group.
    Send {
        /// The group's name.
        name: String,
        /// The message.
        text: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `tern backup ...`
#[derive(Subcommand, Clone)]
enum BackupCommand {
    /// Write this account (keys, contacts, groups, settings, local
    /// history) to FILE, encrypted under a recovery phrase printed once.
    Export {
        /// Where to write it.
        file: PathBuf,
    },
}

/// One setting of `tern settings`.
#[derive(Subcommand, Clone, Debug)]
enum Setting {
    /// Keep history on the relay, encrypted, for DAYS days (1-90), so a new
    /// device can restore it; 0 turns it off and deletes it all at the
    /// relay. Without a value, print the current one.
    History {
        /// 0-90.
        #[arg(value_parser = clap::value_parser!(u32).range(0..=90))]
        days: Option<u32>,
    },
    /// Send read receipts and see contacts' (on, the default), or neither
    /// (off). Without a value, print the current one.
    ReadReceipts {
        /// on or off.
        value: Option<OnOff>,
    },
    /// Talk to contacts over direct paths when both are online: with every
    /// contact (on, the default), nobody (off), or only verified contacts
    /// (verified). A direct path shows each side the other's IP address.
    /// Without a value, print the current one.
    Direct {
        /// on, off or verified.
        value: Option<DirectArg>,
    },
    /// Share presence (online, last seen) with every contact (on, the
    /// default), nobody (off), or only the contacts named (contacts NAME...).
    /// Without a value, print the current one.
    Presence {
        /// on | off | contacts NAME...
        #[arg(num_args = 0.., value_name = "on|off|contacts NAME...")]
        value: Vec<String>,
    },
    /// Let contacts who see your presence see when you were last online
    /// (on, the default; rounded to the minute), or only online/offline (off).
    LastSeen {
        /// on or off.
        value: Option<OnOff>,
    },
    /// Register a push endpoint (UnifiedPush-style URL) the home relay POSTs
    /// an empty wake-up to when mail waits and this device is not
    /// connected; off removes it. Without a value, print the current one.
    Push {
        /// URL or off.
        value: Option<String>,
    },
}

/// `tern settings direct`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DirectArg {
    /// With every contact.
    On,
    /// With nobody.
    Off,
    /// Only with verified contacts.
    Verified,
}

impl From<DirectArg> for tern_client::settings::DirectMode {
    fn from(a: DirectArg) -> Self {
        match a {
            DirectArg::On => Self::On,
            DirectArg::Off => Self::Off,
            DirectArg::Verified => Self::Verified,
        }
    }
}

/// How `tern settings direct` prints a mode.
fn direct_mode_name(m: tern_client::settings::DirectMode) -> &'static str {
    use tern_client::settings::DirectMode;
    match m {
        DirectMode::On => "on",
        DirectMode::Off => "off",
        DirectMode::Verified => "verified",
    }
}

/// How `tern listen` prints a path opening or closing.
fn path_line(contact: &str, state: tern_client::event::PathState, rtt_ms: Option<u64>) -> String {
    match (state, rtt_ms) {
        (tern_client::event::PathState::Open, Some(ms)) => {
            format!("* direct path to {contact} open (rtt {ms} ms)")
        }
        (tern_client::event::PathState::Open, None) => format!("* direct path to {contact} open"),
        (tern_client::event::PathState::Closed, _) => {
            format!("* direct path to {contact} closed")
        }
    }
}

/// `tern status CONTACT`: whether a path is direct, and its round-trip time.
fn path_status_line(contact: &str, direct: bool, rtt_ms: Option<u64>, json: bool) -> String {
    if json {
        return json!({ "contact": contact, "direct": direct, "rtt_ms": rtt_ms }).to_string();
    }
    match (direct, rtt_ms) {
        (true, Some(ms)) => format!("{contact}\tdirect\trtt {ms} ms"),
        (true, None) => format!("{contact}\tdirect"),
        (false, _) => format!("{contact}\trelay"),
    }
}

/// A switch's value.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    /// Turned on.
    On,
    /// Turned off.
    Off,
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn main() {
    tern_protocol::logging::init("error");
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("tern: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

/// `MIN-MAX` or a single number of milliseconds.
fn parse_spacing(s: &str) -> std::result::Result<(Duration, Duration), String> {
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|e| format!("{v:?}: {e}"))
    };
    match s.split_once('-') {
        Some((lo, hi)) => Ok((ms(lo)?, ms(hi)?)),
        None => ms(s).map(|d| (d, d)),
    }
}

/// Run a trust operation ([`tern_client::trust`]) in the client running
/// for `home` if there is one, else here (a rotation is then delivered
/// before returning).
pub(crate) async fn trust_op(
    home: &std::path::Path,
    open: impl FnOnce() -> Result<Client>,
    req: TrustRequest,
) -> Result<TrustResult> {
    #[cfg(unix)]
    if let Some(mut rpc) = tern_client::rpc::RpcClient::connect(home).await? {
        return Ok(rpc.request(tern_client::rpc::methods::TRUST, &req).await?);
    }
    let mut client = open()?;
    let rotate = req.queues();
    let result = client.trust(req).await?;
    if rotate {
        let report = client.flush_outbox().await?;
        if let Some((_, e)) = report.failed.first() {
            anyhow::bail!("the relay refused the new token's message: {e}");
        }
    }
    client.close().await;
    Ok(result)
}

/// A number of days (fractions allowed), more than zero.
fn parse_days(s: &str) -> std::result::Result<Duration, String> {
    let days: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(days > 0.0 && days <= 3650.0) {
        return Err(format!("{s:?}: between 0 and 3650 days"));
    }
    Ok(Duration::from_secs_f64(days * 86_400.0))
}

/// The passphrase from `--passphrase-file` (its first line) or
/// `TERN_PASSPHRASE`, if either is given.
fn passphrase(file: Option<&PathBuf>) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    if let Some(path) = file {
        let raw = zeroize::Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return Ok(Some(zeroize::Zeroizing::new(line.to_vec())));
    }
    Ok(
        std::env::var_os("TERN_PASSPHRASE")
            .map(|v| zeroize::Zeroizing::new(v.into_encoded_bytes())),
    )
}

fn home_dir(home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = home {
        return Ok(h);
    }
    directories::ProjectDirs::from("org", "tern", "tern")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home directory found; pass --home or set TERN_HOME")
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Print what `tern recv` and `tern listen` show: messages, new contacts,
/// receipts (one line per message id) and typing. Other events
/// (deliveries, the connection) are not printed.
fn print_event(e: &Event, as_json: bool) {
    let lines: Vec<String> = match (e, as_json) {
        (Event::Message(m), true) => {
            let mut v = json!({
                "type": "message", "id": m.id, "from": m.from, "text": m.text,
                "sent_at": time(m.sent_at_ms), "received_at": time(m.received_at_ms),
            });
            if let Some(g) = &m.group {
                v["group"] = json!(g);
            }
            if m.read {
                v["read"] = json!(true);
            }
            vec![v.to_string()]
        }
        (Event::Message(m), false) => vec![match &m.group {
            Some(g) => format!("[{}] #{} {}: {}", time(m.sent_at_ms), g, m.from, m.text),
            None => format!("[{}] {}: {}", time(m.sent_at_ms), m.from, m.text),
        }],
        (Event::ContactAdded { name }, true) => {
            vec![json!({ "type": "contact", "name": name }).to_string()]
        }
        (Event::ContactAdded { name }, false) => {
            vec![format!(
                "* {name} accepted your invite and is now a contact"
            )]
        }
        (
            Event::Receipt {
                from,
                delivered,
                read,
            },
            json,
        ) => {
            let tagged = delivered
                .iter()
                .map(|id| (id, "delivered"))
                .chain(read.iter().map(|id| (id, "read")));
            tagged
                .map(|(id, status)| match json {
                    true => json!({ "type": "receipt", "id": id, "from": from, "status": status })
                        .to_string(),
                    false => format!("* {from}: {status} {id}"),
                })
                .collect()
        }
        (Event::Typing { from, group }, true) => {
            let mut v = json!({ "type": "typing", "from": from });
            if let Some(g) = group {
                v["group"] = json!(g);
            }
            vec![v.to_string()]
        }
        (
            Event::Typing {
                from,
                group: Some(g),
            },
            false,
        ) => vec![format!("* {from} is typing in #{g}")],
        (Event::Typing { from, group: None }, false) => vec![format!("* {from} is typing")],
        (Event::KeyChanged { name, verified }, true) => {
            vec![json!({ "type": "key_change", "name": name, "verified": verified }).to_string()]
        }
        (Event::KeyChanged { name, verified }, false) => vec![key_change_line(name, *verified)],
        (
            Event::Path {
                contact,
                state,
                rtt_ms,
            },
            true,
        ) => vec![
            json!({ "type": "path", "contact": contact, "state": state, "rtt_ms": rtt_ms })
                .to_string(),
        ],
        (
            Event::Path {
                contact,
                state,
                rtt_ms,
            },
            false,
        ) => vec![path_line(contact, *state, *rtt_ms)],
        (
            Event::Presence {
                contact,
                online,
                last_seen_ms,
            },
            json,
        ) => vec![presence_cli::presence_line(
            &tern_client::presence::ContactPresence {
                contact: contact.clone(),
                online: Some(*online),
                last_seen_ms: *last_seen_ms,
            },
            json,
        )],
        (Event::Lagged { missed }, _) => {
            eprintln!(
                "tern: fell behind; {missed} event(s) not shown (they are in `tern history`)"
            );
            return;
        }
        (Event::Delivery { .. } | Event::Connection { .. }, _) => return,
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Send what receiving or reading queued (receipts), quietly: a relay
/// that cannot be reached now gets them with the next flush.
async fn send_receipts(client: &mut Client) {
    if client.outbox_len().unwrap_or(0) > 0 {
        if let Err(e) = client.flush_outbox().await {
            eprintln!("tern: receipts wait in the outbox: {e}");
        }
    }
}

/// `tern status` lines for one message.
fn print_status(report: &tern_client::MessageReport, as_json: bool) {
    for r in &report.recipients {
        if as_json {
            let mut line = serde_json::Map::new();
            let mut put = |k: &str, v: serde_json::Value| {
                line.insert(k.to_string(), v);
            };
            put("id", json!(report.id));
            put("identity_key", json!(r.identity_key));
            put("name", json!(r.name));
            put("status", json!(r.status.as_str()));
            for (k, ms) in [
                ("time", r.time_ms),
                ("sent_at", r.sent_at_ms),
                ("delivered_at", r.delivered_at_ms),
                ("read_at", r.read_at_ms),
            ] {
                if let Some(ms) = ms {
                    put(k, json!(time(ms)));
                }
            }
            println!("{}", serde_json::Value::Object(line));
        } else {
            let at = r.time_ms.map(time).unwrap_or_else(|| "-".into());
            println!("{}\t{}\t{}", r.name, r.status.as_str(), at);
        }
    }
}

/// What `tern typing` prints.
fn print_typing(contact: &str, outcome: &TypingOutcome, as_json: bool) {
    let (sent, wait) = match outcome {
        TypingOutcome::Sent => (true, None),
        TypingOutcome::TooSoon(w) => (false, Some(w.as_millis() as u64)),
    };
    match (as_json, wait) {
        (true, None) => println!("{}", json!({ "contact": contact, "sent": sent })),
        (true, Some(ms)) => println!(
            "{}",
            json!({ "contact": contact, "sent": sent, "retry_after_ms": ms })
        ),
        (false, None) => println!("told {contact} you are typing"),
        (false, Some(ms)) => println!(
            "not sent: {contact} was told moments ago (again in {:.1} s)",
            ms as f64 / 1000.0
        ),
    }
}

/// Tell the user what a flush of the outbox changed.
fn tell_flushed(report: &tern_client::OutboxReport) {
    if !report.sent.is_empty() {
        eprintln!(
            "delivered {} queued message(s) to their relays",
            report.sent.len()
        );
    }
    for (id, e) in &report.failed {
        eprintln!("message {id} was refused: {e}");
    }
    if !report.queued.is_empty() {
        eprintln!(
            "{} message(s) still queued: {}",
            report.queued.len(),
            report.queued[0].1
        );
    }
}

/// The command as handed to a running client, if it can be.
#[cfg(unix)]
fn forwardable(command: &Command) -> Option<forward::Forward> {
    use forward::Forward as F;
    Some(match command {
        Command::Invite {
            qr,
            expires: None,
            list: false,
            revoke: None,
            ..
        } => F::Invite { qr: *qr },
        // Trust operations forward themselves (`trust_op`).
        Command::Init { .. }
        | Command::Backup { .. }
        | Command::Settings {
            setting: Setting::History { .. },
        }
        // Presence hands itself to a running client (`presence_cli::op`).
        | Command::Presence { .. }
        | Command::Settings {
            setting: Setting::Presence { .. } | Setting::LastSeen { .. } | Setting::Push { .. },
        }
        | Command::History { remote: true, .. }
        | Command::History { restore: true, .. }
        | Command::Device { .. }
        | Command::Passphrase { .. }
        | Command::Verify { .. }
        | Command::Rotate { .. }
        | Command::Invite { .. } => return None,
        Command::Accept { code, name } => F::Accept {
            code: code.clone(),
            name: name.clone(),
        },
        Command::Contacts { json } => F::Contacts { json: *json },
        Command::Send {
            contact,
            text,
            json,
        } => F::Send {
            contact: contact.clone(),
            text: text.clone(),
            json: *json,
        },
        Command::Recv { wait, json } => F::Recv {
            wait: *wait,
            json: *json,
        },
        Command::Listen { json } => F::Listen { json: *json },
        Command::History {
            contact: Some(contact),
            group: None,
            limit,
            json,
            ..
        } => F::History {
            contact: contact.clone(),
            limit: limit.unwrap_or(50),
            json: *json,
        },
        Command::Block { contact } => F::Block {
            contact: contact.clone(),
        },
        Command::Status { message_id, json } => F::Status {
            id: message_id.clone(),
            json: *json,
        },
        Command::Typing { contact, json } => F::Typing {
            contact: contact.clone(),
            json: *json,
        },
        Command::Settings {
            setting: Setting::ReadReceipts { value },
        } => F::ReadReceipts {
            set: value.map(|v| v == OnOff::On),
        },
        Command::Settings {
            setting: Setting::Direct { value },
        } => F::Direct {
            set: value.map(Into::into),
        },
        Command::History {
            group: Some(name),
            limit,
            json,
            ..
        } => F::Group {
            call: tern_client::GroupCall::History {
                name: name.clone(),
                limit: limit.unwrap_or(50),
            },
            json: *json,
        },
        Command::History { .. } => return None,
        Command::Group { command } => {
            let (call, json) = groups::call_of(command);
            F::Group { call, json }
        }
    })
}

async fn run(cli: Cli) -> Result<()> {
    let home = home_dir(cli.home)?;
    let spacing = cli.send_spacing_ms;
    let secret = passphrase(cli.passphrase_file.as_ref())?;
    let open = |home: &PathBuf| -> Result<Client> {
        let client = Client::open_with(home, secret.as_deref().map(|p| &p[..]))?;
        if let Some((min, max)) = spacing {
            client.set_send_spacing(min, max);
        }
        Ok(client)
    };
    // A client running for this home holds the store: hand it the work.
    #[cfg(unix)]
    if let Some(command) = forwardable(&cli.command) {
        if let Some(result) = forward::try_forward(&home, command).await {
            return result;
        }
    }
    match cli.command {
        Command::Init {
            relay,
            name,
            passphrase,
            restore,
            phrase,
            link,
            yes,
            timeout,
        } => {
            let protect = match (passphrase, &secret) {
                (true, Some(p)) => Some(&p[..]),
                (true, None) => anyhow::bail!(
                    "--passphrase needs the passphrase in TERN_PASSPHRASE or --passphrase-file"
                ),
                (false, _) => None,
            };
            if let Some(file) = restore {
                history_cli::restore_backup(&home, &file, phrase, protect).await?;
                return Ok(());
            }
            if let Some(code) = link {
                return devices::init_linked(
                    &home,
                    &code,
                    name.as_deref(),
                    relay.as_deref(),
                    protect,
                    timeout,
                    yes,
                )
                .await;
            }
            let (Some(relay), Some(name)) = (relay, name) else {
                anyhow::bail!("init needs --relay and --name (or --restore FILE, or --link CODE)");
            };
            let url: RelayUrl = relay.parse().context("bad --relay")?;
            let client = Client::init_with(&home, &url, &name, protect).await?;
            println!(
                "account {} created in {}",
                client.profile().name,
                home.display()
            );
            println!(
                "mailbox {} on {}",
                hex_short(&client.profile().mailbox_id),
                client.profile().relay_url
            );
            client.close().await;
        }
        Command::Invite {
            list: true, json, ..
        } => {
            let TrustResult::Invites { invites } =
                trust_op(&home, || open(&home), TrustRequest::InviteList).await?
            else {
                anyhow::bail!("unexpected answer to invite --list");
            };
            for r in invites {
                if json {
                    println!(
                        "{}",
                        json!({
                            "id": r.id, "state": r.state,
                            "created_at": time(r.created_at_ms),
                            "expires_at": time(r.expires_at_ms),
                            "token_revoked": r.token_revoked,
                        })
                    );
                } else {
                    println!("{}\t{}\texpires {}", r.id, r.state, time(r.expires_at_ms));
                }
            }
        }
        Command::Invite {
            revoke: Some(id), ..
        } => {
            let req = TrustRequest::InviteRevoke { id };
            if let TrustResult::Revoked { id } = trust_op(&home, || open(&home), req).await? {
                println!("revoked invite {id}");
            }
        }
        Command::Invite { qr, expires, .. } => {
            let ttl_ms = expires.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let req = TrustRequest::Invite { ttl_ms };
            let TrustResult::Invite { code, .. } = trust_op(&home, || open(&home), req).await?
            else {
                anyhow::bail!("unexpected answer to invite");
            };
            println!("{code}");
            if qr {
                let qr = qrcode::QrCode::new(code.as_bytes()).context("drawing the QR code")?;
                let art = qr
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build();
                println!("{art}");
            }
        }
        Command::Device { command } => {
            devices::run(&home, || open(&home), command).await?;
        }
        Command::Accept { code, name } => {
            let mut client = open(&home)?;
            let existed = client.contacts()?.iter().any(|c| c.name == name);
            let contact = client.accept(&code, &name).await?;
            println!("added contact {}", contact.name);
            if existed {
                // A re-invite under an existing name: that contact's keys
                // changed (tern_client::verify).
                let state = client.contact_state(&contact.identity_key)?;
                eprintln!(
                    "{}",
                    key_change_line(&contact.name, state.verified_key.is_some())
                );
            }
            if client.outbox_len()? > 0 {
                eprintln!("their relay is unreachable; the introduction is queued and goes out with the next send or recv");
            }
            client.close().await;
        }
        Command::Contacts { json } => {
            let client = open(&home)?;
            for c in client.contacts()? {
                if json {
                    let verified = client
                        .contact_state(&c.identity_key)?
                        .is_verified(&c.identity_key);
                    println!(
                        "{}",
                        json!({
                            "name": c.name, "relay": c.relay_url,
                            "identity_key": hex(&c.identity_key), "verified": verified,
                            // Direct paths live in a running `tern listen` only.
                            "direct": false, "rtt_ms": null,
                        })
                    );
                } else {
                    println!("{}\t{}", c.name, c.relay_url);
                }
            }
        }
        Command::Send {
            contact,
            text,
            json,
        } => {
            let mut client = open(&home)?;
            let (id, outcome) = client.send_text(&contact, &text).await?;
            match (outcome, json) {
                (SendOutcome::Sent, false) => println!("sent {id}"),
                (SendOutcome::Queued(why), false) => println!(
                    "queued {id}: {why}; it goes out with the next `tern send` or `tern recv`"
                ),
                (SendOutcome::Sent, true) => println!("{}", json!({ "id": id, "status": "sent" })),
                (SendOutcome::Queued(why), true) => {
                    println!("{}", json!({ "id": id, "status": "queued", "reason": why }))
                }
            }
            history_cli::upload_quietly(&mut client).await;
            client.close().await;
        }
        Command::Recv { wait, json } => {
            let mut client = open(&home)?;
            // The outbox goes out beside receiving, never before it: a
            // send stuck on a contact's relay does not hold up receiving.
            let (events, report) = client
                .receive_while_flushing(Duration::from_secs(wait))
                .await?;
            tell_flushed(&report);
            for e in events {
                print_event(&e, json);
            }
            send_receipts(&mut client).await;
            history_cli::upload_quietly(&mut client).await;
            client.close().await;
        }
        Command::Listen { json } => {
            let client = open(&home)?;
            let (handle, mut events) = tern_client::spawn(client);
            // Other commands for this home come to us through the socket.
            #[cfg(unix)]
            let server = match tern_client::rpc::RpcServer::start(&home, handle.clone()).await {
                Ok(server) => Some(server),
                Err(e) => {
                    eprintln!("tern: other commands cannot use this listen: {e}");
                    None
                }
            };
            // One Ctrl-C listener for the whole loop: a fresh `ctrl_c()` per
            // turn would miss a SIGINT that arrives while an event prints
            // (tokio reports only signals after the listener exists), and
            // listen would never stop.
            let interrupted = tokio::signal::ctrl_c();
            tokio::pin!(interrupted);
            loop {
                tokio::select! {
                    e = events.next() => match e {
                        Some(e) => print_event(&e, json),
                        None => break,
                    },
                    _ = &mut interrupted => {
                        #[cfg(unix)]
                        if let Some(server) = &server {
                            server.shutdown().await;
                        }
                        // Settle what arrived, close the connection, flush;
                        // then print what the settling showed.
                        handle.shutdown().await;
                        while let Some(e) = events.next().await {
                            print_event(&e, json);
                        }
                        break;
                    }
                }
            }
            #[cfg(unix)]
            if let Some(server) = &server {
                server.shutdown().await;
            }
        }
        Command::Presence { contact, json } => {
            let req = tern_client::presence::request::PresenceRequest::Query { contact };
            let result = presence_cli::op(&home, || open(&home), req).await?;
            presence_cli::print(&result, "presence", json);
        }
        Command::Settings {
            setting: Setting::Presence { value },
        } => {
            let req = presence_cli::sharing_request(&value)?;
            let result = presence_cli::op(&home, || open(&home), req).await?;
            presence_cli::print(&result, "presence", false);
        }
        Command::Settings {
            setting: Setting::LastSeen { value },
        } => {
            let req = tern_client::presence::request::PresenceRequest::LastSeen {
                set: value.map(|v| v == OnOff::On),
            };
            let result = presence_cli::op(&home, || open(&home), req).await?;
            presence_cli::print(&result, "last-seen", false);
        }
        Command::Settings {
            setting: Setting::Push { value },
        } => {
            let req = presence_cli::push_request(value.as_deref());
            let result = presence_cli::op(&home, || open(&home), req).await?;
            presence_cli::print(&result, "push", false);
        }
        Command::History { restore: true, .. } => {
            history_cli::restore(&home, || open(&home)).await?;
        }
        Command::History {
            remote: true,
            contact: Some(contact),
            limit,
            before,
            json,
            ..
        } => {
            let req = HistoryRequest::Remote {
                contact: contact.clone(),
                before_ms: before,
                limit: limit.unwrap_or(20),
            };
            let HistoryResult::Messages { messages } =
                history_cli::op(&home, || open(&home), req).await?
            else {
                anyhow::bail!("unexpected answer to history --remote");
            };
            let me = history_cli::my_name(&home, || open(&home)).await?;
            print_history(&messages, &contact, &me, json);
        }
        Command::Backup {
            command: BackupCommand::Export { file },
        } => {
            history_cli::export_backup(&home, || open(&home), &file).await?;
        }
        Command::Settings {
            setting: Setting::History { days },
        } => {
            let req = match days {
                Some(days) => HistoryRequest::SetDays { days },
                None => HistoryRequest::Days,
            };
            let HistoryResult::Days { days, deleted } =
                history_cli::op(&home, || open(&home), req).await?
            else {
                anyhow::bail!("unexpected answer to settings history");
            };
            match days {
                0 => println!("history off"),
                d => println!("history {d} days"),
            }
            if let Some(n) = deleted {
                println!("deleted {n} history blob(s) at the relay");
            }
        }
        Command::History {
            group: Some(group),
            limit,
            json,
            ..
        } => {
            let mut client = open(&home)?;
            let limit = limit.unwrap_or(50);
            let call = tern_client::GroupCall::History { name: group, limit };
            let v = client.group_call(call.clone()).await?;
            groups::render(
                &call,
                &v,
                json,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            // What was shown counts as read: its receipts go out now.
            send_receipts(&mut client).await;
        }
        Command::History {
            contact,
            limit,
            json,
            ..
        } => {
            let contact = contact.context("name a contact or --group")?;
            let mut client = open(&home)?;
            let (messages, receipts) = client.read_history(&contact, limit.unwrap_or(50))?;
            let me = client.profile().name.clone();
            print_history(&messages, &contact, &me, json);
            if receipts {
                send_receipts(&mut client).await;
            }
            client.close().await;
        }
        Command::Block { contact } => {
            let mut client = open(&home)?;
            client.block(&contact).await?;
            client.close().await;
            println!("blocked {contact}: the relay now drops their messages, unseen by them");
        }
        Command::Status { message_id, json } => {
            let client = open(&home)?;
            if client.contacts()?.iter().any(|c| c.name == message_id) {
                // No running client: no direct path.
                println!("{}", path_status_line(&message_id, false, None, json));
                return Ok(());
            }
            print_status(&client.message_status(&message_id)?, json);
        }
        Command::Typing { contact, json } => {
            let mut client = open(&home)?;
            let outcome = client.send_typing(&contact).await?;
            print_typing(&contact, &outcome, json);
            client.close().await;
        }
        Command::Settings {
            setting: Setting::ReadReceipts { value },
        } => {
            let client = open(&home)?;
            let settings = match value {
                Some(v) => client.set_read_receipts(v == OnOff::On).await?,
                None => client.settings()?,
            };
            println!("read-receipts {}", on_off(settings.read_receipts));
        }
        Command::Settings {
            setting: Setting::Direct { value },
        } => {
            let client = open(&home)?;
            let settings = match value {
                Some(v) => client.set_direct(v.into()).await?,
                None => client.settings()?,
            };
            println!("direct {}", direct_mode_name(settings.direct));
        }
        Command::Group { command } => {
            let mut client = open(&home)?;
            let (call, json) = groups::call_of(&command);
            let v = client.group_call(call.clone()).await?;
            history_cli::upload_quietly(&mut client).await;
            client.close().await;
            groups::render(
                &call,
                &v,
                json,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
        }
        Command::Passphrase {
            new_passphrase_file,
            remove,
        } => {
            #[cfg(unix)]
            if tern_client::rpc::RpcClient::connect(&home).await?.is_some() {
                anyhow::bail!("a `tern listen` is running for this home; stop it first");
            }
            let client = open(&home)?;
            if remove {
                client.set_passphrase(None)?;
                println!("the store key is no longer protected by a passphrase");
            } else {
                let new = match &new_passphrase_file {
                    Some(path) => passphrase(Some(path))?,
                    None => std::env::var_os("TERN_NEW_PASSPHRASE")
                        .map(|v| zeroize::Zeroizing::new(v.into_encoded_bytes())),
                };
                let new = new.context(
                    "the new passphrase goes in TERN_NEW_PASSPHRASE or --new-passphrase-file",
                )?;
                client.set_passphrase(Some(&new[..]))?;
                println!("the store key is now protected by the new passphrase");
            }
        }
        Command::Rotate { contact } => {
            let req = TrustRequest::Rotate {
                contact: contact.clone(),
            };
            trust_op(&home, || open(&home), req).await?;
            println!("{contact} gets a new token; the old one stops working in 2 days");
        }
        Command::Verify {
            contact,
            qr,
            mark,
            unmark,
            confirm,
        } => {
            let go = |req| trust_op(&home, || open(&home), req);
            if mark || unmark {
                go(TrustRequest::SetVerified {
                    contact: contact.clone(),
                    verified: mark,
                })
                .await?;
                let how = if mark { "verified" } else { "not verified" };
                println!("{contact} is now marked {how}");
            } else if confirm {
                go(TrustRequest::ConfirmKey {
                    contact: contact.clone(),
                })
                .await?;
                println!("{contact}'s new identity key is accepted; sends to them resume");
            } else {
                let req = TrustRequest::SafetyNumber { contact };
                let TrustResult::SafetyNumber { number } = go(req).await? else {
                    anyhow::bail!("unexpected answer to verify");
                };
                println!("{}", tern_crypto::safety::grouped(&number));
                if qr {
                    let qr =
                        qrcode::QrCode::new(number.as_bytes()).context("drawing the QR code")?;
                    let art = qr
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build();
                    println!("{art}");
                }
            }
        }
    }
    Ok(())
}

/// Print a conversation as `tern history` does.
fn print_history(messages: &[tern_client::StoredMessage], contact: &str, me: &str, json: bool) {
    for m in messages {
        let who = if m.outgoing { me } else { contact };
        if json {
            println!(
                "{}",
                json!({
                    "type": "message", "id": m.id, "from": who, "text": m.text,
                    "sent_at": time(m.sent_at_ms), "outgoing": m.outgoing,
                    "status": format!("{:?}", m.status).to_lowercase(),
                })
            );
        } else {
            let mark = match &m.status {
                tern_client::Status::Queued => " (queued)",
                tern_client::Status::Failed(_) => " (failed)",
                _ => "",
            };
            println!("[{}] {}: {}{}", time(m.sent_at_ms), who, m.text, mark);
        }
    }
}

/// A time as `history` prints it (RFC 3339) or ms since the epoch.
fn parse_timestamp(s: &str) -> std::result::Result<u64, String> {
    if let Ok(ms) = s.trim().parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{s:?}: {e}"))
}

/// What `tern recv` and `tern listen` say when a contact's key changed.
pub fn key_change_line(name: &str, verified: bool) -> String {
    let stopped = if verified {
        format!(
            "; you had verified them, so sends to them stop until `tern verify {name} --confirm`"
        )
    } else {
        String::new()
    };
    format!("! {name}'s identity key changed: compare the safety number with `tern verify {name}`{stopped}")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_short(b: &[u8]) -> String {
    hex(&b[..b.len().min(4)])
}
