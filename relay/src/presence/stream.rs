//! One presence stream (stream kind 3): read one `PresenceSubscribe`, then
//! write a `PresenceUpdate` for each capability whose holder's state
//! changed, as the table marks them, until the peer goes away. Refused on
//! an authenticated connection, which would tie the watcher to its own
//! mailbox (docs/threat-model.md, "Linking senders").

use super::Presence;
use bytes::BytesMut;
use quinn::{RecvStream, SendStream};
use std::sync::Arc;
use std::time::Duration;
use tern_protocol::frame::{decode_message, encode_frame_into};
use tern_protocol::io::{read_frame, write_frame};
use tern_protocol::{pb, ErrorCode, WireError};

/// How long the subscribe frame may take to arrive.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one batch of updates may take to leave: a watcher that stops
/// reading is dropped rather than holding the relay's buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn error_frame(e: WireError) -> pb::PresenceFrame {
    pb::PresenceFrame {
        frame: Some(pb::presence_frame::Frame::Error(e.into())),
    }
}

/// Drive one presence stream until its peer closes it or stops reading.
pub async fn serve(
    presence: Arc<Presence>,
    authenticated: bool,
    max_frame: usize,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let refuse = |e: WireError| error_frame(e);
    if authenticated {
        let e = WireError::new(
            ErrorCode::PresenceLinkable,
            "subscribe to presence on a connection that never authenticated",
        );
        let _ = write_frame(&mut send, &refuse(e)).await;
        let _ = send.finish();
        return;
    }
    let Ok(Ok(Some(body))) =
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, read_frame(&mut recv, max_frame)).await
    else {
        let _ = send.reset(1u32.into());
        return;
    };
    // The frame (34 bytes a capability) is let go here, not kept for the
    // stream's life: the table holds what the subscription needs.
    let subscribed = decode_message::<pb::PresenceSubscribe>(&body)
        .map_err(|e| WireError::new(ErrorCode::Malformed, e.to_string()))
        .and_then(|s| presence.subscribe(&s.capabilities));
    drop(body);
    let sub = match subscribed {
        Ok(sub) => sub,
        Err(e) => {
            let _ = write_frame(&mut send, &refuse(e)).await;
            let _ = send.finish();
            return;
        }
    };
    let mut buf = BytesMut::new();
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            _ = sub.watch.notify.notified() => {}
            // The peer finished or reset its side: the subscription ends.
            r = recv.read(&mut probe) => {
                if !matches!(r, Ok(Some(_))) {
                    return;
                }
                continue;
            }
        }
        for index in sub.watch.take() {
            if let Some(update) = presence.state(&sub, index) {
                let frame = pb::PresenceFrame {
                    frame: Some(pb::presence_frame::Frame::Update(update)),
                };
                encode_frame_into(&frame, &mut buf);
            }
        }
        if buf.is_empty() {
            continue;
        }
        let chunk = buf.split().freeze();
        match tokio::time::timeout(WRITE_TIMEOUT, send.write_chunk(chunk)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
