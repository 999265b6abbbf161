//! Tests of the op set and its replay, and of member cards.

use super::*;
use tern_crypto::DeviceAccount;

/// Every test group is created by its first device with this salt.
const SALT: [u8; 16] = [7; 16];

struct Dev {
    acct: DeviceAccount,
    name: &'static str,
}

impl Dev {
    fn new(name: &'static str) -> Self {
        Self {
            acct: DeviceAccount::new(),
            name,
        }
    }
    fn id(&self) -> [u8; 32] {
        self.acct.identity_key()
    }
    fn member(&self, admin: bool) -> Member {
        Member {
            identity: self.id(),
            signing_key: self.acct.signing_key(),
            name: self.name.into(),
            admin,
        }
    }
    fn op(
        &self,
        g: &[u8; 16],
        log: &[pb::GroupSignedOp],
        kind: GroupOpKind,
        t: Member,
    ) -> pb::GroupSignedOp {
        let state = replay(g, log);
        make_op(g, &state, &self.id(), kind, &t, "g", |m| self.acct.sign(m))
    }
}

/// A group created by `a`: its id and its log.
fn created(a: &Dev) -> ([u8; 16], Vec<pb::GroupSignedOp>) {
    let (g, op) = make_create(&a.member(true), "g", SALT, |m| a.acct.sign(m));
    (g, vec![op])
}

#[test]
fn only_admins_add_and_remove_and_anyone_leaves() {
    let (a, b, c) = (Dev::new("a"), Dev::new("b"), Dev::new("c"));
    let (g, mut log) = created(&a);
    let add_b = a.op(&g, &log, GroupOpKind::GroupOpAdd, b.member(false));
    log.push(add_b);
    // b is not an admin: its add of c is ignored.
    let b_adds_c = b.op(&g, &log, GroupOpKind::GroupOpAdd, c.member(false));
    log.push(b_adds_c);
    let s = replay(&g, &log);
    assert_eq!(s.name, "g");
    assert!(s.is_admin(&a.id()) && s.is_member(&b.id()) && !s.is_member(&c.id()));
    // b removing a is ignored; b leaving counts.
    log.push(b.op(&g, &log, GroupOpKind::GroupOpRemove, a.member(false)));
    assert!(replay(&g, &log).is_member(&a.id()));
    log.push(b.op(&g, &log, GroupOpKind::GroupOpRemove, b.member(false)));
    let s = replay(&g, &log);
    assert!(!s.is_member(&b.id()) && s.is_member(&a.id()));
}

#[test]
fn forged_or_foreign_ops_are_ignored() {
    let (a, b, m) = (Dev::new("a"), Dev::new("b"), Dev::new("mallory"));
    let (g, mut log) = created(&a);
    // Mallory signs an op claiming a as author.
    let state = replay(&g, &log);
    let forged = make_op(
        &g,
        &state,
        &a.id(),
        GroupOpKind::GroupOpAdd,
        &m.member(true),
        "",
        |x| m.acct.sign(x),
    );
    assert!(merge_ops(&g, &mut log, vec![forged]));
    // A second create by someone else is ignored too.
    log.push(m.op(&g, &[], GroupOpKind::GroupOpCreate, m.member(true)));
    let other_group = make_op(
        &[8; 16],
        &state,
        &a.id(),
        GroupOpKind::GroupOpAdd,
        &b.member(false),
        "",
        |x| a.acct.sign(x),
    );
    assert!(!merge_ops(&g, &mut log, vec![other_group]));
    let s = replay(&g, &log);
    assert_eq!(s.members.len(), 1);
    assert!(s.is_admin(&a.id()));
}

#[test]
fn concurrent_changes_by_two_admins_converge_in_any_order() {
    let (a, b, c, d, e) = (
        Dev::new("a"),
        Dev::new("b"),
        Dev::new("c"),
        Dev::new("d"),
        Dev::new("e"),
    );
    let (g, mut base) = created(&a);
    base.push(a.op(&g, &base, GroupOpKind::GroupOpAdd, b.member(true)));
    base.push(a.op(&g, &base, GroupOpKind::GroupOpAdd, c.member(false)));
    // Concurrently: a removes c and adds d; b removes a and adds e.
    let mut at_a = base.clone();
    at_a.push(a.op(&g, &at_a, GroupOpKind::GroupOpRemove, c.member(false)));
    at_a.push(a.op(&g, &at_a, GroupOpKind::GroupOpAdd, d.member(false)));
    let mut at_b = base.clone();
    at_b.push(b.op(&g, &at_b, GroupOpKind::GroupOpRemove, a.member(false)));
    at_b.push(b.op(&g, &at_b, GroupOpKind::GroupOpAdd, e.member(false)));
    // Merge in both directions and in reverse op order.
    let mut x = at_a.clone();
    merge_ops(&g, &mut x, at_b.clone());
    let mut y = at_b.clone();
    merge_ops(&g, &mut y, at_a.iter().rev().cloned().collect());
    let (sx, sy) = (replay(&g, &x), replay(&g, &y));
    assert_eq!(sx, sy);
    // Merging again changes nothing.
    assert!(!merge_ops(&g, &mut x, at_b));
    // b was never removed; which of the crossing changes count depends
    // on the tiebreak, but it is the same everywhere.
    assert!(sx.is_member(&b.id()));
}

#[test]
fn cards_verify_and_the_highest_version_wins() {
    let (a, b) = (Dev::new("a"), Dev::new("b"));
    let (g, mut log) = created(&a);
    log.push(a.op(&g, &log, GroupOpKind::GroupOpAdd, b.member(false)));
    let state = replay(&g, &log);
    let card = |v: u64| pb::GroupMemberCard {
        group_id: g.to_vec().into(),
        identity_key: b.id().to_vec().into(),
        version: v,
        ..Default::default()
    };
    let mut cards = Vec::new();
    assert!(merge_cards(
        &g,
        &state,
        &mut cards,
        vec![sign_card(&card(2), |m| b.acct.sign(m))]
    ));
    assert!(!merge_cards(
        &g,
        &state,
        &mut cards,
        vec![sign_card(&card(1), |m| b.acct.sign(m))]
    ));
    // a cannot make b's card.
    assert!(!merge_cards(
        &g,
        &state,
        &mut cards,
        vec![sign_card(&card(5), |m| a.acct.sign(m))]
    ));
    assert!(merge_cards(
        &g,
        &state,
        &mut cards,
        vec![sign_card(&card(3), |m| b.acct.sign(m))]
    ));
    assert_eq!(cards.len(), 1);
    assert_eq!(read_card(&g, &state, &cards[0]).unwrap().version, 3);
}
