//! Which live deliver process should own each mailbox: every process computes the same
//! answer from the same list of members, so no message is needed to agree on it.
//!
//! Balanced rendezvous hashing: each mailbox prefers the members in the order of a hash
//! of (mailbox, member) and goes to the first that has fewer than its fair share
//! (`mailboxes / members`, one more for the remainder's first takers). Shares differ
//! by at most one, and a member joining or leaving moves few mailboxes (those whose preferred members changed), not all of them.

use sha2::{Digest, Sha256};
use uuid::Uuid;

fn score(mailbox: &str, member: &Uuid) -> u64 {
    let digest = Sha256::new()
        .chain_update(mailbox.as_bytes())
        .chain_update(member.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The owner each mailbox (by key) should have among `members`; `None` only when there
/// is no member.
pub fn assign(mailboxes: &[String], members: &[Uuid]) -> Vec<Option<Uuid>> {
    let mut owners = vec![None; mailboxes.len()];
    if members.is_empty() {
        return owners;
    }
    // Everyone gets `base`; `extra` members (the first to need it) get one more.
    let base = mailboxes.len() / members.len();
    let mut extra = mailboxes.len() % members.len();
    let mut load = vec![0usize; members.len()];
    // A stable order, whatever order each process's configuration lists them in.
    let mut order: Vec<usize> = (0..mailboxes.len()).collect();
    order.sort_by(|&a, &b| mailboxes[a].cmp(&mailboxes[b]));
    for idx in order {
        let mut ranked: Vec<usize> = (0..members.len()).collect();
        ranked.sort_by_key(|&m| (std::cmp::Reverse(score(&mailboxes[idx], &members[m])), m));
        let m = ranked
            .iter()
            .copied()
            .find(|&m| load[m] < base || (load[m] == base && extra > 0));
        if let Some(m) = m {
            if load[m] == base {
                extra -= 1;
            }
            load[m] += 1;
            owners[idx] = Some(members[m]);
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailboxes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("sender{i}@contoso.example"))
            .collect()
    }

    fn members(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    fn counts(owners: &[Option<Uuid>], members: &[Uuid]) -> Vec<usize> {
        members
            .iter()
            .map(|m| owners.iter().filter(|o| **o == Some(*m)).count())
            .collect()
    }

    #[test]
    fn every_mailbox_has_one_owner_and_shares_are_fair() {
        for (n_mailboxes, n_members) in [(6, 3), (7, 3), (4, 4), (3, 5), (100, 7), (1, 1)] {
            let boxes = mailboxes(n_mailboxes);
            let ms = members(n_members);
            let owners = assign(&boxes, &ms);
            assert!(owners.iter().all(Option::is_some));
            let c = counts(&owners, &ms);
            let (min, max) = (
                c.iter().min().expect("members"),
                c.iter().max().expect("members"),
            );
            assert!(max - min <= 1, "{n_mailboxes} over {n_members}: {c:?}");
        }
        assert!(assign(&mailboxes(3), &[]).iter().all(Option::is_none));
    }

    #[test]
    fn the_answer_does_not_depend_on_the_configured_order() {
        let boxes = mailboxes(9);
        let ms = members(3);
        let owners = assign(&boxes, &ms);
        let mut reversed = boxes.clone();
        reversed.reverse();
        let mut back = assign(&reversed, &ms);
        back.reverse();
        assert_eq!(owners, back);
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_mailboxes_when_shares_allow() {
        // 12 over 4 (3 each) → 12 over 3 (4 each): the survivors keep what they had.
        let boxes = mailboxes(12);
        let ms = members(4);
        let before = assign(&boxes, &ms);
        let survivors: Vec<Uuid> = ms[..3].to_vec();
        let after = assign(&boxes, &survivors);
        let kept = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b.is_some_and(|m| survivors.contains(&m)) && b == a)
            .count();
        let had = before
            .iter()
            .filter(|b| b.is_some_and(|m| survivors.contains(&m)))
            .count();
        // Greedy balancing may move a few; most stay where they were.
        assert!(kept * 4 >= had * 3, "kept {kept} of {had}");
    }
}
