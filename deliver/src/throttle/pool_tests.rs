//! Unit tests of [`PoolSchedule`]: picks, waits, refusals, classes and availability.

use std::time::Duration;

use super::*;

fn pool(n: usize, limits: MailboxLimits, tenant_limit: u64) -> PoolSchedule {
    let mut p = PoolSchedule::new();
    let t = p.add_tenant(TenantLimit::new(
        tenant_limit,
        Duration::from_secs(86_400),
        ["contoso.com"],
    ));
    for _ in 0..n {
        p.add_mailbox(MailboxThrottle::new(limits.clone()), t)
            .expect("tenant exists");
    }
    p
}

fn take(p: Pick) -> (usize, Reservation) {
    match p {
        Pick::Mailbox(idx, r) => (idx, r),
        other => panic!("expected a mailbox, got {other:?}"),
    }
}

#[test]
fn impossible_reasons() {
    let mut empty = PoolSchedule::new();
    let none = empty.class([]);
    assert!(matches!(
        empty.pick(Millis(0), 1, 0, none),
        Pick::Impossible(Impossible::NoEligibleMailbox)
    ));
    let mut p = pool(2, MailboxLimits::default(), 1_000);
    let all = p.class(0..p.len());
    let nobody = p.class([]);
    assert!(matches!(
        p.pick(Millis(0), 1, 0, nobody),
        Pick::Impossible(Impossible::NoEligibleMailbox)
    ));
    match p.pick(Millis(0), 501, 0, all) {
        Pick::Impossible(Impossible::TooManyRecipients {
            requested: 501,
            max: 500,
        }) => {}
        other => panic!("{other:?}"),
    }
    match p.pick(Millis(0), 400, 1_001, all) {
        Pick::Impossible(Impossible::TooManyExternalRecipients {
            requested: 1_001,
            max: 1_000,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(p.earliest_admit(Millis(0), 501, 0, all), Admit::Never);
    // nothing was held by the refusals
    assert_eq!(p.snapshot(0, Millis(0)).map(|s| s.messages_left), Some(30));
    assert_eq!(p.tenant(0).map(|t| t.remaining(Millis(0))), Some(1_000));
    assert!(
        p.add_mailbox(MailboxThrottle::new(MailboxLimits::default()), 7)
            .is_err()
    );
    assert_eq!(
        Impossible::TooManyRecipients {
            requested: 501,
            max: 500
        }
        .to_string(),
        "501 recipients, but eligible mailboxes take at most 500 per message"
    );
}

#[test]
fn impossible_only_considers_eligible_mailboxes() {
    let mut p = PoolSchedule::new();
    let t = p.add_tenant(TenantLimit::new(
        10_000,
        Duration::from_secs(86_400),
        ["contoso.com"],
    ));
    let small = MailboxLimits {
        recipients_per_message: 10,
        ..MailboxLimits::default()
    };
    p.add_mailbox(MailboxThrottle::new(small), t)
        .expect("tenant");
    p.add_mailbox(MailboxThrottle::new(MailboxLimits::default()), t)
        .expect("tenant");
    let (first, all) = (p.class([0]), p.class([0, 1]));
    assert!(matches!(
        p.pick(Millis(0), 20, 0, first),
        Pick::Impossible(Impossible::TooManyRecipients {
            requested: 20,
            max: 10
        })
    ));
    assert!(matches!(p.pick(Millis(0), 20, 0, all), Pick::Mailbox(1, _)));
}

#[test]
fn spreads_load_round_robin() {
    let mut p = pool(3, MailboxLimits::default(), 10_000);
    let all = p.class(0..p.len());
    let mut order = Vec::new();
    for t in 0..7u64 {
        let (idx, r) = take(p.pick(Millis(t), 1, 0, all));
        order.push(idx);
        p.settle(r, Millis(t)).expect("own");
    }
    assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
    // capacity used elsewhere (another process, restored) does not change turns while
    // every window has room
    p.restore(1, Millis(100), 1, 0).expect("mailbox");
    let (idx, r) = take(p.pick(Millis(200), 1, 0, all));
    assert_eq!(idx, 1);
    p.release(r).expect("own");
}

#[test]
fn mailboxes_with_room_go_before_ones_that_just_regained_it() {
    let limits = MailboxLimits {
        messages: 2,
        ..MailboxLimits::default()
    };
    let mut p = pool(3, limits, 10_000);
    let all = p.class(0..p.len());
    // mailbox 0's window is full until 60_000; 1 and 2 have room and were used after it
    p.restore(0, Millis(0), 1, 0).expect("mailbox");
    p.restore(0, Millis(0), 1, 0).expect("mailbox");
    let mut order = Vec::new();
    for t in [60_000u64, 60_001, 60_002] {
        let (idx, r) = take(p.pick(Millis(t), 1, 0, all));
        order.push(idx);
        p.release(r).expect("own");
    }
    // 0 is the least recently used, but it has only been able to send since 60_000, while
    // 1 and 2 never had to wait: they take turns first
    assert_eq!(order[..2], [1, 2]);
    assert_eq!(order[2], 1);
    let limits = MailboxLimits {
        messages: 1,
        ..MailboxLimits::default()
    };
    // once every window is full, mailboxes are taken in the order they regain room
    let mut p = pool(3, limits, 10_000);
    let all = p.class(0..p.len());
    for (idx, at) in [(0, 300u64), (1, 100), (2, 200)] {
        p.restore(idx, Millis(at), 1, 0).expect("mailbox");
    }
    let mut order = Vec::new();
    for t in 60_300..60_303u64 {
        let (idx, r) = take(p.pick(Millis(t), 1, 0, all));
        order.push(idx);
        p.settle(r, Millis(t)).expect("own");
    }
    assert_eq!(order, [1, 2, 0]);
}

#[test]
fn paused_and_quarantined_mailboxes_come_back_at_until() {
    let mut p = pool(2, MailboxLimits::default(), 10_000);
    let all = p.class(0..p.len());
    let second = p.class([1]);
    p.set_state(
        0,
        MailboxState::Paused {
            until: Millis(5_000),
        },
    )
    .expect("mailbox");
    p.set_state(
        1,
        MailboxState::Quarantined {
            until: Millis(9_000),
        },
    )
    .expect("mailbox");
    assert!(matches!(
        p.pick(Millis(0), 1, 0, all),
        Pick::WaitUntil(Millis(5_000))
    ));
    assert!(matches!(
        p.pick(Millis(4_999), 1, 0, second),
        Pick::WaitUntil(Millis(9_000))
    ));
    let (idx, r) = take(p.pick(Millis(5_000), 1, 0, all));
    assert_eq!(idx, 0);
    assert_eq!(p.state(0), Some(MailboxState::Active));
    assert_eq!(
        MailboxState::Quarantined {
            until: Millis(9_000)
        }
        .at(Millis(9_000)),
        MailboxState::Active
    );
    p.settle(r, Millis(5_100)).expect("own");
    assert!(p.set_state(5, MailboxState::Active).is_err());
}

#[test]
fn pause_while_busy_waits_for_release() {
    let limits = MailboxLimits {
        connections: 1,
        ..MailboxLimits::default()
    };
    let mut p = pool(1, limits, 10_000);
    let all = p.class(0..p.len());
    let (_, r) = take(p.pick(Millis(0), 1, 0, all));
    assert!(matches!(p.pick(Millis(0), 1, 0, all), Pick::WaitForRelease));
    p.set_state(
        0,
        MailboxState::Paused {
            until: Millis(1_000),
        },
    )
    .expect("mailbox");
    assert!(matches!(p.pick(Millis(0), 1, 0, all), Pick::WaitForRelease));
    p.release(r).expect("own");
    assert!(matches!(
        p.pick(Millis(0), 1, 0, all),
        Pick::WaitUntil(Millis(1_000))
    ));
}

#[test]
fn wait_until_is_the_earliest_over_mailboxes_and_tenant() {
    let limits = MailboxLimits {
        messages: 1,
        connections: 1,
        ..MailboxLimits::default()
    };
    let mut p = pool(2, limits, 10_000);
    let all = p.class(0..p.len());
    let (a, ra) = take(p.pick(Millis(0), 1, 0, all));
    let (b, rb) = take(p.pick(Millis(10), 1, 0, all));
    assert_ne!(a, b);
    p.settle(ra, Millis(500)).expect("own");
    // mailbox a: window full until 60_500; mailbox b: connection busy
    assert!(matches!(
        p.pick(Millis(600), 1, 0, all),
        Pick::WaitUntil(Millis(60_500))
    ));
    p.settle(rb, Millis(700)).expect("own");
    assert!(matches!(
        p.pick(Millis(800), 1, 0, all),
        Pick::WaitUntil(Millis(60_500))
    ));
    assert!(matches!(
        p.pick(Millis(60_500), 1, 0, all),
        Pick::Mailbox(_, _)
    ));
}

#[test]
fn tenant_window_is_reserved_with_the_mailbox() {
    let mut p = pool(2, MailboxLimits::default(), 100);
    let all = p.class(0..p.len());
    let (_, r1) = take(p.pick(Millis(0), 60, 60, all));
    // the other mailbox is free, but the tenant's in-flight 60 leave no room for 60 more
    assert!(matches!(
        p.pick(Millis(0), 60, 60, all),
        Pick::WaitForRelease
    ));
    assert!(matches!(
        p.pick(Millis(0), 60, 40, all),
        Pick::Mailbox(1, _)
    ));
    p.settle(r1, Millis(1_000)).expect("own");
    assert_eq!(p.tenant(0).map(|t| t.remaining(Millis(1_000))), Some(0));
    assert!(matches!(
        p.pick(Millis(2_000), 1, 1, all),
        Pick::WaitUntil(Millis(86_401_000))
    ));
    assert!(matches!(
        p.pick(Millis(2_000), 1, 0, all),
        Pick::Mailbox(_, _)
    ));
}

#[test]
fn release_gives_everything_back_and_foreign_tokens_are_refused() {
    let mut p = pool(1, MailboxLimits::default(), 1_000);
    let all = p.class(0..p.len());
    let mut other = pool(1, MailboxLimits::default(), 1_000);
    let other_all = other.class([0]);
    let (_, r) = take(p.pick(Millis(0), 10, 5, all));
    assert_eq!(
        (r.recipients(), r.external_recipients(), r.started()),
        (10, 5, Millis(0))
    );
    let s = p.snapshot(0, Millis(0)).expect("mailbox");
    assert_eq!(
        (s.messages_left, s.recipients_left, s.connections_in_use),
        (29, 9_990, 1)
    );
    let (_, foreign) = take(other.pick(Millis(0), 1, 0, other_all));
    assert_eq!(p.release(foreign), Err(ThrottleError::ForeignReservation));
    p.release(r).expect("own");
    let s = p.snapshot(0, Millis(0)).expect("mailbox");
    assert_eq!(
        (s.messages_left, s.recipients_left, s.connections_in_use),
        (30, 10_000, 0)
    );
    assert_eq!(p.tenant(0).map(|t| t.remaining(Millis(0))), Some(1_000));
}

#[test]
fn restore_rebuilds_the_pool_ledger() {
    let limits = MailboxLimits {
        messages: 2,
        ..MailboxLimits::default()
    };
    let mut p = pool(1, limits, 50);
    let all = p.class(0..p.len());
    let now = Millis(1_000_000_000);
    p.restore(0, now.minus_ms(90_000), 5, 5).expect("mailbox"); // outside the message window
    p.restore(0, now.minus_ms(50_000), 5, 20).expect("mailbox");
    p.restore(0, now.minus_ms(40_000), 5, 20).expect("mailbox");
    assert!(p.restore(3, now, 1, 1).is_err());
    assert!(matches!(p.pick(now, 1, 0, all), Pick::WaitUntil(t) if t == now.plus_ms(10_000)));
    // the tenant's 24 h window holds 45 of 50
    assert!(matches!(p.pick(now.plus_ms(10_000), 1, 6, all),
        Pick::WaitUntil(t) if t == now.minus_ms(90_000).plus_ms(86_400_000)));
    assert!(matches!(
        p.pick(now.plus_ms(10_000), 1, 5, all),
        Pick::Mailbox(0, _)
    ));
}

#[test]
fn classes_share_mailboxes_and_identical_sets_share_an_id() {
    let limits = MailboxLimits {
        messages: 1,
        ..MailboxLimits::default()
    };
    let mut p = pool(3, limits, 10_000);
    let a = p.class([0, 1]);
    let b = p.class([2, 1]);
    assert_ne!(a, b);
    assert_eq!(p.class([1, 0, 1, 0]), a);
    // indices that are no mailbox are ignored
    assert_eq!(p.class([1, 2, 7]), b);
    let (first, r0) = take(p.pick(Millis(0), 1, 0, a));
    assert_eq!(first, 0);
    p.settle(r0, Millis(10)).expect("own");
    // mailbox 1 serves b first (it is the least recently used of b), so a has nothing left
    let (second, r1) = take(p.pick(Millis(20), 1, 0, b));
    assert_eq!(second, 1);
    p.settle(r1, Millis(30)).expect("own");
    assert!(matches!(
        p.pick(Millis(40), 1, 0, a),
        Pick::WaitUntil(Millis(60_010))
    ));
    let (third, r2) = take(p.pick(Millis(40), 1, 0, b));
    assert_eq!(third, 2);
    p.settle(r2, Millis(50)).expect("own");
    assert!(matches!(
        p.pick(Millis(60), 1, 0, b),
        Pick::WaitUntil(Millis(60_030))
    ));
    assert_eq!(p.earliest_admit(Millis(60_010), 1, 0, a), Admit::Now);
    assert_eq!(
        p.earliest_admit(Millis(60_010), 1, 0, b),
        Admit::At(Millis(60_030))
    );
}

#[test]
fn a_class_without_mailboxes_is_impossible() {
    let mut p = pool(2, MailboxLimits::default(), 1_000);
    let nobody = p.class(std::iter::empty());
    assert_eq!(p.class([5, 9]), nobody);
    assert!(matches!(
        p.pick(Millis(0), 1, 0, nobody),
        Pick::Impossible(Impossible::NoEligibleMailbox)
    ));
    assert_eq!(p.earliest_admit(Millis(0), 1, 0, nobody), Admit::Never);
    // a class of another pool names nothing here
    let mut other = pool(2, MailboxLimits::default(), 1_000);
    let foreign = other.class([0, 1]);
    assert!(matches!(
        p.pick(Millis(0), 1, 0, foreign),
        Pick::Impossible(Impossible::NoEligibleMailbox)
    ));
}

#[test]
fn unavailable_mailboxes_are_never_picked_nor_waited_for() {
    let limits = MailboxLimits {
        connections: 1,
        ..MailboxLimits::default()
    };
    let mut p = pool(2, limits, 10_000);
    let all = p.class([0, 1]);
    let only_first = p.class([0]);
    assert_eq!(p.is_available(0), Some(true));
    p.set_available(0, false).expect("mailbox");
    assert_eq!(p.is_available(0), Some(false));
    let (idx, r) = take(p.pick(Millis(0), 1, 0, all));
    assert_eq!(idx, 1);
    // 1 is busy and 0 is another process's: only a release (or availability) can help
    assert!(matches!(p.pick(Millis(0), 1, 0, all), Pick::WaitForRelease));
    // a message only 0 could send is not impossible: 0 may come back
    assert!(matches!(
        p.pick(Millis(0), 1, 0, only_first),
        Pick::WaitForRelease
    ));
    assert_eq!(p.earliest_admit(Millis(0), 1, 0, only_first), Admit::Busy);
    // ...but what no mailbox could ever send still is
    assert!(matches!(
        p.pick(Millis(0), 501, 0, only_first),
        Pick::Impossible(Impossible::TooManyRecipients { .. })
    ));
    p.settle(r, Millis(100)).expect("own");
    // holds of an unavailable mailbox give no instant; the available one's does
    for (idx, until) in [(0, 1_000u64), (1, 5_000)] {
        p.set_state(
            idx,
            MailboxState::Paused {
                until: Millis(until),
            },
        )
        .expect("mailbox");
    }
    assert!(matches!(
        p.pick(Millis(200), 1, 0, all),
        Pick::WaitUntil(Millis(5_000))
    ));
    p.set_available(0, true).expect("mailbox");
    assert!(matches!(
        p.pick(Millis(200), 1, 0, all),
        Pick::WaitUntil(Millis(1_000))
    ));
    let (idx, r) = take(p.pick(Millis(1_000), 1, 0, all));
    assert_eq!(idx, 0);
    // a send in flight on a mailbox that becomes unavailable is settled as usual
    p.set_available(0, false).expect("mailbox");
    p.settle(r, Millis(1_100)).expect("own");
    assert_eq!(
        p.snapshot(0, Millis(1_100)).map(|s| s.messages_left),
        Some(29)
    );
    assert!(p.set_available(9, true).is_err());
}
