//! What the worker does with each order of a delivered message once the commit has answered:
//! a pure function of the message's deliveries so far and each order's result, so that every
//! case is tested without a nats-server or a database. `process` carries the plan out.

use std::time::Duration;

/// What the commit did for one order of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// It is a committed row (now, or before this delivery).
    Committed,
    /// The database could not take it now (an outage, a conflict): it will later.
    NotNow,
    /// The database refused its data, alone, with this reason.
    Refused(String),
    /// It is not a valid order (or the message is no valid message), for this reason.
    Unreadable(String),
}

/// What becomes of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Tell its shopper it is accepted.
    Confirm,
    /// Nothing now: the message comes back, and the order with it.
    Retry,
    /// Store it in the dead-letter stream with this reason, then tell its shopper it was not
    /// saved.
    DeadLetter(Reason),
}

/// Why an order can never be written. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The payload is not a valid order: nothing the front sends, so a bug or a stray publish.
    #[error("malformed or invalid order: {0}")]
    Malformed(String),
    /// The database refused this order's data on every try.
    #[error("refused by the database: {0}")]
    Refused(String),
}

/// What becomes of the message that carried the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Every order in it is committed or dead-lettered: remove it from the queue.
    Ack,
    /// Some order must be tried again: deliver the message again after this delay.
    RetryAfter(Duration),
}

/// The worker's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The delivery on which an order the database refuses, or one that cannot be read, is
    /// dead-lettered.
    pub dead_letter_after: i64,
    /// The delay before the second delivery; it doubles with each delivery after.
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
}

/// The plan for one message: a verdict per order, in the message's order, and the message's
/// settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub verdicts: Vec<Verdict>,
    pub settle: Settle,
}

/// Decides each order's fate and the message's.
///
/// An order refused or unreadable before its `dead_letter_after`-th delivery is retried: a
/// database that refuses for a while (a migration half-way) or a worker older than the front
/// (a rolling upgrade) must not turn good orders into dead letters. An order that could not be
/// written now is retried without limit: an outage never makes a dead letter.
///
/// While any order of the message is retried, its neighbours due for the dead-letter stream
/// wait with it: they are dead-lettered on the delivery that also settles the message, so a
/// redelivery never stores a dead letter twice. Committed neighbours are confirmed at once.
pub fn decide(policy: &Policy, delivered: i64, attempts: &[Attempt]) -> Plan {
    let due = delivered >= policy.dead_letter_after;
    let mut verdicts: Vec<Verdict> = attempts
        .iter()
        .map(|attempt| match attempt {
            Attempt::Committed => Verdict::Confirm,
            Attempt::NotNow => Verdict::Retry,
            Attempt::Refused(reason) if due => Verdict::DeadLetter(Reason::Refused(reason.clone())),
            Attempt::Unreadable(reason) if due => {
                Verdict::DeadLetter(Reason::Malformed(reason.clone()))
            }
            Attempt::Refused(_) | Attempt::Unreadable(_) => Verdict::Retry,
        })
        .collect();
    if !verdicts.contains(&Verdict::Retry) {
        return Plan {
            verdicts,
            settle: Settle::Ack,
        };
    }
    for verdict in &mut verdicts {
        if matches!(verdict, Verdict::DeadLetter(_)) {
            *verdict = Verdict::Retry;
        }
    }
    Plan {
        verdicts,
        settle: Settle::RetryAfter(retry_delay(policy, delivered)),
    }
}

/// `retry_delay` doubled per earlier delivery, at most `retry_max_delay`.
pub fn retry_delay(policy: &Policy, delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.max(1) - 1)
        .unwrap_or(u32::MAX)
        .min(16);
    policy
        .retry_delay
        .saturating_mul(1 << doublings)
        .min(policy.retry_max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        dead_letter_after: 3,
        retry_delay: Duration::from_millis(500),
        retry_max_delay: Duration::from_secs(5),
    };

    fn refused() -> Attempt {
        Attempt::Refused("value too long".into())
    }

    fn unreadable() -> Attempt {
        Attempt::Unreadable("not JSON".into())
    }

    #[test]
    fn committed_orders_are_confirmed_and_the_message_acked() {
        for delivered in [1, 3, 50] {
            let plan = decide(
                &POLICY,
                delivered,
                &[Attempt::Committed, Attempt::Committed],
            );
            assert_eq!(plan.verdicts, vec![Verdict::Confirm, Verdict::Confirm]);
            assert_eq!(plan.settle, Settle::Ack);
        }
    }

    #[test]
    fn an_outage_is_retried_on_every_delivery_and_never_dead_lettered() {
        for delivered in [1, 2, 3, 4, 1_000] {
            let plan = decide(&POLICY, delivered, &[Attempt::NotNow]);
            assert_eq!(plan.verdicts, vec![Verdict::Retry], "delivery {delivered}");
            assert!(matches!(plan.settle, Settle::RetryAfter(_)));
        }
    }

    #[test]
    fn a_refused_or_unreadable_order_is_retried_until_its_delivery_is_due() {
        for attempt in [refused(), unreadable()] {
            for delivered in [1, 2] {
                let plan = decide(&POLICY, delivered, std::slice::from_ref(&attempt));
                assert_eq!(
                    plan.verdicts,
                    vec![Verdict::Retry],
                    "{attempt:?} {delivered}"
                );
                assert!(matches!(plan.settle, Settle::RetryAfter(_)));
            }
        }
    }

    #[test]
    fn on_its_due_delivery_it_is_dead_lettered_with_its_reason() {
        for delivered in [3, 4, 99] {
            let plan = decide(&POLICY, delivered, &[refused(), unreadable()]);
            assert_eq!(
                plan.verdicts,
                vec![
                    Verdict::DeadLetter(Reason::Refused("value too long".into())),
                    Verdict::DeadLetter(Reason::Malformed("not JSON".into())),
                ]
            );
            assert_eq!(plan.settle, Settle::Ack);
        }
    }

    #[test]
    fn a_poison_order_does_not_hold_back_its_neighbours() {
        let plan = decide(
            &POLICY,
            3,
            &[Attempt::Committed, refused(), Attempt::Committed],
        );
        assert_eq!(
            plan.verdicts,
            vec![
                Verdict::Confirm,
                Verdict::DeadLetter(Reason::Refused("value too long".into())),
                Verdict::Confirm,
            ]
        );
        assert_eq!(plan.settle, Settle::Ack);
        // Before its due delivery the neighbours are confirmed all the same.
        let early = decide(&POLICY, 1, &[Attempt::Committed, refused()]);
        assert_eq!(early.verdicts, vec![Verdict::Confirm, Verdict::Retry]);
    }

    #[test]
    fn a_due_dead_letter_waits_while_a_neighbour_is_retried() {
        let plan = decide(
            &POLICY,
            5,
            &[refused(), Attempt::NotNow, Attempt::Committed],
        );
        assert_eq!(
            plan.verdicts,
            vec![Verdict::Retry, Verdict::Retry, Verdict::Confirm]
        );
        assert_eq!(
            plan.settle,
            Settle::RetryAfter(Duration::from_secs(5)),
            "500 ms doubled four times, at most 5 s"
        );
    }

    #[test]
    fn the_delay_doubles_per_delivery_up_to_its_maximum() {
        let delays: Vec<Duration> = [0, 1, 2, 3, 4, 5, i64::MAX]
            .into_iter()
            .map(|delivered| retry_delay(&POLICY, delivered))
            .collect();
        assert_eq!(
            delays,
            [500, 500, 1_000, 2_000, 4_000, 5_000, 5_000].map(Duration::from_millis)
        );
    }

    #[test]
    fn a_message_with_no_orders_is_acked() {
        let plan = decide(&POLICY, 1, &[]);
        assert!(plan.verdicts.is_empty());
        assert_eq!(plan.settle, Settle::Ack);
    }
}
