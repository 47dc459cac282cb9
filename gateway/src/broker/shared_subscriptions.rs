//! Shared subscriptions (`$share/<group>/<filter>`): each message goes to one member of
//! the group, taken in turn, online members first.

use std::sync::atomic::{AtomicUsize, Ordering};

use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};

/// Round-robin over a group's members.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

type Member = (
    NodeId,
    ClientId,
    SubscriptionOptions,
    Option<Vec<SubscriptionIdentifier>>,
    Option<IsOnline>,
);

/// The member to deliver to: the next online one from the turn on, else the member
/// whose turn it is (its session keeps the message until it is back).
fn pick(turn: usize, members: &[Member]) -> Option<(usize, IsOnline)> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    (0..n)
        .map(|k| (turn + k) % n)
        .find(|&i| members[i].4.unwrap_or(true))
        .map(|i| (i, true))
        .or(Some((turn % n, false)))
}

#[async_trait::async_trait]
impl SharedSubscription for RoundRobin {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher: &Id,
        _topic: &TopicName,
        members: &[Member],
    ) -> Option<(usize, IsOnline)> {
        pick(self.next.fetch_add(1, Ordering::Relaxed), members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(online: bool) -> Member {
        (
            0,
            "c".into(),
            SubscriptionOptions::default(),
            None,
            Some(online),
        )
    }

    #[test]
    fn members_take_turns_and_offline_ones_are_skipped() {
        let all = [member(true), member(true), member(true)];
        let turns: Vec<usize> = (0..6).map(|t| pick(t, &all).unwrap().0).collect();
        assert_eq!(turns, [0, 1, 2, 0, 1, 2]);
        let some = [member(false), member(true), member(false)];
        assert_eq!(pick(0, &some), Some((1, true)));
        assert_eq!(pick(2, &some), Some((1, true)));
        let none = [member(false), member(false)];
        assert_eq!(pick(3, &none), Some((1, false)));
        assert_eq!(pick(0, &[]), None);
    }
}
