//! A 1,000-member group's whole state (its op log and every member's
//! card) goes as several updates, each of which seals (Olm, seal, padding)
//! into one envelope, and which merge by union, in any order, to the same
//! state.

use super::state::{self, Member};
use super::*;
use crate::layers;
use tern_crypto::DeviceAccount;
use tern_protocol::pb::{content::Body, GroupOpKind};

const MEMBERS: usize = 1_000;

/// Members' identity keys are distinct; they share one signing key (any
/// key verifies the same way, and making 1,000 accounts is slow).
fn big_group(admin: &DeviceAccount) -> GroupRecord {
    let me = Member {
        identity: admin.identity_key(),
        signing_key: admin.signing_key(),
        name: "admin".into(),
        admin: true,
    };
    let (id, create) = state::make_create(&me, "big", [9; 16], |m| admin.sign(m));
    let mut ops = vec![create];
    let mut st = state::replay(&id, &ops);
    let mut cards = Vec::new();
    for i in 1..MEMBERS {
        let mut identity = [0u8; 32];
        identity[..8].copy_from_slice(&(i as u64).to_be_bytes());
        identity[31] = 1;
        let m = Member {
            identity,
            signing_key: admin.signing_key(),
            name: format!("member-{i:04}"),
            admin: false,
        };
        let op = state::make_op(
            &id,
            &st,
            &me.identity,
            GroupOpKind::GroupOpAdd,
            &m,
            "",
            |x| admin.sign(x),
        );
        // The state only moves on by the op just made (no full replay).
        st.lamport += 1;
        st.members.insert(m.identity, m.clone());
        ops.push(op);
        let card = pb::GroupMemberCard {
            group_id: id.to_vec().into(),
            identity_key: identity.to_vec().into(),
            seal_key: [3; 32].to_vec().into(),
            address: Some(layers::address(
                "quic://relay.example:4433",
                &[4; 16],
                &[5; 32],
            )),
            fallback_key: [6; 32].to_vec().into(),
            version: 1,
            ..Default::default()
        };
        cards.push(state::sign_card(&card, |x| admin.sign(x)));
    }
    let mut r = GroupRecord::empty(id);
    r.set_ops(&ops);
    r.set_cards(&cards);
    r
}

#[test]
fn a_thousand_member_state_goes_in_updates_that_each_fit_and_merge_back() {
    let admin = DeviceAccount::new();
    let r = big_group(&admin);
    let st = r.state();
    assert_eq!(st.members.len(), MEMBERS);
    let whole = r.update_bytes();
    assert!(
        whole > limits::DEFAULT_MAX_ENVELOPE,
        "the test is about a state bigger than one envelope: {whole}"
    );

    let updates = r.updates();
    assert!(updates.len() > 1, "{}", updates.len());
    // Each seals into one envelope, as a control message is sent.
    let mut peer = DeviceAccount::new();
    let otk = peer.new_one_time_key();
    let mut session = admin.start_session(&peer.identity_key(), &otk).unwrap();
    for u in &updates {
        let c = layers::content([1; 16], 5, Body::GroupUpdate(u.clone()));
        let sealed =
            layers::seal_content(&mut session, &admin.identity_key(), &peer.seal_public(), &c);
        layers::check_size(&sealed).unwrap();
    }

    // Merged by union, in reverse order (ops of later updates first; the
    // cards once the ops make their owners members).
    let mut ops = Vec::new();
    for u in updates.iter().rev() {
        state::merge_ops(&r.id, &mut ops, u.ops.clone());
    }
    let got = state::replay(&r.id, &ops);
    assert_eq!(got, st);
    let mut cards = Vec::new();
    let incoming: Vec<pb::GroupSignedCard> =
        updates.iter().rev().flat_map(|u| u.cards.clone()).collect();
    state::merge_cards(&r.id, &got, &mut cards, incoming);
    let mut merged = GroupRecord::empty(r.id);
    merged.set_cards(&cards);
    let set = |c: &[Vec<u8>]| c.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set(&merged.cards), set(&r.cards));
    assert_eq!(merged.cards.len(), MEMBERS - 1);
}

#[test]
fn a_small_state_is_one_update_and_nothing_is_one_empty_update() {
    let r = GroupRecord::empty([1; 16]);
    let u = r.updates();
    assert_eq!(u.len(), 1);
    assert!(u[0].ops.is_empty() && u[0].cards.is_empty());
}

use tern_protocol::limits;

impl GroupRecord {
    /// The whole state as one update would be, in bytes.
    fn update_bytes(&self) -> usize {
        use prost::Message;
        pb::GroupUpdate {
            group_id: self.id.to_vec().into(),
            ops: self.ops(),
            cards: self.signed_cards(),
        }
        .encoded_len()
    }
}
