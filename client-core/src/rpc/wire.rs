//! JSON-RPC 2.0 messages as they cross the local socket, and the stable
//! error codes a caller sees.
//!
//! A request carries `"jsonrpc":"2.0"`, a `method`, named `params` and an
//! `id` (a number or a string); the answer carries the same `id` and either a
//! `result` or an `error`. The server's notifications (events) are requests
//! without an `id`. Batches are not supported. Errors of client operations
//! keep their human sentence as `message` (so a forwarded `tern` command
//! prints what it prints alone) and get a stable numeric `code`, listed in
//! [`ErrorCode`] and docs/rpc.md.

use crate::ClientError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

/// The protocol version field, which must be exactly `"2.0"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Version;

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("2.0")
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if v == "2.0" {
            Ok(Version)
        } else {
            Err(serde::de::Error::custom(format!(
                "jsonrpc must be \"2.0\", not {v:?}"
            )))
        }
    }
}

/// A request id, echoed in its response.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// A numeric id.
    Number(i64),
    /// A string id.
    Str(String),
}

/// A call (with an `id`) or a notification (without one). The server's
/// event notifications use this type too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: Version,
    /// The method name (see [`super::methods`]).
    pub method: String,
    /// Named parameters; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Absent for a notification, which gets no response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
}

impl Request {
    /// A call of `method` with `params`, answered under `id`.
    pub fn call(id: Id, method: &str, params: Value) -> Self {
        Self {
            jsonrpc: Version,
            method: method.into(),
            params: Some(params),
            id: Some(id),
        }
    }

    /// A notification of `method` with `params` (no response).
    pub fn notification(method: &str, params: Value) -> Self {
        Self {
            jsonrpc: Version,
            method: method.into(),
            params: Some(params),
            id: None,
        }
    }
}

/// The answer to one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: Version,
    /// The call's id; `null` when the request was too broken to read one.
    pub id: Option<Id>,
    /// The result or the error.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a call produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// It worked.
    #[serde(rename = "result")]
    Result(Value),
    /// It failed.
    #[serde(rename = "error")]
    Error(RpcError),
}

impl Response {
    /// A success answer.
    pub fn result(id: Option<Id>, result: Value) -> Self {
        Self {
            jsonrpc: Version,
            id,
            outcome: Outcome::Result(result),
        }
    }

    /// A failure answer.
    pub fn error(id: Option<Id>, error: RpcError) -> Self {
        Self {
            jsonrpc: Version,
            id,
            outcome: Outcome::Error(error),
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// A stable number; see [`ErrorCode`].
    pub code: i64,
    /// A sentence for humans: for client operations, exactly what `tern`
    /// prints when it runs alone.
    pub message: String,
    /// Details a script may use (`kind` always, more for some codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

/// The stable error codes. Negative ones are JSON-RPC's own and the
/// transport's; positive ones are client operations' errors, one per
/// [`ClientError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum ErrorCode {
    /// The line is not JSON.
    ParseError = -32700,
    /// The JSON is not a JSON-RPC request (or is a batch).
    InvalidRequest = -32600,
    /// No such method.
    MethodNotFound = -32601,
    /// The params do not fit the method.
    InvalidParams = -32602,
    /// The server failed in a way that is not the caller's doing.
    Internal = -32603,
    /// The request line is longer than the server reads.
    RequestTooLarge = -32001,
    /// No account in this home.
    NoAccount = 1,
    /// An account exists already.
    AccountExists = 2,
    /// No contact by that name.
    UnknownContact = 3,
    /// A contact by that name (or key) exists already.
    ContactExists = 4,
    /// The invite code was refused.
    InvalidInvite = 5,
    /// A relay URL was refused.
    InvalidRelayUrl = 6,
    /// A relay could not be reached.
    Unreachable = 7,
    /// A relay refused the request; `data.relay_code` says why.
    Refused = 8,
    /// A relay broke the protocol.
    RelayProtocol = 9,
    /// The message is larger than any relay accepts.
    TooLarge = 10,
    /// Cryptography failed.
    Crypto = 11,
    /// The local store failed.
    Store = 12,
    /// A local file could not be read or written.
    Io = 13,
    /// The running client has stopped (it is shutting down).
    Stopped = 14,
    /// No sent message has that id (`status`).
    UnknownMessage = 20,
    /// A verified contact's identity key changed; sends to them stop until
    /// the user confirms (`tern verify CONTACT --confirm`).
    KeyChanged = 31,
    /// No invite with that id.
    UnknownInvite = 32,
    /// The store key's passphrase is missing, wrong or empty.
    Passphrase = 33,
}

impl ErrorCode {
    /// The code as sent.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// A short name for scripts, sent as `data.kind`.
    pub fn kind(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "parse_error",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::Internal => "internal",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::NoAccount => "no_account",
            ErrorCode::AccountExists => "account_exists",
            ErrorCode::UnknownContact => "unknown_contact",
            ErrorCode::ContactExists => "contact_exists",
            ErrorCode::InvalidInvite => "invalid_invite",
            ErrorCode::InvalidRelayUrl => "invalid_relay_url",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::Refused => "refused",
            ErrorCode::RelayProtocol => "relay_protocol",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Crypto => "crypto",
            ErrorCode::Store => "store",
            ErrorCode::Io => "io",
            ErrorCode::Stopped => "stopped",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::KeyChanged => "key_changed",
            ErrorCode::UnknownInvite => "unknown_invite",
            ErrorCode::Passphrase => "passphrase",
        }
    }

    /// An error with this code and `message`.
    pub fn error(self, message: impl Into<String>) -> RpcError {
        RpcError {
            code: self.code(),
            message: message.into(),
            data: Some(json!({ "kind": self.kind() })),
        }
    }
}

/// The code of each client error.
pub fn client_error_code(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::NoAccount(_) => ErrorCode::NoAccount,
        ClientError::AccountExists(_) => ErrorCode::AccountExists,
        ClientError::UnknownContact(_) => ErrorCode::UnknownContact,
        ClientError::ContactExists(_) => ErrorCode::ContactExists,
        ClientError::Invite(_) => ErrorCode::InvalidInvite,
        ClientError::RelayUrl(_) => ErrorCode::InvalidRelayUrl,
        ClientError::Unreachable { .. } => ErrorCode::Unreachable,
        // Over its deadline a relay is as good as unreachable.
        ClientError::TimedOut { .. } => ErrorCode::Unreachable,
        ClientError::Refused(_) => ErrorCode::Refused,
        ClientError::Protocol(_) => ErrorCode::RelayProtocol,
        ClientError::TooLarge { .. } => ErrorCode::TooLarge,
        ClientError::Crypto(_) => ErrorCode::Crypto,
        ClientError::Store(_) => ErrorCode::Store,
        ClientError::Io { .. } => ErrorCode::Io,
        ClientError::Stopped => ErrorCode::Stopped,
        ClientError::UnknownMessage(_) => ErrorCode::UnknownMessage,
        // Group errors say what went wrong in their message.
        ClientError::UnknownGroup(_) | ClientError::GroupRefused(_) => ErrorCode::Store,
        ClientError::History(_) | ClientError::Backup(_) => ErrorCode::Store,
        // Device errors say what went wrong in their message too.
        ClientError::Device(_) | ClientError::DeviceList(_) => ErrorCode::Store,
        ClientError::LinkCode(_) => ErrorCode::InvalidInvite,
        ClientError::KeyChanged(_) => ErrorCode::KeyChanged,
        ClientError::UnknownInvite(_) => ErrorCode::UnknownInvite,
        ClientError::PassphraseNeeded
        | ClientError::WrongPassphrase
        | ClientError::EmptyPassphrase => ErrorCode::Passphrase,
    }
}

impl From<&ClientError> for RpcError {
    fn from(e: &ClientError) -> Self {
        let code = client_error_code(e);
        let mut err = code.error(e.to_string());
        let extra = match e {
            ClientError::UnknownContact(name)
            | ClientError::ContactExists(name)
            | ClientError::KeyChanged(name) => {
                json!({ "name": name })
            }
            ClientError::Unreachable { relay, .. } | ClientError::TimedOut { relay, .. } => {
                json!({ "relay": relay })
            }
            ClientError::Refused(w) => json!({
                "relay_code": w.code.as_str_name(),
                "retry_after_ms": w.retry_after_ms,
            }),
            ClientError::TooLarge { size, max } => json!({ "size": size, "max": max }),
            _ => Value::Null,
        };
        if let (Some(Value::Object(data)), Value::Object(extra)) = (&mut err.data, extra) {
            data.extend(extra);
        }
        err
    }
}

/// What a line from a caller turned out to be, when it is not a usable call.
/// The server answers the error (with `id` when one could be read).
pub fn parse_request(line: &[u8]) -> Result<Request, Box<Response>> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        Box::new(Response::error(
            None,
            ErrorCode::ParseError.error(format!("not JSON: {e}")),
        ))
    })?;
    if value.is_array() {
        return Err(Box::new(Response::error(
            None,
            ErrorCode::InvalidRequest.error("batches are not supported; send one request a line"),
        )));
    }
    // Read the id first, so a malformed request is answered under its id.
    let id = value
        .get("id")
        .and_then(|i| serde_json::from_value::<Id>(i.clone()).ok());
    serde_json::from_value::<Request>(value).map_err(|e| {
        Box::new(Response::error(
            id,
            ErrorCode::InvalidRequest.error(format!("not a JSON-RPC 2.0 request: {e}")),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tern_protocol::WireError;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn id() -> impl Strategy<Value = Id> {
        prop_oneof![
            any::<i64>().prop_map(Id::Number),
            ".{0,10}".prop_map(Id::Str)
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(method in "[a-z_]{1,12}", params in proptest::option::of(json_value()), id in proptest::option::of(id())) {
            // `"params": null` reads back as no params, which means the same.
            let params = params.filter(|p| !p.is_null());
            let req = Request { jsonrpc: Version, method, params, id };
            let line = serde_json::to_vec(&req).unwrap();
            prop_assert!(!line.contains(&b'\n'));
            prop_assert_eq!(parse_request(&line).unwrap(), req);
        }

        #[test]
        fn responses_round_trip(id in proptest::option::of(id()), result in json_value(), code in any::<i64>(), message in ".{0,20}", ok in any::<bool>()) {
            let resp = if ok {
                Response::result(id, result)
            } else {
                let data = Some(result).filter(|d| !d.is_null());
                Response::error(id, RpcError { code, message, data })
            };
            let line = serde_json::to_vec(&resp).unwrap();
            prop_assert!(!line.contains(&b'\n'));
            let back: Response = serde_json::from_slice(&line).unwrap();
            prop_assert_eq!(back, resp);
        }
    }

    proptest! {
        #[test]
        fn any_line_is_a_request_or_a_typed_error(line in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Err(response) = parse_request(&line) {
                match response.outcome {
                    Outcome::Error(e) => prop_assert!(e.code == -32700 || e.code == -32600),
                    Outcome::Result(_) => prop_assert!(false, "an error is an error"),
                }
            }
        }
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        let err = parse_request(b"{\"jsonrpc\":\"2.0\",").unwrap_err();
        assert_eq!(err.id, None);
        match err.outcome {
            Outcome::Error(e) => assert_eq!(e.code, -32700),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_missing_its_method_is_invalid_under_its_id() {
        let err = parse_request(br#"{"jsonrpc":"2.0","id":7}"#).unwrap_err();
        assert_eq!(err.id, Some(Id::Number(7)));
        match err.outcome {
            Outcome::Error(e) => assert_eq!(e.code, -32600),
            other => panic!("{other:?}"),
        }
        let err = parse_request(br#"{"jsonrpc":"1.0","id":"a","method":"x"}"#).unwrap_err();
        assert_eq!(err.id, Some(Id::Str("a".into())));
        let err = parse_request(br#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#).unwrap_err();
        assert!(matches!(err.outcome, Outcome::Error(e) if e.code == -32600));
    }

    #[test]
    fn client_errors_keep_their_sentence_and_get_a_code() {
        let e = ClientError::UnknownContact("bob".into());
        let rpc = RpcError::from(&e);
        assert_eq!(rpc.code, 3);
        assert_eq!(rpc.message, e.to_string());
        assert_eq!(
            rpc.data,
            Some(json!({ "kind": "unknown_contact", "name": "bob" }))
        );
        let refused = ClientError::Refused(
            WireError::new(tern_protocol::ErrorCode::TokenInvalid, "no").retry_after(5),
        );
        let rpc = RpcError::from(&refused);
        assert_eq!(rpc.code, ErrorCode::Refused.code());
        assert_eq!(rpc.data.unwrap()["retry_after_ms"], 5);
    }
}
