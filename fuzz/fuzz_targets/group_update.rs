//! What a client decodes from another group member: a `GroupUpdate` (signed
//! membership ops and member cards, inside pairwise Olm), a `ReceiptBatch`,
//! and the outer layer of a group envelope (any relay-delivered payload is
//! tried against the groups' envelope keys). A member may be hostile and a
//! relay may deliver anything. Whatever decodes must re-encode to the same
//! message, and merging, replaying and reading cards must never panic; a
//! replayed state never has more members than the ops that added them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_client::groups::{envelope, state};
use tern_protocol::pb;

fuzz_target!(|data: &[u8]| {
    let _ = tern_fuzz::round_trip::<pb::ReceiptBatch>(data);
    let _ = tern_fuzz::round_trip::<pb::GroupSealed>(data);
    let _ = envelope::unwrap(&[7; 32], data);
    if let Some(update) = tern_fuzz::round_trip::<pb::GroupUpdate>(data) {
        let Ok(group_id) = <[u8; 16]>::try_from(&update.group_id[..]) else {
            return;
        };
        let offered = update.ops.len();
        let mut log = Vec::new();
        state::merge_ops(&group_id, &mut log, update.ops);
        assert!(log.len() <= offered, "merging made up ops");
        let st = state::replay(&group_id, &log);
        assert!(st.members.len() <= log.len(), "more members than ops");
        let mut cards = Vec::new();
        state::merge_cards(&group_id, &st, &mut cards, update.cards);
        for c in &cards {
            assert!(
                state::read_card(&group_id, &st, c).is_some(),
                "kept a card that does not verify"
            );
        }
    }
});
