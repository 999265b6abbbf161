//! Running one batch of the message stream's store work through the core:
//! the only code between [`super::StoreOp`] and [`RelayCore`]. The driver
//! calls it on a store thread ([`crate::workers`]), once per batch; the in-process tests call
//! it directly.

use super::{StoreOp, StoreOutcome};
use crate::clock::Clock;
use crate::conn_state::ConnState;
use crate::core::{Accepted, RelayCore};
use crate::store::MailboxStore;
use tern_protocol::pb;
use tern_protocol::{ErrorCode, WireError};

/// A batch that is one ack, applied now if the store can do it without
/// waiting ([`RelayCore::try_ack_now`]): the driver then need not hand it
/// to a store thread. `None`: run the batch with [`run_store`].
pub fn try_store_now<S: MailboxStore, C: Clock>(
    core: &RelayCore<S, C>,
    state: &ConnState,
    ops: &[StoreOp],
) -> Option<Vec<StoreOutcome>> {
    let [StoreOp::Ack(seqs)] = ops else {
        return None;
    };
    let applied = match state.auth.lock() {
        Ok(auth) => core.try_ack_now(&auth, seqs)?,
        Err(_) => return None,
    };
    Some(vec![match applied {
        Ok(_) => StoreOutcome::Acked { seqs: seqs.clone() },
        Err(e) => StoreOutcome::AckRefused(e),
    }])
}

/// Run one batch of store work through the core, in order, one outcome per
/// operation. Blocks: sends and acks touch the disk. Consecutive sends go
/// to the core together ([`RelayCore::send_batch`]), so an engine across a
/// network stores them in a few round trips rather than two per send.
pub fn run_store<S: MailboxStore, C: Clock>(
    core: &RelayCore<S, C>,
    state: &ConnState,
    ops: Vec<StoreOp>,
) -> Vec<StoreOutcome> {
    let mut out = Vec::with_capacity(ops.len());
    let mut sends: Vec<pb::Send> = Vec::new();
    for op in ops {
        match op {
            StoreOp::Send(s) => sends.push(s),
            StoreOp::SendMany(s) => {
                run_sends(core, &mut sends, &mut out);
                out.push(match core.send_many(&s) {
                    Ok(sent) => StoreOutcome::SentMany {
                        request_id: s.request_id,
                        ephemeral: (!sent.ephemeral.is_empty())
                            .then(|| core.ephemeral_envelope_many(&s)),
                        sent,
                    },
                    Err(error) => StoreOutcome::SendManyRefused {
                        request_id: s.request_id,
                        error,
                    },
                });
            }
            StoreOp::Ack(seqs) => {
                run_sends(core, &mut sends, &mut out);
                let applied = match state.auth.lock() {
                    Ok(auth) => core.ack(&auth, &seqs),
                    Err(_) => Err(WireError::new(ErrorCode::Internal, "internal relay error")),
                };
                out.push(match applied {
                    Ok(_) => StoreOutcome::Acked { seqs },
                    Err(e) => StoreOutcome::AckRefused(e),
                });
            }
        }
    }
    run_sends(core, &mut sends, &mut out);
    out
}

/// Store the sends gathered so far as one batch and add their outcomes.
fn run_sends<S: MailboxStore, C: Clock>(
    core: &RelayCore<S, C>,
    sends: &mut Vec<pb::Send>,
    out: &mut Vec<StoreOutcome>,
) {
    if sends.is_empty() {
        return;
    }
    let results = core.send_batch(sends);
    for (s, result) in sends.drain(..).zip(results) {
        out.push(match result {
            Ok(accepted) => StoreOutcome::Sent {
                request_id: s.request_id,
                accepted,
                ephemeral: matches!(accepted, Accepted::Ephemeral { .. })
                    .then(|| core.ephemeral_envelope(&s)),
            },
            Err(error) => StoreOutcome::SendRefused {
                request_id: s.request_id,
                error,
            },
        });
    }
}
