//! Errors of client operations, in the user's terms.

use tern_protocol::{ErrorCode, WireError};
use thiserror::Error;

/// What went wrong in a client operation.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No account in this home directory yet.
    #[error("no tern account in {0} (run `tern init` first)")]
    NoAccount(std::path::PathBuf),
    /// An account already exists in this home directory.
    #[error("a tern account already exists in {0}")]
    AccountExists(std::path::PathBuf),
    /// No contact by that name.
    #[error("no contact named {0:?}")]
    UnknownContact(String),
    /// A contact by that name exists already.
    #[error("a contact named {0:?} already exists")]
    ContactExists(String),
    /// The invite code was refused.
    #[error(transparent)]
    Invite(#[from] tern_protocol::invite::InviteError),
    /// A relay URL was refused.
    #[error(transparent)]
    RelayUrl(#[from] tern_protocol::url::RelayUrlError),
    /// The relay could not be reached or the connection broke.
    #[error("cannot reach relay {relay}: {reason}")]
    Unreachable {
        /// Which relay.
        relay: String,
        /// Why.
        reason: String,
    },
    /// A relay took longer than its deadline to answer (it may be slow, or
    /// hostile: accepting connections and never answering). Whatever was
    /// being sent stays queued.
    #[error("relay {relay} did not answer in time ({what})")]
    TimedOut {
        /// Which relay.
        relay: String,
        /// The operation that timed out.
        what: &'static str,
    },
    /// The relay refused a request.
    #[error("relay refused: {0}")]
    Refused(WireError),
    /// The relay answered something the protocol does not allow.
    #[error("relay broke the protocol: {0}")]
    Protocol(String),
    /// A message is larger than any relay accepts.
    #[error("message too large ({size} bytes, at most {max})")]
    TooLarge {
        /// Its size sealed.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Cryptography failed (a bad key, a damaged store).
    #[error("crypto: {0}")]
    Crypto(#[from] tern_crypto::CryptoError),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// The running client (see [`crate::spawn`]) has stopped.
    #[error("the running client has stopped")]
    Stopped,
    /// No message we sent has this id (`tern status`).
    #[error("no message sent with id {0:?}")]
    UnknownMessage(String),
    /// The store key is protected by a passphrase and none was given.
    #[error(
        "this account is protected by a passphrase: set TERN_PASSPHRASE or pass --passphrase-file"
    )]
    PassphraseNeeded,
    /// The passphrase given does not open the store key.
    #[error("wrong passphrase for this account")]
    WrongPassphrase,
    /// An empty passphrase was given to protect an account.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    /// A verified contact's identity key changed: nothing is sent to them
    /// until the user checks the new safety number and confirms it.
    #[error("{0}'s identity key changed since you verified it; check the safety number with `tern verify {0}` and confirm with `tern verify {0} --confirm`")]
    KeyChanged(String),
    /// No invite with that id.
    #[error("no invite with id {0:?}")]
    UnknownInvite(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// No group by that name.
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    /// A group change this device may not make (not an admin, not a member).
    #[error("{0}")]
    GroupRefused(String),
    /// A history operation that cannot be done as asked (history is off,
    /// days out of range, a blob that does not open).
    #[error("history: {0}")]
    History(String),
    /// A backup that cannot be written or restored.
    #[error("backup: {0}")]
    Backup(String),
    /// A device operation that cannot be done (an unknown device id, the
    /// last device, a link that failed its checks).
    #[error("{0}")]
    Device(String),
    /// A device list that failed its checks (devices/list.rs).
    #[error(transparent)]
    DeviceList(#[from] crate::devices::list::ListError),
    /// A link code that could not be read.
    #[error(transparent)]
    LinkCode(#[from] tern_protocol::link::LinkCodeError),
}

impl ClientError {
    /// Whether the relay refused because the token is invalid (the contact
    /// blocked us or the token was made up).
    pub fn is_token_invalid(&self) -> bool {
        matches!(self, ClientError::Refused(e) if e.code == ErrorCode::TokenInvalid)
    }
}

impl From<sled::Error> for ClientError {
    fn from(e: sled::Error) -> Self {
        ClientError::Store(e.to_string())
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> Self {
        ClientError::Store(format!("bad record: {e}"))
    }
}
