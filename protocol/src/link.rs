//! Link codes: one line of text (`ternlink1` followed by base64url of a
//! `LinkCode` protobuf) that `tern device link` prints on an existing device
//! and `tern init --link` reads on a new one. Decoding checks every field's
//! shape, as invite codes do ([`crate::invite`]).

use crate::pb;
use crate::url::RelayUrl;
use crate::{MAILBOX_ID_LEN, TOKEN_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use prost::Message;
use thiserror::Error;

/// Text every link code starts with (the link format's version).
pub const LINK_PREFIX: &str = "ternlink1";
/// Longest link code accepted, in characters.
pub const MAX_LINK_LEN: usize = 2048;

/// Why a link code was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LinkCodeError {
    /// Not a Tern link code (or one of a newer version).
    #[error("not a tern link code (it should start with {LINK_PREFIX})")]
    Prefix,
    /// Too long, not base64url, or not a link code inside.
    #[error("link code is damaged")]
    Damaged,
    /// A field is missing or has the wrong length.
    #[error("link code has a bad {0}")]
    Field(&'static str),
}

/// Encode a link code as one line of text.
pub fn encode_link_code(code: &pb::LinkCode) -> String {
    format!(
        "{LINK_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(code.encode_to_vec())
    )
}

/// Decode and validate a link code.
pub fn decode_link_code(text: &str) -> Result<pb::LinkCode, LinkCodeError> {
    let text = text.trim();
    if text.len() > MAX_LINK_LEN {
        return Err(LinkCodeError::Damaged);
    }
    let body = text
        .strip_prefix(LINK_PREFIX)
        .ok_or(LinkCodeError::Prefix)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| LinkCodeError::Damaged)?;
    let code = pb::LinkCode::decode(&bytes[..]).map_err(|_| LinkCodeError::Damaged)?;
    code.relay_url
        .parse::<RelayUrl>()
        .map_err(|_| LinkCodeError::Field("relay URL"))?;
    let check = |f: &[u8], len: usize, name| {
        if f.len() == len {
            Ok(())
        } else {
            Err(LinkCodeError::Field(name))
        }
    };
    check(&code.mailbox_id, MAILBOX_ID_LEN, "mailbox id")?;
    check(&code.send_token, TOKEN_LEN, "send token")?;
    check(&code.secret, 32, "secret")?;
    check(&code.identity_key, 32, "identity key")?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::LinkCode {
        pb::LinkCode {
            relay_url: format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32)),
            mailbox_id: vec![1; 16].into(),
            send_token: vec![2; 32].into(),
            secret: vec![3; 32].into(),
            identity_key: vec![4; 32].into(),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let text = encode_link_code(&sample());
        assert_eq!(decode_link_code(&text).unwrap(), sample());
        assert_eq!(decode_link_code("tern1abc"), Err(LinkCodeError::Prefix));
        assert!(decode_link_code(&text[..text.len() - 6]).is_err());
        let mut bad = sample();
        bad.secret = vec![1; 31].into();
        assert_eq!(
            decode_link_code(&encode_link_code(&bad)),
            Err(LinkCodeError::Field("secret"))
        );
    }
}
