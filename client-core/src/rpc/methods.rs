//! The methods the local socket serves: their names, the params each takes
//! and the result each returns, and the event notification.
//!
//! Field names are the `tern` CLI's `--json` output, exactly, so a script
//! sees the same objects over the socket as from `tern … --json`. Every
//! struct lists its fields in alphabetical order because the CLI prints its
//! objects with sorted keys; a forwarded command then prints byte for byte
//! what it prints alone. Times are RFC 3339 strings with milliseconds, as the
//! CLI prints them.

use crate::receipts::rules::ReceiptState;
use crate::receipts::MessageReport;
use crate::store::Profile;
use crate::typing::TypingOutcome;
use crate::{
    Contact, DeliveryStatus, Event, OutboxReport, ReceivedMessage, SendOutcome, StoredMessage,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};

/// `send`: send a text to a contact.
pub const SEND: &str = "send";
/// `invite`: make an invite code.
pub const INVITE: &str = "invite";
/// `accept`: accept an invite code.
pub const ACCEPT: &str = "accept";
/// `contacts`: list contacts.
pub const CONTACTS: &str = "contacts";
/// `history`: the latest messages with a contact.
pub const HISTORY: &str = "history";
/// `block`: revoke a contact's send token.
pub const BLOCK: &str = "block";
/// `flush_outbox`: try to deliver everything queued.
pub const FLUSH_OUTBOX: &str = "flush_outbox";
/// `profile`: who this account is.
pub const PROFILE: &str = "profile";
/// `group`: params a `GroupCall` (`{"op": "send", "name", "text"}`, ...);
/// result as `Client::group_call` gives it.
pub const GROUP: &str = "group";
/// `trust`: an invite, verification or rotation operation; params are a
/// [`crate::trust::TrustRequest`], the result a
/// [`crate::trust::TrustResult`].
pub const TRUST: &str = "trust";
/// `history_op`: a history operation (`tern settings history`,
/// `history --remote / --restore`); params are a
/// [`crate::history::request::HistoryRequest`], the result a
/// [`crate::history::request::HistoryResult`].
pub const HISTORY_OP: &str = "history_op";
/// `presence_op`: `tern presence`, `tern settings presence|last-seen|push`;
/// params are a [`crate::presence::request::PresenceRequest`], the result
/// a [`crate::presence::request::PresenceResult`].
pub const PRESENCE_OP: &str = "presence_op";
/// `path`: whether a direct path to a contact is open ([`PathParams`],
/// [`PathResult`]).
pub const PATH: &str = "path";
/// `subscribe`: receive `event` notifications on this connection.
pub const SUBSCRIBE: &str = "subscribe";
/// `unsubscribe`: stop them.
pub const UNSUBSCRIBE: &str = "unsubscribe";
/// The notification the server sends a subscriber for each event.
pub const EVENT: &str = "event";
/// `status`: where a message we sent stands, per recipient.
pub const STATUS: &str = "status";
/// `typing`: tell a contact we are typing (ephemeral, rate-limited).
pub const TYPING: &str = "typing";
/// `settings`: read (and optionally change) the settings.
pub const SETTINGS: &str = "settings";

/// A time as the CLI prints it: RFC 3339, UTC, milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A method that takes no params (`params` absent, `null` or `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Params of `send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// Contact name.
    pub contact: String,
    /// The message.
    pub text: String,
}

/// Whether a sent message reached the contact's relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    /// The contact's relay holds it durably.
    Sent,
    /// It waits in the outbox.
    Queued,
}

/// Result of `send`, as `tern send --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    /// Message id, hex.
    pub id: String,
    /// Why it is queued (only when it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Sent or queued.
    pub status: SendStatus,
}

impl SendResult {
    /// The result of sending message `id`.
    pub fn new(id: String, outcome: SendOutcome) -> Self {
        match outcome {
            SendOutcome::Sent => Self {
                id,
                reason: None,
                status: SendStatus::Sent,
            },
            SendOutcome::Queued(why) => Self {
                id,
                reason: Some(why),
                status: SendStatus::Queued,
            },
        }
    }
}

/// Result of `invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteResult {
    /// The invite code to give to one contact.
    pub code: String,
}

/// Params of `accept`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptParams {
    /// The invite code.
    pub code: String,
    /// Your name for the new contact.
    pub name: String,
}

/// A contact, as `tern contacts --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactInfo {
    /// Their identity key, hex.
    pub identity_key: String,
    /// Local name.
    pub name: String,
    /// Their relay URL.
    pub relay: String,
    /// A direct path to them is open.
    #[serde(default)]
    pub direct: bool,
    /// Its round-trip time, when open.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
}

impl From<&Contact> for ContactInfo {
    fn from(c: &Contact) -> Self {
        Self {
            identity_key: hex::encode(c.identity_key),
            name: c.name.clone(),
            relay: c.relay_url.clone(),
            direct: false,
            rtt_ms: None,
        }
    }
}

/// Params of `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathParams {
    /// Contact name.
    pub contact: String,
}

/// Result of `path`, as `tern status CONTACT --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathResult {
    /// Contact name.
    pub contact: String,
    /// A direct path is open.
    pub direct: bool,
    /// Its round-trip time, when open.
    pub rtt_ms: Option<u64>,
}

/// Result of `accept`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptResult {
    /// The new contact.
    pub contact: ContactInfo,
    /// True if their relay could not be reached, so the introduction waits
    /// in the outbox.
    pub introduction_queued: bool,
}

/// Params of `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Contact name.
    pub contact: String,
    /// At most this many of the latest messages (default 50, as the CLI;
    /// at most [`MAX_HISTORY_LIMIT`], see [`HistoryParams::capped_limit`]).
    #[serde(default = "default_history_limit")]
    pub limit: usize,
}

/// Most messages one `history` call returns, whatever limit it asks: a
/// caller on the socket cannot make the running client load a whole
/// conversation into memory and one reply.
pub const MAX_HISTORY_LIMIT: usize = 1_000;

impl HistoryParams {
    /// The limit asked, capped at [`MAX_HISTORY_LIMIT`].
    pub fn capped_limit(&self) -> usize {
        self.limit.min(MAX_HISTORY_LIMIT)
    }
}

fn default_history_limit() -> usize {
    50
}

/// The `type` field of a message object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// A text message.
    Message,
}

/// One message of a conversation, as `tern history --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Who wrote it: the contact's name, or ours for our own.
    pub from: String,
    /// Message id, hex.
    pub id: String,
    /// True if we sent it.
    pub outgoing: bool,
    /// When the sender wrote it.
    pub sent_at: String,
    /// `queued`, `sent`, `received`, or `failed("why")`.
    pub status: String,
    /// The text.
    pub text: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: MessageType,
}

impl HistoryEntry {
    /// `m` from the conversation with `contact`, where we are `me`.
    pub fn new(m: &StoredMessage, contact: &str, me: &str) -> Self {
        Self {
            from: if m.outgoing { me } else { contact }.to_string(),
            id: m.id.clone(),
            outgoing: m.outgoing,
            sent_at: rfc3339_ms(m.sent_at_ms),
            // The CLI's spelling of a status, kept for scripts that read it.
            status: format!("{:?}", m.status).to_lowercase(),
            text: m.text.clone(),
            kind: MessageType::Message,
        }
    }
}

/// Params of `block`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockParams {
    /// Contact name.
    pub contact: String,
}

/// Result of `block`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockResult {
    /// The contact now blocked.
    pub blocked: String,
}

/// A queued message a relay refused for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSend {
    /// The relay's error, as a sentence.
    pub error: String,
    /// Message id, hex.
    pub id: String,
}

/// A message still waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedSend {
    /// Message id, hex.
    pub id: String,
    /// Why it could not go yet.
    pub reason: String,
}

/// Result of `flush_outbox`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxResult {
    /// Refused for good.
    pub failed: Vec<FailedSend>,
    /// Still waiting.
    pub queued: Vec<QueuedSend>,
    /// Ids now held by their relays.
    pub sent: Vec<String>,
}

impl From<&OutboxReport> for OutboxResult {
    fn from(r: &OutboxReport) -> Self {
        Self {
            failed: r
                .failed
                .iter()
                .map(|(id, e)| FailedSend {
                    error: e.to_string(),
                    id: id.clone(),
                })
                .collect(),
            queued: r
                .queued
                .iter()
                .map(|(id, reason)| QueuedSend {
                    id: id.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            sent: r.sent.clone(),
        }
    }
}

/// Result of `profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileResult {
    /// Mailbox id on the home relay, hex.
    pub mailbox_id: String,
    /// Display name.
    pub name: String,
    /// Home relay URL.
    pub relay: String,
}

impl From<&Profile> for ProfileResult {
    fn from(p: &Profile) -> Self {
        Self {
            mailbox_id: hex::encode(p.mailbox_id),
            name: p.name.clone(),
            relay: p.relay_url.clone(),
        }
    }
}

/// Params of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// Message id, hex (as `send` printed it).
    pub id: String,
}

/// One recipient of a sent message, as `tern status --json` prints it
/// (one line each). Times are absent until reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusLine {
    /// When their delivered receipt came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// Message id, hex.
    pub id: String,
    /// Their identity key, hex.
    pub identity_key: String,
    /// Their contact name.
    pub name: String,
    /// When their read receipt came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    /// When their relay acknowledged it durably.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// `queued`, `sent`, `delivered`, `read` or `failed`.
    pub status: ReceiptState,
    /// When that status was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl StatusLine {
    /// Every recipient's line of `report`.
    pub fn all(report: &MessageReport) -> Vec<Self> {
        let t = |ms: Option<u64>| ms.map(rfc3339_ms);
        report
            .recipients
            .iter()
            .map(|r| Self {
                delivered_at: t(r.delivered_at_ms),
                id: report.id.clone(),
                identity_key: r.identity_key.clone(),
                name: r.name.clone(),
                read_at: t(r.read_at_ms),
                sent_at: t(r.sent_at_ms),
                status: r.status,
                time: t(r.time_ms),
            })
            .collect()
    }
}

/// Params of `typing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypingParams {
    /// Contact name.
    pub contact: String,
}

/// Result of `typing`, as `tern typing --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingResult {
    /// Contact name.
    pub contact: String,
    /// When not sent: milliseconds until one may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Whether it went (false: one went to them moments ago).
    pub sent: bool,
}

impl TypingResult {
    /// The result of telling `contact` we type.
    pub fn new(contact: String, outcome: &TypingOutcome) -> Self {
        match outcome {
            TypingOutcome::Sent => Self {
                contact,
                retry_after_ms: None,
                sent: true,
            },
            TypingOutcome::TooSoon(wait) => Self {
                contact,
                retry_after_ms: Some(wait.as_millis() as u64),
                sent: false,
            },
        }
    }
}

/// Params of `settings`: each field given is set; none only reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsParams {
    /// Turn read receipts on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_receipts: Option<bool>,
    /// Set with whom direct paths open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<crate::settings::DirectMode>,
}

/// Result of `subscribe` and `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Whether this connection now receives events.
    pub subscribed: bool,
}

/// The params of an `event` notification: what `tern listen --json` prints
/// for each event, plus `lagged` when this connection fell behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventParams {
    /// A text message from a contact.
    Message {
        /// Contact name.
        from: String,
        /// The group's name, for a group message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Message id, hex.
        id: String,
        /// Already read on another of our devices.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        read: bool,
        /// When our home relay accepted it.
        received_at: String,
        /// When the sender wrote it.
        sent_at: String,
        /// The text.
        text: String,
    },
    /// Someone accepted one of our invites and is now a contact.
    Contact {
        /// The name they gave.
        name: String,
    },
    /// A contact's identity key changed.
    #[serde(rename = "key_change")]
    KeyChange {
        /// The contact.
        name: String,
        /// Whether they were verified (sends to them stop until confirmed).
        verified: bool,
    },
    /// What became of a message we sent (from a running client).
    Delivery {
        /// Contact name.
        contact: String,
        /// Message id, hex.
        id: String,
        /// Why it is queued or failed; absent when sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Where it stands.
        status: DeliveryState,
    },
    /// The running client's home relay connection came up or went down.
    Connection {
        /// True once it is subscribed to the home relay.
        connected: bool,
    },
    /// This connection read too slowly and `missed` events were dropped for
    /// it (the client itself and other connections did not wait).
    Lagged {
        /// How many.
        missed: u64,
    },
    /// A contact's receipt for one message we sent, as `tern listen
    /// --json` prints it.
    Receipt {
        /// Contact name.
        from: String,
        /// Message id, hex.
        id: String,
        /// `delivered` or `read`.
        status: ReceiptState,
    },
    /// A contact, or a group member, is typing.
    Typing {
        /// Contact name, or the member's name in the group.
        from: String,
        /// The group's name, when typing in a group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// A direct path to a contact opened or closed.
    Path {
        /// Contact name.
        contact: String,
        /// `open` or `closed`.
        state: crate::event::PathState,
        /// Round-trip time when it opened.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_ms: Option<u64>,
    },
    /// A contact's presence changed.
    Presence {
        /// Contact name.
        contact: String,
        /// Online now.
        online: bool,
        /// When last online (RFC 3339), or null when online, hidden or
        /// unknown.
        last_seen: Option<String>,
    },
}

/// Where a sent message stands, in a `delivery` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// The contact's relay holds it durably.
    Sent,
    /// It waits in the outbox.
    Queued,
    /// Refused for good.
    Failed,
}

impl From<&ReceivedMessage> for EventParams {
    fn from(m: &ReceivedMessage) -> Self {
        EventParams::Message {
            from: m.from.clone(),
            group: m.group.clone(),
            id: m.id.clone(),
            read: m.read,
            received_at: rfc3339_ms(m.received_at_ms),
            sent_at: rfc3339_ms(m.sent_at_ms),
            text: m.text.clone(),
        }
    }
}

impl EventParams {
    /// The notification for a client event, or `None` for an event that is
    /// not shown to front-ends. A receipt event is several notifications;
    /// this gives its first: use [`Self::all_from_event`].
    pub fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Message(m) => Some(m.into()),
            Event::ContactAdded { name } => Some(EventParams::Contact { name: name.clone() }),
            Event::KeyChanged { name, verified } => Some(EventParams::KeyChange {
                name: name.clone(),
                verified: *verified,
            }),
            Event::Delivery {
                message_id,
                contact,
                status,
            } => {
                let (status, reason) = match status {
                    DeliveryStatus::Sent => (DeliveryState::Sent, None),
                    DeliveryStatus::Queued { reason } => {
                        (DeliveryState::Queued, Some(reason.clone()))
                    }
                    DeliveryStatus::Failed { reason } => {
                        (DeliveryState::Failed, Some(reason.clone()))
                    }
                };
                Some(EventParams::Delivery {
                    contact: contact.clone(),
                    id: message_id.clone(),
                    reason,
                    status,
                })
            }
            Event::Connection { connected } => Some(EventParams::Connection {
                connected: *connected,
            }),
            Event::Lagged { missed } => Some(EventParams::Lagged { missed: *missed }),
            Event::Receipt { .. } => Self::all_from_event(e).into_iter().next(),
            Event::Typing { from, group } => Some(EventParams::Typing {
                from: from.clone(),
                group: group.clone(),
            }),
            Event::Path {
                contact,
                state,
                rtt_ms,
            } => Some(EventParams::Path {
                contact: contact.clone(),
                state: *state,
                rtt_ms: *rtt_ms,
            }),
            Event::Presence {
                contact,
                online,
                last_seen_ms,
            } => Some(EventParams::Presence {
                contact: contact.clone(),
                online: *online,
                last_seen: last_seen_ms.map(rfc3339_ms),
            }),
        }
    }

    /// Every notification for a client event: one per message id for a
    /// receipt, else what [`Self::from_event`] gives.
    pub fn all_from_event(e: &Event) -> Vec<Self> {
        match e {
            Event::Receipt {
                from,
                delivered,
                read,
            } => {
                let line = |status| {
                    move |id: &String| EventParams::Receipt {
                        from: from.clone(),
                        id: id.clone(),
                        status,
                    }
                };
                delivered
                    .iter()
                    .map(line(ReceiptState::Delivered))
                    .chain(read.iter().map(line(ReceiptState::Read)))
                    .collect()
            }
            e => Self::from_event(e).into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_change_prints_as_the_cli_prints_it() {
        let e = Event::KeyChanged {
            name: "bob".into(),
            verified: true,
        };
        let params = EventParams::from_event(&e).unwrap();
        let cli = json!({ "type": "key_change", "name": "bob", "verified": true });
        assert_eq!(serde_json::to_value(&params).unwrap(), cli);
        // `tern listen` beside a running client prints the value's string.
        assert_eq!(
            serde_json::to_value(&params).unwrap().to_string(),
            cli.to_string()
        );
    }

    #[test]
    fn objects_print_as_the_cli_prints_them() {
        // The CLI builds these with json!, which sorts keys; ours must match.
        let m = ReceivedMessage {
            id: "ab".into(),
            from: "bob".into(),
            text: "hi".into(),
            sent_at_ms: 1_700_000_000_123,
            received_at_ms: 1_700_000_000_456,
            group: None,
            read: false,
        };
        let cli = json!({
            "type": "message", "id": m.id, "from": m.from, "text": m.text,
            "sent_at": rfc3339_ms(m.sent_at_ms), "received_at": rfc3339_ms(m.received_at_ms),
        })
        .to_string();
        let ours = serde_json::to_value(EventParams::from(&m)).unwrap();
        assert_eq!(ours.to_string(), cli);
        assert_eq!(rfc3339_ms(m.sent_at_ms), "2023-11-14T22:13:20.123Z");

        let queued = SendResult::new("ab".into(), SendOutcome::Queued("down".into()));
        assert_eq!(
            serde_json::to_string(&queued).unwrap(),
            json!({ "id": "ab", "status": "queued", "reason": "down" }).to_string()
        );
        let sent = SendResult::new("ab".into(), SendOutcome::Sent);
        assert_eq!(
            serde_json::to_string(&sent).unwrap(),
            json!({ "id": "ab", "status": "sent" }).to_string()
        );
    }

    #[test]
    fn history_entries_match_the_cli() {
        let m = StoredMessage {
            id: "01".into(),
            contact: [1; 32],
            outgoing: true,
            text: "yo".into(),
            sent_at_ms: 5,
            stored_at_ms: 5,
            status: crate::Status::Failed("Blocked".into()),
        };
        let e = HistoryEntry::new(&m, "bob", "alice");
        let cli = json!({
            "type": "message", "id": "01", "from": "alice", "text": "yo",
            "sent_at": rfc3339_ms(5), "outgoing": true,
            "status": format!("{:?}", m.status).to_lowercase(),
        });
        assert_eq!(serde_json::to_string(&e).unwrap(), cli.to_string());
    }

    #[test]
    fn params_refuse_unknown_fields_and_default_the_limit() {
        let p: HistoryParams = serde_json::from_value(json!({ "contact": "bob" })).unwrap();
        assert_eq!(p.limit, 50);
        let huge: HistoryParams =
            serde_json::from_value(json!({ "contact": "bob", "limit": u64::MAX })).unwrap();
        assert_eq!(huge.capped_limit(), MAX_HISTORY_LIMIT);
        assert!(
            serde_json::from_value::<SendParams>(json!({ "contact": "b", "txt": "x" })).is_err()
        );
    }
}
