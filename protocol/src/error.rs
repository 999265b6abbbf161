//! Wire errors: a stable numeric [`ErrorCode`] plus a human detail, carried
//! in `Error` messages on control and message streams. Codes never change
//! meaning; new ones are only added (docs/protocol.md lists them).

use crate::pb;
use std::fmt;

pub use pb::ErrorCode;

/// A typed refusal as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// What went wrong, as a stable code.
    pub code: ErrorCode,
    /// A sentence for humans; never parsed.
    pub detail: String,
    /// For retryable refusals, how long to wait before trying again.
    pub retry_after_ms: u64,
}

impl WireError {
    /// A refusal with `code` and a human `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_ms: 0,
        }
    }

    /// The same refusal, telling the peer when to retry.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = ms;
        self
    }

    /// Whether a client should keep the request and try it again later
    /// unchanged. A full mailbox is retryable: its owner drains it, and a
    /// message must not be lost to a limit.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::RateLimited
                | ErrorCode::StorageUnavailable
                | ErrorCode::Internal
                | ErrorCode::QuotaExceeded
                | ErrorCode::RelayFull
        )
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.detail)?;
        if self.retry_after_ms > 0 {
            write!(
                f,
                " (retry after {:.1} s)",
                self.retry_after_ms as f64 / 1000.0
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for pb::Error {
    fn from(e: WireError) -> Self {
        pb::Error {
            code: e.code as i32,
            detail: e.detail,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl From<pb::Error> for WireError {
    fn from(e: pb::Error) -> Self {
        // A code this build does not know is reported as unspecified rather
        // than refused, so newer relays can add codes.
        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
        WireError {
            code,
            detail: e.detail,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        // These numbers are the wire contract; changing one breaks clients.
        assert_eq!(ErrorCode::Malformed as i32, 1);
        assert_eq!(ErrorCode::FrameTooLarge as i32, 2);
        assert_eq!(ErrorCode::EnvelopeTooLarge as i32, 3);
        assert_eq!(ErrorCode::UnknownMailbox as i32, 4);
        assert_eq!(ErrorCode::TokenInvalid as i32, 5);
        assert_eq!(ErrorCode::NotAuthenticated as i32, 6);
        assert_eq!(ErrorCode::AuthFailed as i32, 7);
        assert_eq!(ErrorCode::QuotaExceeded as i32, 8);
        assert_eq!(ErrorCode::RateLimited as i32, 9);
        assert_eq!(ErrorCode::StorageUnavailable as i32, 10);
        assert_eq!(ErrorCode::Internal as i32, 11);
        assert_eq!(ErrorCode::Unsupported as i32, 12);
    }

    #[test]
    fn unknown_code_survives_as_unspecified() {
        let e = WireError::from(pb::Error {
            code: 999,
            detail: "x".into(),
            retry_after_ms: 5,
        });
        assert_eq!(e.code, ErrorCode::Unspecified);
        assert_eq!(e.retry_after_ms, 5);
    }
}
