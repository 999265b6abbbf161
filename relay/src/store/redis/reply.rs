//! Reading Redis replies into the engine's terms, and Redis errors into
//! [`StoreError`]s. Nothing Redis returns is trusted to have the expected
//! shape: an unexpected reply is [`StoreError::Corrupt`].

use crate::store::StoreError;
use redis::{RedisError, Value};

/// A Redis error as a store error: out of memory (`maxmemory` with
/// `noeviction`) is the fleet's "relay storage is full"; anything else
/// may be retried.
pub fn store_error(what: &str, e: &RedisError) -> StoreError {
    if e.code() == Some("OOM") || e.to_string().contains("OOM ") {
        return StoreError::RelayFull {
            envelopes: 0,
            bytes: 0,
        };
    }
    StoreError::unavailable(what, e)
}

/// A server error inside a pipeline's replies, as a store error.
pub fn check(what: &str, v: Value) -> Result<Value, StoreError> {
    match v {
        Value::ServerError(e) => Err(store_error(what, &RedisError::from(e))),
        v => Ok(v),
    }
}

/// An integer reply (Redis sometimes sends integers as strings).
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as i64),
        _ => None,
    }
}

/// A score reply (`"1700000000000"`, `"1.8e+19"`) as ms, saturating.
pub fn score_ms(v: &Value) -> Option<u64> {
    let f: f64 = match v {
        Value::Double(d) => *d,
        Value::Int(n) => *n as f64,
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        Value::SimpleString(s) => s.parse().ok()?,
        _ => return None,
    };
    (f >= 0.0).then_some(f as u64)
}

/// A binary string reply; `None` for nil.
pub fn bytes(v: Value) -> Result<Option<Vec<u8>>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        _ => Err(StoreError::Corrupt("redis: expected a string")),
    }
}

/// An array reply's items.
pub fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(StoreError::Corrupt("redis: expected an array")),
    }
}

/// The integer at `i` of a function's array reply.
pub fn int_at(items: &[Value], i: usize) -> Result<i64, StoreError> {
    items
        .get(i)
        .and_then(int)
        .ok_or(StoreError::Corrupt("redis: unexpected function reply"))
}
