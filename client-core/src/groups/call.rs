//! One group command as data ([`GroupCall`]) and its result as JSON, so the
//! CLI runs it the same way alone ([`Client::group_call`]) or handed to a
//! running client over the local socket (RPC method `group`), and prints
//! the same lines either way.

use crate::client::Client;
use crate::error::ClientError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A group command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GroupCall {
    /// Create a group with these contacts.
    Create {
        /// The group's name.
        name: String,
        /// Contact names.
        contacts: Vec<String>,
    },
    /// Add a contact (admins only).
    Add {
        /// The group's name.
        name: String,
        /// Contact name.
        contact: String,
        /// As an admin.
        admin: bool,
    },
    /// Remove a member (admins only).
    Remove {
        /// The group's name.
        name: String,
        /// The member's name.
        contact: String,
    },
    /// Leave.
    Leave {
        /// The group's name.
        name: String,
    },
    /// Every group.
    List,
    /// One group's members.
    Members {
        /// The group's name.
        name: String,
    },
    /// Send a text.
    Send {
        /// The group's name.
        name: String,
        /// The text.
        text: String,
    },
    /// The latest messages.
    History {
        /// The group's name.
        name: String,
        /// At most this many.
        limit: usize,
    },
}

/// A group command as the running client takes it: what needs no network
/// is answered at once, the rest is queued for its flush cycles, so
/// receiving never waits for a group command's relays.
pub(crate) enum Queued {
    /// The result, now.
    Done(Value),
    /// Queued: the result is the next flush's report (with the message id,
    /// for a send: `{"id", "report"}`).
    Flush {
        /// The message id, for a send.
        id: Option<String>,
    },
}

impl Client {
    /// Do the local part of `call` (see [`Queued`]). What it queued is
    /// durable when this returns.
    pub(crate) async fn group_queue(&mut self, call: GroupCall) -> Result<Queued, ClientError> {
        let queued = match call {
            GroupCall::Create { name, contacts } => {
                self.queue_create(&name, &contacts).await?;
                Queued::Flush { id: None }
            }
            GroupCall::Add {
                name,
                contact,
                admin,
            } => {
                self.queue_add(&name, &contact, admin)?;
                Queued::Flush { id: None }
            }
            GroupCall::Remove { name, contact } => {
                self.queue_remove(&name, &contact)?;
                Queued::Flush { id: None }
            }
            GroupCall::Leave { name } => {
                self.queue_leave(&name)?;
                Queued::Flush { id: None }
            }
            GroupCall::Send { name, text } => Queued::Flush {
                id: Some(self.queue_group_text(&name, &text)?),
            },
            other @ (GroupCall::List | GroupCall::Members { .. } | GroupCall::History { .. }) => {
                return self.group_call(other).await.map(Queued::Done);
            }
        };
        self.store.flush().await?;
        Ok(queued)
    }

    /// Run one group command. Results: membership changes give the outbox
    /// report (`{"sent", "failed", "queued"}`); `list` an array of
    /// [`crate::GroupInfo`]; `members` one; `send` `{"id", "report"}`;
    /// `history` an array of [`crate::GroupMessage`] (the incoming ones
    /// count as read: their receipts wait in the outbox).
    pub async fn group_call(&mut self, call: GroupCall) -> Result<Value, ClientError> {
        let v = match call {
            GroupCall::Create { name, contacts } => {
                serde_json::to_value(self.group_create(&name, &contacts).await?)
            }
            GroupCall::Add {
                name,
                contact,
                admin,
            } => serde_json::to_value(self.group_add(&name, &contact, admin).await?),
            GroupCall::Remove { name, contact } => {
                serde_json::to_value(self.group_remove(&name, &contact).await?)
            }
            GroupCall::Leave { name } => serde_json::to_value(self.group_leave(&name).await?),
            GroupCall::List => serde_json::to_value(self.groups()?),
            GroupCall::Members { name } => serde_json::to_value(self.group(&name)?),
            GroupCall::Send { name, text } => {
                let (id, report) = self.group_send(&name, &text).await?;
                Ok(json!({ "id": id, "report": report }))
            }
            GroupCall::History { name, limit } => {
                // Shown to the user: read receipts are queued; the caller
                // flushes the outbox.
                let (messages, _queued) = self.read_group_history(&name, limit)?;
                serde_json::to_value(messages)
            }
        };
        v.map_err(|e| ClientError::Store(format!("encoding a group result: {e}")))
    }
}
