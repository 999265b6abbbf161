//! What a client decodes from another client after opening the seal and the
//! Olm layer: the `Sealed` wrapper and the `Content` inside it (text, contact
//! hellos with a reply address). A contact may be hostile. Whatever decodes
//! must re-encode and decode to the same message, and any reply address must
//! be checked without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::pb;

fuzz_target!(|data: &[u8]| {
    let _ = tern_fuzz::round_trip::<pb::Sealed>(data);
    if let Some(content) = tern_fuzz::round_trip::<pb::Content>(data) {
        if let Some(pb::content::Body::Hello(hello)) = &content.body {
            let _ = tern_protocol::invite::validate_address(hello.reply_to.as_ref());
        }
    }
});
