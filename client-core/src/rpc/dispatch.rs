//! One call's life: decode its params, call the backend, encode the result.
//! Connection state (`subscribe`) is handled by the connection itself.

use super::methods::*;
use super::server::RpcBackend;
use super::wire::{ErrorCode, RpcError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Params of a method, named; absent or `null` reads as `{}`.
pub(crate) fn params<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let params = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err(ErrorCode::InvalidParams.error("params must be an object (named params)"))
        }
    };
    serde_json::from_value(params)
        .map_err(|e| ErrorCode::InvalidParams.error(format!("bad params: {e}")))
}

fn encode<T: Serialize>(result: &T) -> Result<Value, RpcError> {
    serde_json::to_value(result)
        .map_err(|e| ErrorCode::Internal.error(format!("encoding the result: {e}")))
}

/// Run `method` against `backend`.
pub(crate) async fn call<B: RpcBackend>(
    backend: &B,
    method: &str,
    raw: Option<Value>,
) -> Result<Value, RpcError> {
    let client_err = |e: crate::ClientError| RpcError::from(&e);
    match method {
        SEND => {
            let p: SendParams = params(raw)?;
            let (id, outcome) = backend
                .send_text(&p.contact, &p.text)
                .await
                .map_err(client_err)?;
            encode(&SendResult::new(id, outcome))
        }
        GROUP => {
            let call: crate::groups::GroupCall = params(raw)?;
            backend.group(call).await.map_err(client_err)
        }
        INVITE => {
            let NoParams {} = params(raw)?;
            let code = backend.invite().await.map_err(client_err)?;
            encode(&InviteResult { code })
        }
        ACCEPT => {
            let p: AcceptParams = params(raw)?;
            let contact = backend.accept(&p.code, &p.name).await.map_err(client_err)?;
            // Accepting already tried to deliver the introduction; whatever
            // is still queued after one more flush waits for the relay.
            let introduction_queued = match backend.flush_outbox().await {
                Ok(report) => !report.queued.is_empty(),
                Err(_) => true,
            };
            encode(&AcceptResult {
                contact: (&contact).into(),
                introduction_queued,
            })
        }
        CONTACTS => {
            let NoParams {} = params(raw)?;
            let contacts = backend.contacts().await.map_err(client_err)?;
            let mut infos = Vec::with_capacity(contacts.len());
            for c in &contacts {
                let mut info = ContactInfo::from(c);
                let path = backend.path_info(&c.name).await.map_err(client_err)?;
                info.direct = path.direct;
                info.rtt_ms = path.rtt_ms;
                infos.push(info);
            }
            encode(&infos)
        }
        HISTORY => {
            let p: HistoryParams = params(raw)?;
            let messages = backend
                .history(&p.contact, p.capped_limit())
                .await
                .map_err(client_err)?;
            let me = backend.profile().await.map_err(client_err)?.name;
            encode(
                &messages
                    .iter()
                    .map(|m| HistoryEntry::new(m, &p.contact, &me))
                    .collect::<Vec<_>>(),
            )
        }
        BLOCK => {
            let p: BlockParams = params(raw)?;
            backend.block(&p.contact).await.map_err(client_err)?;
            encode(&BlockResult { blocked: p.contact })
        }
        FLUSH_OUTBOX => {
            let NoParams {} = params(raw)?;
            let report = backend.flush_outbox().await.map_err(client_err)?;
            encode(&OutboxResult::from(&report))
        }
        PROFILE => {
            let NoParams {} = params(raw)?;
            let profile = backend.profile().await.map_err(client_err)?;
            encode(&ProfileResult::from(&profile))
        }
        STATUS => {
            let p: StatusParams = params(raw)?;
            let report = backend.message_status(&p.id).await.map_err(client_err)?;
            encode(&StatusLine::all(&report))
        }
        TYPING => {
            let p: TypingParams = params(raw)?;
            let outcome = backend.send_typing(&p.contact).await.map_err(client_err)?;
            encode(&TypingResult::new(p.contact, &outcome))
        }
        SETTINGS => {
            let p: SettingsParams = params(raw)?;
            if let Some(mode) = p.direct {
                backend.set_direct(mode).await.map_err(client_err)?;
            }
            let settings = backend
                .settings(p.read_receipts)
                .await
                .map_err(client_err)?;
            encode(&settings)
        }
        PRESENCE_OP => {
            let req: crate::presence::request::PresenceRequest = params(raw)?;
            let result = backend.presence_op(req).await.map_err(client_err)?;
            encode(&result)
        }
        HISTORY_OP => {
            let req: crate::history::request::HistoryRequest = params(raw)?;
            let result = backend.history_op(req).await.map_err(client_err)?;
            encode(&result)
        }
        PATH => {
            let p: PathParams = params(raw)?;
            let path = backend.path_info(&p.contact).await.map_err(client_err)?;
            encode(&PathResult {
                contact: p.contact,
                direct: path.direct,
                rtt_ms: path.rtt_ms,
            })
        }
        TRUST => {
            let req: crate::trust::TrustRequest = params(raw)?;
            let result = backend.trust(req).await.map_err(client_err)?;
            encode(&result)
        }
        other => Err(ErrorCode::MethodNotFound.error(format!("no method {other:?}"))),
    }
}
