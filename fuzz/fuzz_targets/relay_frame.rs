//! What a client decodes from its relay: message-stream frames (send results,
//! pushed envelopes, errors) and control responses. The relay is trusted with
//! no secrets, so a hostile relay must not crash a client. Whatever decodes
//! must re-encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::pb;

fuzz_target!(|data: &[u8]| {
    let _ = tern_fuzz::round_trip::<pb::RelayFrame>(data);
    let _ = tern_fuzz::round_trip::<pb::ControlResponse>(data);
});
