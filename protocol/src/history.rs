//! History requests' signatures: what a history account signs, so the relay
//! can check that a request to put, page or delete blobs comes from the
//! holder of the account's key, on this TLS session (docs/protocol.md,
//! "History").

use crate::pb::{self, control_request::Request};
use prost::Message;

/// Domain separation for history request signatures.
pub const HISTORY_SIGNATURE_CONTEXT: &[u8] = b"tern/1 history\0";
/// Length of a history conversation tag.
pub const HISTORY_TAG_LEN: usize = 16;
/// Most days a history blob is kept.
pub const HISTORY_MAX_KEEP_DAYS: u32 = 90;

/// The history auth of a history request; `None` for other requests.
pub fn history_auth(req: &pb::ControlRequest) -> Option<Option<&pb::HistoryAuth>> {
    match &req.request {
        Some(Request::HistoryPut(r)) => Some(r.auth.as_ref()),
        Some(Request::HistoryPage(r)) => Some(r.auth.as_ref()),
        Some(Request::HistoryDelete(r)) => Some(r.auth.as_ref()),
        _ => None,
    }
}

/// Whether `req` is a history request.
pub fn is_history(req: &pb::ControlRequest) -> bool {
    history_auth(req).is_some()
}

/// The bytes a history account signs for `req` on the session whose
/// exporter is `exporter`: the context, the exporter, and `req` encoded
/// with its signature emptied. `None` for other requests.
pub fn history_signed_bytes(exporter: &[u8], req: &pb::ControlRequest) -> Option<Vec<u8>> {
    let mut unsigned = req.clone();
    let auth = match &mut unsigned.request {
        Some(Request::HistoryPut(r)) => &mut r.auth,
        Some(Request::HistoryPage(r)) => &mut r.auth,
        Some(Request::HistoryDelete(r)) => &mut r.auth,
        _ => return None,
    };
    if let Some(a) = auth {
        a.signature = Default::default();
    }
    let mut out = HISTORY_SIGNATURE_CONTEXT.to_vec();
    out.extend_from_slice(exporter);
    unsigned.encode(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(sig: &[u8]) -> pb::ControlRequest {
        pb::ControlRequest {
            request: Some(Request::HistoryDelete(pb::HistoryDelete {
                auth: Some(pb::HistoryAuth {
                    account_key: vec![7; 32].into(),
                    signature: sig.to_vec().into(),
                }),
            })),
        }
    }

    #[test]
    fn the_signed_bytes_ignore_the_signature_and_bind_the_session() {
        let a = history_signed_bytes(&[1; 32], &delete(b"")).unwrap();
        assert_eq!(
            a,
            history_signed_bytes(&[1; 32], &delete(&[9; 64])).unwrap()
        );
        assert_ne!(a, history_signed_bytes(&[2; 32], &delete(b"")).unwrap());
        let other = pb::ControlRequest {
            request: Some(Request::CreateToken(pb::CreateToken {})),
        };
        assert!(history_signed_bytes(&[1; 32], &other).is_none());
        assert!(!is_history(&other));
    }
}
