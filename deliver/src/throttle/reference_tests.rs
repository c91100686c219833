//! [`PoolSchedule::pick`] against a brute-force reference: the linear scan the scheduler used
//! before it kept queues, asked about every member of the class on the same state, over
//! random pools and random sequences of picks, settles, releases, holds, availability
//! changes, restores and clock moves. The answers must agree: the same kind, the same
//! `WaitUntil` instant, the same `Impossible` reason, and a picked mailbox the reference
//! also finds admissible now.

use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// What the reference expects a pick to answer.
#[derive(Debug, PartialEq)]
enum Expected {
    /// Any of these mailboxes may be picked.
    Now(Vec<usize>),
    At(Millis),
    Release,
    Impossible(Impossible),
}

/// The sooner of two waits: any instant beats `Busy`, which beats `Never`.
fn earliest(a: Admit, b: Admit) -> Admit {
    match (a, b) {
        (Admit::Now, _) | (_, Admit::Now) => Admit::Now,
        (Admit::At(x), Admit::At(y)) => Admit::At(x.min(y)),
        (Admit::At(x), _) | (_, Admit::At(x)) => Admit::At(x),
        (Admit::Busy, _) | (_, Admit::Busy) => Admit::Busy,
        (Admit::Never, Admit::Never) => Admit::Never,
    }
}

/// The former `plan()`: every member, every limit, at `now`. Unavailable members count only
/// for deciding that a message is not impossible.
fn reference(
    p: &PoolSchedule,
    members: &[usize],
    now: Millis,
    recipients: u64,
    external: u64,
) -> Expected {
    let mut ready = Vec::new();
    let mut wait = Admit::Never;
    let mut unavailable_could = false;
    let (mut any_member, mut any_fits) = (false, false);
    let (mut max_recipients, mut max_external) = (0, 0);
    for &idx in members {
        let (Some(mailbox), Some(tenant), Some(state), Some(available)) = (
            p.mailbox(idx),
            p.tenant_of(idx).and_then(|t| p.tenant(t)),
            p.state(idx),
            p.is_available(idx),
        ) else {
            continue;
        };
        any_member = true;
        max_recipients = max_recipients.max(mailbox.max_recipients_per_message());
        let admit = mailbox.earliest_admit(now, recipients);
        if admit == Admit::Never {
            continue;
        }
        any_fits = true;
        max_external = max_external.max(tenant.window().limit());
        let held = state.at(now).until().map_or(Admit::Now, Admit::At);
        let admit = admit.and(tenant.earliest_admit(now, external)).and(held);
        if !available {
            unavailable_could |= admit != Admit::Never;
            continue;
        }
        match admit {
            Admit::Now => ready.push(idx),
            Admit::Never => {}
            other => wait = earliest(wait, other),
        }
    }
    if !ready.is_empty() {
        return Expected::Now(ready);
    }
    match wait {
        Admit::At(t) => Expected::At(t),
        Admit::Busy => Expected::Release,
        _ if unavailable_could => Expected::Release,
        _ if !any_member => Expected::Impossible(Impossible::NoEligibleMailbox),
        _ if !any_fits => Expected::Impossible(Impossible::TooManyRecipients {
            requested: recipients,
            max: max_recipients,
        }),
        _ => Expected::Impossible(Impossible::TooManyExternalRecipients {
            requested: external,
            max: max_external,
        }),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Pick {
        class: usize,
        recipients: u64,
        external: u64,
    },
    Advance(u64),
    /// To the last `WaitUntil` instant, or a millisecond before it.
    AdvanceToWake {
        early: bool,
    },
    Settle(usize),
    Release(usize),
    Hold {
        mailbox: usize,
        ms: u64,
        quarantine: bool,
    },
    Activate(usize),
    Available(usize, bool),
    Restore {
        mailbox: usize,
        ago: u64,
        recipients: u64,
        external: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..4, prop_oneof![1u64..=6, 0u64..=25], 0u64..=8).prop_map(
            |(class, recipients, external)| Op::Pick {
                class,
                recipients,
                external: external.min(recipients),
            }
        ),
        3 => prop_oneof![0u64..50, 0u64..5_000, 0u64..40_000].prop_map(Op::Advance),
        2 => any::<bool>().prop_map(|early| Op::AdvanceToWake { early }),
        3 => any::<usize>().prop_map(Op::Settle),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (0usize..10, 0u64..20_000, any::<bool>())
            .prop_map(|(mailbox, ms, quarantine)| Op::Hold { mailbox, ms, quarantine }),
        1 => (0usize..10).prop_map(Op::Activate),
        1 => (0usize..10, prop::bool::weighted(0.6)).prop_map(|(m, a)| Op::Available(m, a)),
        1 => (0usize..10, 0u64..30_000, 0u64..=10, 0u64..=5).prop_map(
            |(mailbox, ago, recipients, external)| Op::Restore {
                mailbox,
                ago,
                recipients,
                external: external.min(recipients),
            }
        ),
    ]
}

fn limits() -> impl Strategy<Value = MailboxLimits> {
    (
        prop_oneof![9 => 1u64..=4, 1 => Just(0u64)],
        1_000u64..=20_000,
        5u64..=60,
        10_000u64..=60_000,
        prop_oneof![9 => 1u32..=3, 1 => Just(0u32)],
        prop_oneof![1u64..=20, Just(0u64)],
    )
        .prop_map(
            |(messages, mw, recipients, rw, connections, per_message)| MailboxLimits {
                messages,
                message_window: Duration::from_millis(mw),
                recipients,
                recipient_window: Duration::from_millis(rw),
                connections,
                recipients_per_message: per_message,
            },
        )
}

/// Mailboxes (limits, tenant), tenants (limit, window) and class member masks.
type Config = (Vec<(MailboxLimits, usize)>, Vec<(u64, u64)>, Vec<u16>);

fn config() -> impl Strategy<Value = Config> {
    (1usize..=10, 1usize..=3).prop_flat_map(|(n, t)| {
        (
            vec((limits(), 0..t), n),
            vec((0u64..=40, 5_000u64..=60_000), t),
            vec(prop_oneof![Just(u16::MAX), any::<u16>(), Just(0u16)], 1..=4),
        )
    })
}

fn mailbox_of(p: &PoolSchedule, i: usize) -> usize {
    i % p.len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pick_agrees_with_the_linear_scan(
        (mailboxes, tenants, masks) in config(),
        ops in vec(op(), 1..200),
    ) {
        let mut p = PoolSchedule::new();
        for &(limit, window) in &tenants {
            p.add_tenant(TenantLimit::new(limit, Duration::from_millis(window), ["contoso.com"]));
        }
        for (limits, tenant) in &mailboxes {
            p.add_mailbox(MailboxThrottle::new(limits.clone()), *tenant).expect("tenant");
        }
        let n = mailboxes.len();
        let members: Vec<Vec<usize>> = masks
            .iter()
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect();
        let classes: Vec<ClassId> = members.iter().map(|m| p.class(m.iter().copied())).collect();
        let mut now = Millis(1_000_000_000);
        let mut in_flight: Vec<Reservation> = Vec::new();
        let mut wake: Option<Millis> = None;
        for op in ops {
            match op {
                Op::Pick { class, recipients, external } => {
                    let c = class % classes.len();
                    let expected = reference(&p, &members[c], now, recipients, external);
                    let admit = p.earliest_admit(now, recipients, external, classes[c]);
                    let expected_admit = match &expected {
                        Expected::Now(_) => Admit::Now,
                        Expected::At(t) => Admit::At(*t),
                        Expected::Release => Admit::Busy,
                        Expected::Impossible(_) => Admit::Never,
                    };
                    prop_assert_eq!(admit, expected_admit);
                    match (p.pick(now, recipients, external, classes[c]), expected) {
                        (Pick::Mailbox(idx, r), Expected::Now(ready)) => {
                            prop_assert!(ready.contains(&idx), "picked {} of {:?}", idx, ready);
                            prop_assert_eq!(r.mailbox(), idx);
                            in_flight.push(r);
                        }
                        (Pick::WaitUntil(t), Expected::At(e)) => {
                            prop_assert_eq!(t, e);
                            wake = Some(t);
                        }
                        (Pick::WaitForRelease, Expected::Release) => {}
                        (Pick::Impossible(why), Expected::Impossible(e)) => prop_assert_eq!(why, e),
                        (got, expected) => prop_assert!(false, "picked {:?}, expected {:?}", got, expected),
                    }
                }
                Op::Advance(ms) => now = now.plus_ms(ms),
                Op::AdvanceToWake { early } => {
                    if let Some(t) = wake.take() {
                        now = now.max(if early { t.minus_ms(1) } else { t });
                    }
                }
                Op::Settle(i) if !in_flight.is_empty() => {
                    let r = in_flight.swap_remove(i % in_flight.len());
                    p.settle(r, now).expect("own");
                }
                Op::Release(i) if !in_flight.is_empty() => {
                    let r = in_flight.swap_remove(i % in_flight.len());
                    p.release(r).expect("own");
                }
                Op::Settle(_) | Op::Release(_) => {}
                Op::Hold { mailbox, ms, quarantine } => {
                    let until = now.plus_ms(ms);
                    let state = if quarantine {
                        MailboxState::Quarantined { until }
                    } else {
                        MailboxState::Paused { until }
                    };
                    p.set_state(mailbox_of(&p, mailbox), state).expect("mailbox");
                }
                Op::Activate(mailbox) => {
                    p.set_state(mailbox_of(&p, mailbox), MailboxState::Active).expect("mailbox");
                }
                Op::Available(mailbox, available) => {
                    p.set_available(mailbox_of(&p, mailbox), available).expect("mailbox");
                }
                Op::Restore { mailbox, ago, recipients, external } => {
                    p.restore(mailbox_of(&p, mailbox), now.minus_ms(ago), recipients, external)
                        .expect("mailbox");
                }
            }
        }
        for r in in_flight {
            p.release(r).expect("own");
        }
    }
}
