//! The device's settings: choices the user makes once and the client
//! keeps in its store (`tern settings ...`). Every field has a default, so
//! a store written before a setting existed reads as the default, and new
//! settings are added as new fields.

use crate::client::Client;
use crate::error::ClientError;
use serde::{Deserialize, Serialize};

/// What the user chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Send read receipts, and show the ones contacts send (on by
    /// default). Off, as in Signal, works both ways: we tell nobody what we
    /// read, and their read receipts count only as delivered.
    pub read_receipts: bool,
    /// Days the relay keeps this account's history blobs (1-90), or 0:
    /// history off (the default). See [`crate::history`].
    pub history_days: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            read_receipts: true,
            history_days: 0,
        }
    }
}

impl Client {
    /// The device's settings.
    pub fn settings(&self) -> Result<Settings, ClientError> {
        self.store.settings()
    }

    /// Turn read receipts on or off (see [`Settings::read_receipts`]);
    /// returns the settings now in force, saved durably.
    pub async fn set_read_receipts(&self, on: bool) -> Result<Settings, ClientError> {
        let mut s = self.store.settings()?;
        s.read_receipts = on;
        self.store.set_settings(&s)?;
        self.store.flush().await?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_without_a_setting_reads_the_default() {
        let s: Settings = serde_json::from_str("{}").unwrap();
        assert!(s.read_receipts);
        let s: Settings = serde_json::from_str(r#"{"read_receipts":false}"#).unwrap();
        assert!(!s.read_receipts);
    }
}
