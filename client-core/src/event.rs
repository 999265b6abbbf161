//! What the client tells an app: events as they happen (messages, new
//! contacts, delivery results, the home relay connection) and the results
//! of sending and of flushing the outbox.

use serde::{Serialize, Serializer};
use tern_protocol::WireError;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A text message from a contact.
    Message(ReceivedMessage),
    /// Someone accepted one of our invites and is now a contact.
    ContactAdded {
        /// The name they gave (made unique among contacts).
        name: String,
    },
    /// What became of a message we sent (only from a running client, see
    /// [`crate::spawn`]).
    Delivery {
        /// Message id, hex.
        message_id: String,
        /// Contact name.
        contact: String,
        /// Where it stands (in JSON, its `status` and `reason` sit beside
        /// the other fields).
        #[serde(flatten)]
        status: DeliveryStatus,
    },
    /// The running client's home relay connection came up or went down.
    Connection {
        /// True once subscribed to the home relay; false when it was lost.
        connected: bool,
    },
    /// This receiver fell behind and missed `missed` events (the client
    /// never waits for a slow receiver).
    Lagged {
        /// How many events it missed.
        missed: u64,
    },
    /// A contact's receipts for messages we sent (only news: each id once
    /// per step). Read ones appear only while read receipts are on.
    Receipt {
        /// Contact name.
        from: String,
        /// Ids (hex) their device stored.
        delivered: Vec<String>,
        /// Ids (hex) their user saw.
        read: Vec<String>,
    },
    /// A contact, or a member of a group, is typing (an ephemeral notice;
    /// only while connected).
    Typing {
        /// Contact name, or the member's name in the group.
        from: String,
        /// The group's name, for a group member typing there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// A contact's identity key changed (see [`crate::verify`]). If they
    /// were verified, sends to them stop until the user confirms.
    KeyChanged {
        /// The contact.
        name: String,
        /// Whether they were verified (sends to them are stopped).
        verified: bool,
    },
    /// A direct path to a contact opened or closed (`crate::direct`).
    Path {
        /// The contact's name.
        contact: String,
        /// Open or closed.
        state: PathState,
        /// Round-trip time when it opened.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_ms: Option<u64>,
    },
    /// A contact's presence changed (any of their devices online makes
    /// them online; `crate::presence`).
    Presence {
        /// The contact's name.
        contact: String,
        /// Online now.
        online: bool,
        /// Offline: when last online (ms since the epoch, to the minute),
        /// unless they hide it.
        last_seen_ms: Option<u64>,
    },
}

/// Whether a direct path is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    /// It opened: 1:1 messages go over it.
    Open,
    /// It closed: everything goes through the relay.
    Closed,
}

/// Where a sent message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The contact's relay holds it durably.
    Sent,
    /// It waits in the outbox.
    Queued {
        /// Why it could not go yet.
        reason: String,
    },
    /// Refused for good (for example, the contact blocked us).
    Failed {
        /// The refusal.
        reason: String,
    },
}

/// A message as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedMessage {
    /// Message id, hex.
    pub id: String,
    /// Contact name.
    pub from: String,
    /// The text.
    pub text: String,
    /// When the sender wrote it, ms since the epoch.
    pub sent_at_ms: u64,
    /// When our home relay accepted it, ms since the epoch.
    pub received_at_ms: u64,
    /// The group's name, for a group message (`from` is then its author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Already read on another of our devices (`DeviceSync.read`): no read
    /// receipt goes out for it from this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

/// What became of the outbox.
#[derive(Debug, Default, Clone)]
pub struct OutboxReport {
    /// Ids (hex) now held durably by their relays.
    pub sent: Vec<String>,
    /// Ids refused for good, with the refusal.
    pub failed: Vec<(String, WireError)>,
    /// Ids still waiting, with why.
    pub queued: Vec<(String, String)>,
}

/// As JSON: `{"sent": [id], "failed": [{"id", "code", "reason"}],
/// "queued": [{"id", "reason"}]}`, `code` being the wire error's name
/// (e.g. `TOKEN_INVALID`).
impl Serialize for OutboxReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Failed<'a> {
            id: &'a str,
            code: &'static str,
            reason: String,
        }
        #[derive(Serialize)]
        struct Queued<'a> {
            id: &'a str,
            reason: &'a str,
        }
        #[derive(Serialize)]
        struct Report<'a> {
            sent: &'a [String],
            failed: Vec<Failed<'a>>,
            queued: Vec<Queued<'a>>,
        }
        Report {
            sent: &self.sent,
            failed: self
                .failed
                .iter()
                .map(|(id, e)| Failed {
                    id,
                    code: e.code.as_str_name(),
                    reason: e.to_string(),
                })
                .collect(),
            queued: self
                .queued
                .iter()
                .map(|(id, reason)| Queued { id, reason })
                .collect(),
        }
        .serialize(serializer)
    }
}

/// The result of sending one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum SendOutcome {
    /// The contact's relay holds it durably.
    Sent,
    /// It waits in the outbox; the reason it could not go yet.
    Queued(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tern_protocol::ErrorCode;

    #[test]
    fn events_and_reports_have_stable_json() {
        let e = Event::Delivery {
            message_id: "ab".into(),
            contact: "bob".into(),
            status: DeliveryStatus::Queued {
                reason: "later".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "delivery", "message_id": "ab", "contact": "bob",
                   "status": "queued", "reason": "later"})
        );
        let report = OutboxReport {
            sent: vec!["a".into()],
            failed: vec![("b".into(), WireError::new(ErrorCode::TokenInvalid, "no"))],
            queued: vec![],
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["sent"], json!(["a"]));
        assert_eq!(v["failed"][0]["code"], json!("TOKEN_INVALID"));
        assert_eq!(
            serde_json::to_value(SendOutcome::Queued("x".into())).unwrap(),
            json!({"status": "queued", "reason": "x"})
        );
    }
}
