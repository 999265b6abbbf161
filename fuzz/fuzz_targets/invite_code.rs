//! Invite codes and relay URLs: text a user pastes from someone else. The
//! input is tried as the text of a code (lossy UTF-8) and as the bytes inside
//! one (`tern1` + base64url of the input), and as a relay URL. Whatever is
//! accepted must survive being encoded and decoded again unchanged.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tern_protocol::invite::{decode_invite, encode_invite, INVITE_PREFIX};
use tern_protocol::url::RelayUrl;

fn check_invite(code: &str) {
    let Ok(invite) = decode_invite(code) else {
        return;
    };
    let again = encode_invite(&invite);
    assert_eq!(decode_invite(&again).as_ref(), Ok(&invite), "code {again}");
    let url = tern_protocol::invite::validate_address(invite.address.as_ref())
        .unwrap_or_else(|e| panic!("accepted invite has a bad address: {e}"));
    check_url(&url.to_string());
}

fn check_url(text: &str) {
    let Ok(url) = text.parse::<RelayUrl>() else {
        return;
    };
    let shown = url.to_string();
    assert_eq!(shown.parse::<RelayUrl>().as_ref(), Ok(&url), "{shown}");
    let _ = url.authority();
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_invite(&text);
    check_url(&text);
    check_invite(&format!("{INVITE_PREFIX}{}", URL_SAFE_NO_PAD.encode(data)));
});
