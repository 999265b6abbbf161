//! A control-stream request, as the relay decodes it from an unauthenticated client.
//! Whatever decodes must re-encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::pb;

fuzz_target!(|data: &[u8]| {
    let _ = tern_fuzz::round_trip::<pb::ControlRequest>(data);
});
