//! The owner's presence and push requests on its authenticated connection:
//! publish capability hashes, heartbeat, register a push endpoint. Answered
//! from memory, without the store.

use crate::clock::Clock;
use crate::connection::Shared;
use crate::store::{MailboxId, MailboxStore};
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tern_protocol::{ErrorCode, WireError};

/// Is this a presence or push request?
pub fn is_presence(req: &pb::ControlRequest) -> bool {
    matches!(
        req.request,
        Some(Request::PresencePublish(_))
            | Some(Request::PresenceHeartbeat(_))
            | Some(Request::PushRegister(_))
    )
}

/// Answer one presence or push request for the connection authenticated
/// for `mailbox` (none: refused).
pub fn answer<S: MailboxStore, C: Clock>(
    shared: &Shared<S, C>,
    mailbox: Option<MailboxId>,
    req: pb::ControlRequest,
) -> pb::ControlResponse {
    let result = match mailbox {
        None => Err(WireError::new(
            ErrorCode::NotAuthenticated,
            "authenticate first",
        )),
        Some(mailbox) => match req.request {
            Some(Request::PresencePublish(p)) => shared
                .presence
                .publish(mailbox, &p)
                .map(|()| Response::PresencePublished(pb::PresencePublished {})),
            Some(Request::PresenceHeartbeat(_)) => {
                shared.presence.heartbeat(mailbox);
                Ok(Response::PresenceAlive(pb::PresenceAlive {
                    grace_ms: shared.presence.config().grace_ms,
                    push_dropped: shared.push.take_dropped(&mailbox),
                }))
            }
            Some(Request::PushRegister(r)) => shared
                .push
                .register(mailbox, &r.url)
                .map(|()| Response::PushRegistered(pb::PushRegistered {})),
            _ => Err(WireError::new(
                ErrorCode::Unsupported,
                "not a presence request",
            )),
        },
    };
    pb::ControlResponse {
        response: Some(result.unwrap_or_else(|e| Response::Error(e.into()))),
    }
}
