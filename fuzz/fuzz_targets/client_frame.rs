//! A message-stream frame from a client (sends, acks, subscribes), as the relay decodes it.
//! Whatever decodes must re-encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::pb;

fuzz_target!(|data: &[u8]| {
    let _ = tern_fuzz::round_trip::<pb::ClientFrame>(data);
});
