//! Constructors for the frames every side writes, so the relay, the client
//! library, the tests and the load generator build a `Send` or an error
//! frame one way. prost leaves each `oneof` as an `Option` of an enum; these
//! wrap it once.

use crate::pb::{self, client_frame, relay_frame};
use crate::WireError;
use bytes::Bytes;

impl pb::ClientFrame {
    /// A client frame carrying `frame`.
    pub fn of(frame: client_frame::Frame) -> Self {
        Self { frame: Some(frame) }
    }

    /// A durable (stored) send of `payload` to `mailbox_id` with `token`.
    pub fn send(
        request_id: u64,
        mailbox_id: Bytes,
        token: Bytes,
        message_id: Bytes,
        payload: Bytes,
    ) -> Self {
        Self::of(client_frame::Frame::Send(pb::Send {
            request_id,
            mailbox_id,
            token,
            message_id,
            payload,
            ephemeral: false,
        }))
    }
}

impl pb::RelayFrame {
    /// A relay frame carrying `frame`.
    pub fn of(frame: relay_frame::Frame) -> Self {
        Self { frame: Some(frame) }
    }

    /// An error frame.
    pub fn error(e: WireError) -> Self {
        Self::of(relay_frame::Frame::Error(e.into()))
    }

    /// The answer to send `request_id`: its sequence number and whether it
    /// was a duplicate, or why it was refused.
    pub fn send_result(request_id: u64, result: Result<(u64, bool), WireError>) -> Self {
        let (seq, duplicate, error) = match result {
            Ok((seq, duplicate)) => (seq, duplicate, None),
            Err(e) => (0, false, Some(e.into())),
        };
        Self::of(relay_frame::Frame::SendResult(pb::SendResult {
            request_id,
            seq,
            duplicate,
            error,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::pb::{self, relay_frame::Frame};
    use crate::{ErrorCode, WireError};

    #[test]
    fn a_refused_send_carries_no_seq() {
        let e = WireError::new(ErrorCode::TokenInvalid, "no");
        let Some(Frame::SendResult(r)) = pb::RelayFrame::send_result(9, Err(e)).frame else {
            panic!("not a send result");
        };
        assert_eq!((r.request_id, r.seq, r.duplicate), (9, 0, false));
        assert_eq!(
            r.error.map(|e| e.code),
            Some(ErrorCode::TokenInvalid as i32)
        );
    }
}
