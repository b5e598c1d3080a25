//! Which coordinator an agent serves when two ask for the same transfer.
//!
//! A transfer's agents outlive their coordinator, so a second coordinator
//! can find them: the same command run again after a crash (it must take
//! them over at once), or the same command run from another machine while
//! the first still drives them (it must leave them alone: an agent takes
//! the newest connection, so two coordinators would take the agents from
//! each other for the rest of the transfer, and one could stop an agent
//! the other is using).
//!
//! On one machine, for one user and one lock directory (a *domain*), the
//! transfer lock (`rsync::lock` in the cli) lets only one run at a time
//! near the agents, so a new run there means the old one ended. Across
//! domains nothing is shared but the agents, which tell the two apart by
//! the owner in every Hello and refuse a second owner while the first was
//! heard recently.
//!
//! Pure: the caller passes how long ago the current owner was heard.

use std::time::Duration;

use crate::wire::Owner;

/// What an agent does with a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// No owner yet: the asker becomes it.
    First,
    /// The owner again (a reconnection).
    Again,
    /// A tool (`agent stop` by hand: no domain): served, the owner kept.
    Tool,
    /// A new owner replaces the old one: a later run in the same domain
    /// (the old run ended), or an owner silent for at least the takeover
    /// wait (it died, or lost the agents for good).
    TakeOver,
    /// Refused: another owner drives the transfer and was heard recently.
    Refuse,
}

/// Decides on a Hello from `asker` when `current` owns the agent and was
/// last heard `heard` ago; `wait` is how long an owner may stay silent
/// before another domain may take over.
pub fn admit(current: Option<&Owner>, heard: Duration, asker: &Owner, wait: Duration) -> Admit {
    if asker.domain.is_empty() {
        return Admit::Tool;
    }
    let Some(current) = current else {
        return Admit::First;
    };
    if current.domain == asker.domain {
        if current.run == asker.run {
            Admit::Again
        } else {
            Admit::TakeOver
        }
    } else if heard >= wait {
        Admit::TakeOver
    } else {
        Admit::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(domain: &str, run: u64) -> Owner {
        Owner {
            domain: domain.into(),
            run,
            label: format!("{domain} run {run}"),
        }
    }

    const WAIT: Duration = Duration::from_secs(30);
    const RECENT: Duration = Duration::from_secs(2);

    #[test]
    fn the_first_asker_owns_and_comes_back() {
        let a = owner("m1", 1);
        assert_eq!(admit(None, RECENT, &a, WAIT), Admit::First);
        assert_eq!(admit(Some(&a), RECENT, &a, WAIT), Admit::Again);
        // However long its outage: nobody else asked.
        assert_eq!(admit(Some(&a), WAIT * 100, &a, WAIT), Admit::Again);
    }

    #[test]
    fn a_later_run_in_the_same_domain_takes_over_at_once() {
        let (old, new) = (owner("m1", 1), owner("m1", 2));
        assert_eq!(admit(Some(&old), RECENT, &new, WAIT), Admit::TakeOver);
        assert_eq!(
            admit(Some(&old), Duration::ZERO, &new, WAIT),
            Admit::TakeOver
        );
    }

    #[test]
    fn another_domain_waits_until_the_owner_was_silent_for_the_wait() {
        let (a, b) = (owner("m1", 1), owner("m2", 1));
        assert_eq!(admit(Some(&a), RECENT, &b, WAIT), Admit::Refuse);
        assert_eq!(
            admit(Some(&a), WAIT - Duration::from_millis(1), &b, WAIT),
            Admit::Refuse
        );
        assert_eq!(admit(Some(&a), WAIT, &b, WAIT), Admit::TakeOver);
        // The same run id in another domain is another owner.
        assert_eq!(
            admit(Some(&a), RECENT, &owner("m2", 1), WAIT),
            Admit::Refuse
        );
    }

    #[test]
    fn a_tool_is_served_without_taking_the_agent() {
        let a = owner("m1", 1);
        let tool = Owner::default();
        assert_eq!(admit(Some(&a), RECENT, &tool, WAIT), Admit::Tool);
        assert_eq!(admit(None, RECENT, &tool, WAIT), Admit::Tool);
    }
}
