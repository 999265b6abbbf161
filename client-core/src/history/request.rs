//! The history operations as one request type, so the CLI runs them the
//! same way with or without a running client (as [`crate::trust`] does):
//! alone it calls [`Client::history_op`]; beside `tern listen` it sends the
//! same [`HistoryRequest`] over the local socket (method `history_op`).

use super::remote::RestoreProgress;
use crate::client::Client;
use crate::error::ClientError;
use crate::store::StoredMessage;
use serde::{Deserialize, Serialize};

/// A history operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HistoryRequest {
    /// The days history is kept (0: off).
    Days,
    /// Keep history `days` days (1-90), or turn it off (0).
    SetDays {
        /// 0-90.
        days: u32,
    },
    /// A page of a contact's conversation from the relay.
    Remote {
        /// Contact name.
        contact: String,
        /// Only messages sent before this, ms since the epoch.
        before_ms: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// Restore every conversation from the relay.
    Restore,
    /// Upload what is queued now.
    Upload,
    /// Write an account backup to `path` (absolute), encrypted under a new
    /// recovery phrase ([`crate::backup`]); here because the running client
    /// owns the store.
    BackupExport {
        /// Where to write it.
        path: std::path::PathBuf,
    },
}

/// What a history operation came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HistoryResult {
    /// The days now in force; when history was just turned off, how many
    /// blobs the relay deleted.
    Days {
        /// 0: off.
        days: u32,
        /// Blobs deleted at the relay.
        deleted: Option<u64>,
    },
    /// Messages, oldest first.
    Messages {
        /// The page.
        messages: Vec<StoredMessage>,
    },
    /// A finished restore.
    Restored {
        /// Conversations pulled.
        conversations: usize,
        /// Messages found in blobs.
        messages: u64,
        /// Of those, stored anew.
        restored: u64,
    },
    /// Entries uploaded.
    Uploaded {
        /// How many.
        entries: usize,
    },
    /// A backup written.
    BackupWritten {
        /// Its recovery phrase.
        phrase: String,
    },
}

impl Client {
    /// Run a history operation here; a restore reports to `progress`.
    pub async fn history_op(
        &mut self,
        req: HistoryRequest,
        progress: &mut (dyn FnMut(RestoreProgress) + Send),
    ) -> Result<HistoryResult, ClientError> {
        Ok(match req {
            HistoryRequest::Days => HistoryResult::Days {
                days: self.store.settings()?.history_days,
                deleted: None,
            },
            HistoryRequest::SetDays { days } => {
                let (s, deleted) = self.set_history_days(days).await?;
                if s.history_days > 0 {
                    // What was queued goes up now; a relay that cannot be
                    // reached gets it later.
                    if let Err(e) = self.upload_history().await {
                        tracing::warn!("history upload deferred: {e}");
                    }
                }
                HistoryResult::Days {
                    days: s.history_days,
                    deleted,
                }
            }
            HistoryRequest::Remote {
                contact,
                before_ms,
                limit,
            } => HistoryResult::Messages {
                messages: self.remote_history(&contact, before_ms, limit).await?,
            },
            HistoryRequest::Restore => {
                let p = self.restore_history(progress).await?;
                HistoryResult::Restored {
                    conversations: p.conversations,
                    messages: p.messages,
                    restored: p.restored,
                }
            }
            HistoryRequest::Upload => HistoryResult::Uploaded {
                entries: self.upload_history().await?,
            },
            HistoryRequest::BackupExport { path } => HistoryResult::BackupWritten {
                phrase: self.export_backup(&path).await?.to_string(),
            },
        })
    }
}
