//! The heartbeat stream (stream kind 4): an owner's beats, one
//! `ControlRequest { presence_heartbeat }` frame each, answered by one
//! `ControlResponse` each, on one stream for the connection's life. A beat
//! on a control stream of its own costs opening and closing a stream
//! (4-5 packets with quinn's stream credit); here it is a request and an
//! answer. Answered from memory like the control stream's heartbeat
//! ([`super::control::answer`]); refused the same way on a connection that
//! has not authenticated.

use crate::clock::Clock;
use crate::conn_state::ConnState;
use crate::connection::Shared;
use crate::store::MailboxStore;
use quinn::{RecvStream, SendStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_protocol::frame::decode_message;
use tern_protocol::io::{read_frame, write_frame};
use tern_protocol::pb::{self, control_request::Request};
use tern_protocol::{ErrorCode, WireError, MAX_BEAT_FRAME};

/// How long one answer may take to leave: an owner that stops reading is
/// dropped rather than holding the relay's buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn refused(e: WireError) -> pb::ControlResponse {
    pb::ControlResponse {
        response: Some(pb::control_response::Response::Error(e.into())),
    }
}

/// The answer to one frame read from a heartbeat stream.
fn answer<S: MailboxStore, C: Clock>(
    shared: &Shared<S, C>,
    state: &ConnState,
    body: &[u8],
) -> pb::ControlResponse {
    if let Err(e) = state.rate.check_at(Instant::now()) {
        return refused(e);
    }
    match decode_message::<pb::ControlRequest>(body) {
        Ok(req) if matches!(req.request, Some(Request::PresenceHeartbeat(_))) => {
            super::control::answer(shared, state.mailbox(), req)
        }
        Ok(_) => refused(WireError::new(
            ErrorCode::Unsupported,
            "only heartbeats on a heartbeat stream",
        )),
        Err(e) => refused(WireError::new(ErrorCode::Malformed, e.to_string())),
    }
}

/// Answer beats on one heartbeat stream until the peer ends it, sends a
/// frame over [`MAX_BEAT_FRAME`] or stops reading.
pub async fn serve<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    state: Arc<ConnState>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    loop {
        // Frames are tiny, so a trickled one pins at most MAX_BEAT_FRAME
        // bytes; the stream lives as long as the connection does.
        let body = match read_frame(&mut recv, MAX_BEAT_FRAME).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let _ = send.finish();
                return;
            }
            Err(_) => {
                let _ = send.reset(1u32.into());
                return;
            }
        };
        let response = answer(&shared, &state, &body);
        match tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut send, &response)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
