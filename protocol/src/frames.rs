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

    /// A durable (stored) send of one `payload` to every `(mailbox_id,
    /// token)` in `targets`.
    pub fn send_many(
        request_id: u64,
        message_id: Bytes,
        payload: Bytes,
        targets: impl IntoIterator<Item = (Bytes, Bytes)>,
    ) -> Self {
        Self::of(client_frame::Frame::SendMany(pb::SendMany {
            request_id,
            message_id,
            payload,
            ephemeral: false,
            targets: targets
                .into_iter()
                .map(|(mailbox_id, token)| pb::SendTarget { mailbox_id, token })
                .collect(),
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

impl pb::TargetResult {
    /// One target's outcome: stored (or already stored), or why not.
    pub fn of(result: Result<bool, WireError>) -> Self {
        match result {
            Ok(duplicate) => Self {
                duplicate,
                error: None,
            },
            Err(e) => Self {
                duplicate: false,
                error: Some(e.into()),
            },
        }
    }
}

impl pb::RelayFrame {
    /// The answer to send-many `request_id`: one result per target, in the
    /// order of its targets, or why the whole request was refused.
    pub fn send_many_result(
        request_id: u64,
        result: Result<Vec<pb::TargetResult>, WireError>,
    ) -> Self {
        let (results, error) = match result {
            Ok(results) => (results, None),
            Err(e) => (Vec::new(), Some(e.into())),
        };
        Self::of(relay_frame::Frame::SendManyResult(pb::SendManyResult {
            request_id,
            results,
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

    /// The default frame limit holds a full SendMany: the most targets and
    /// the largest payload.
    #[test]
    fn a_full_send_many_fits_the_default_frame() {
        use crate::limits::*;
        use bytes::Bytes;
        use prost::Message;
        let targets = (0..DEFAULT_MAX_RECIPIENTS_PER_SEND)
            .map(|_| (Bytes::from(vec![0xff; 16]), Bytes::from(vec![0xff; 32])));
        let f = pb::ClientFrame::send_many(
            u64::MAX,
            Bytes::from(vec![0xff; 16]),
            Bytes::from(vec![0xff; DEFAULT_MAX_ENVELOPE]),
            targets,
        );
        let len = f.encoded_len();
        let bound =
            DEFAULT_MAX_ENVELOPE + DEFAULT_MAX_RECIPIENTS_PER_SEND * SEND_TARGET_WIRE_BYTES + 64;
        assert!(len <= bound, "{len} > {bound}");
        assert!(len <= DEFAULT_MAX_FRAME, "{len} > {DEFAULT_MAX_FRAME}");
    }
}
