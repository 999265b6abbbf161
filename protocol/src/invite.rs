//! Invite codes: one line of text (`tern1` followed by base64url of an
//! `Invite` protobuf) that a user passes to a contact out of band, as text or
//! as a QR code. Decoding checks every field's shape so a bad code is refused
//! with a clear reason before anything is stored.

use crate::pb;
use crate::url::{RelayUrl, RelayUrlError};
use crate::{MAILBOX_ID_LEN, TOKEN_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use prost::Message;
use thiserror::Error;

/// Text every invite code starts with (the invite format's version).
pub const INVITE_PREFIX: &str = "tern1";
/// Longest invite code accepted, in characters.
pub const MAX_INVITE_LEN: usize = 4096;
/// Longest display name carried in an invite, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why an invite code was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InviteError {
    /// Not a Tern invite code, or one of a newer version.
    #[error("not a tern invite code (it should start with {INVITE_PREFIX})")]
    Prefix,
    /// The code is longer than any real invite.
    #[error("invite code is too long")]
    TooLong,
    /// The code is not valid base64url.
    #[error("invite code is damaged (not base64url)")]
    Encoding,
    /// The decoded bytes are not an invite.
    #[error("invite code is damaged (not an invite)")]
    Malformed,
    /// A field is missing or has the wrong length.
    #[error("invite code has a bad {0}")]
    Field(&'static str),
    /// The relay URL inside is not valid.
    #[error("invite code has a bad relay URL: {0}")]
    RelayUrl(#[from] RelayUrlError),
}

/// Encode an invite as one line of text.
pub fn encode_invite(invite: &pb::Invite) -> String {
    format!(
        "{INVITE_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(invite.encode_to_vec())
    )
}

/// Decode and validate an invite code.
pub fn decode_invite(code: &str) -> Result<pb::Invite, InviteError> {
    let code = code.trim();
    if code.len() > MAX_INVITE_LEN {
        return Err(InviteError::TooLong);
    }
    let body = code
        .strip_prefix(INVITE_PREFIX)
        .ok_or(InviteError::Prefix)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| InviteError::Encoding)?;
    let invite = pb::Invite::decode(&bytes[..]).map_err(|_| InviteError::Malformed)?;
    validate_address(invite.address.as_ref())?;
    check_len(&invite.identity_key, 32, "identity key")?;
    check_len(&invite.signing_key, 32, "signing key")?;
    check_len(&invite.one_time_key, 32, "one-time key")?;
    check_len(&invite.seal_key, 32, "seal key")?;
    if invite.name.len() > MAX_NAME_LEN {
        return Err(InviteError::Field("name"));
    }
    Ok(invite)
}

/// Check an address's relay URL, mailbox id and token; returns the parsed URL.
pub fn validate_address(address: Option<&pb::Address>) -> Result<RelayUrl, InviteError> {
    let address = address.ok_or(InviteError::Field("address"))?;
    let url: RelayUrl = address.relay_url.parse()?;
    check_len(&address.mailbox_id, MAILBOX_ID_LEN, "mailbox id")?;
    check_len(&address.send_token, TOKEN_LEN, "send token")?;
    Ok(url)
}

fn check_len(field: &[u8], len: usize, name: &'static str) -> Result<(), InviteError> {
    if field.len() == len {
        Ok(())
    } else {
        Err(InviteError::Field(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> pb::Invite {
        pb::Invite {
            address: Some(pb::Address {
                relay_url: format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32)),
                mailbox_id: vec![1; 16].into(),
                send_token: vec![2; 32].into(),
            }),
            identity_key: vec![3; 32].into(),
            signing_key: vec![4; 32].into(),
            one_time_key: vec![5; 32].into(),
            name: "alice".into(),
            seal_key: vec![6; 32].into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let code = encode_invite(&sample());
        assert!(!code.contains(char::is_whitespace));
        assert_eq!(decode_invite(&code).unwrap(), sample());
    }

    #[test]
    fn refuses_damage() {
        let code = encode_invite(&sample());
        assert_eq!(decode_invite("hello"), Err(InviteError::Prefix));
        assert_eq!(
            decode_invite(&format!("{code}!")),
            Err(InviteError::Encoding)
        );
        assert!(decode_invite(&code[..code.len() - 8]).is_err());
        let mut bad = sample();
        bad.one_time_key = vec![1; 31].into();
        assert_eq!(
            decode_invite(&encode_invite(&bad)),
            Err(InviteError::Field("one-time key"))
        );
        let mut bad = sample();
        bad.address = None;
        assert_eq!(
            decode_invite(&encode_invite(&bad)),
            Err(InviteError::Field("address"))
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,600}") {
            let _ = decode_invite(&s);
            let _ = decode_invite(&format!("{INVITE_PREFIX}{s}"));
        }
    }
}
