//! What a client decodes from another client after opening the seal and the
//! Olm layer: the `Sealed` wrapper and the `Content` inside it (text, contact
//! hellos with a reply address). A contact may be hostile. Whatever decodes
//! must re-encode and decode to the same message, and any reply address must
//! be checked without panicking. The same bytes then go through the client's
//! own reading of a plaintext (`tern_client::layers`): an introduction it
//! accepts names a relay URL that parses and a usable seal key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_client::layers;
use tern_protocol::pb;
use tern_protocol::url::RelayUrl;

fuzz_target!(|data: &[u8]| {
    let _ = tern_fuzz::round_trip::<pb::Sealed>(data);
    if let Some(content) = tern_fuzz::round_trip::<pb::Content>(data) {
        if let Some(pb::content::Body::Hello(hello)) = &content.body {
            let _ = tern_protocol::invite::validate_address(hello.reply_to.as_ref());
        }
    }
    if let Ok(opened) = layers::read_content(data) {
        if let Some(pb::content::Body::Hello(hello)) = opened.body {
            if let Some(intro) = layers::read_introduction(hello) {
                assert!(
                    intro.relay_url.parse::<RelayUrl>().is_ok(),
                    "accepted introduction with an unparsable relay URL"
                );
                assert!(
                    tern_crypto::validate_seal_public(&intro.seal_key).is_ok(),
                    "accepted introduction with an unusable seal key"
                );
            }
        }
    }
});
