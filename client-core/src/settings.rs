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
    /// Direct paths to contacts (`tern settings direct on|off|verified`;
    /// on by default): a direct path shows each side the other's IP
    /// address (docs/threat-model.md).
    pub direct: DirectMode,
    /// With whom presence is shared (`tern settings presence`; every
    /// contact by default). See [`crate::presence`].
    pub presence: crate::presence::PresenceSharing,
    /// Watchers see when we were last online (`tern settings last-seen`;
    /// on by default), rounded to the minute.
    pub last_seen: bool,
    /// The push endpoint registered with the home relay (`tern settings
    /// push URL|off`), if any.
    pub push: Option<String>,
    /// The relay dropped the endpoint after it failed for too long.
    pub push_dropped: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            read_receipts: true,
            history_days: 0,
            direct: DirectMode::On,
            presence: crate::presence::PresenceSharing::On,
            last_seen: true,
            push: None,
            push_dropped: false,
        }
    }
}

/// With whom this device opens direct paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectMode {
    /// With every contact.
    #[default]
    On,
    /// With nobody: everything goes through relays.
    Off,
    /// Only with contacts verified by safety number (and whose key has not
    /// changed since).
    Verified,
}

impl std::str::FromStr for DirectMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "verified" => Ok(Self::Verified),
            other => Err(format!("direct must be on, off or verified, not {other:?}")),
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

    /// Set with whom direct paths open (see [`Settings::direct`]);
    /// returns the settings now in force, saved durably.
    pub async fn set_direct(&self, mode: DirectMode) -> Result<Settings, ClientError> {
        let mut s = self.store.settings()?;
        s.direct = mode;
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
        assert_eq!(s.direct, DirectMode::On);
        let s: Settings = serde_json::from_str(r#"{"direct":"verified"}"#).unwrap();
        assert_eq!(s.direct, DirectMode::Verified);
        assert_eq!("off".parse::<DirectMode>().unwrap(), DirectMode::Off);
        assert!("maybe".parse::<DirectMode>().is_err());
    }
}
