//! The user's own view, across apps: what one user's listing shows, what a
//! reset or an erasure changes, and the pseudonym an erasure leaves in the
//! retained history.

use super::{machine, Cause, Change, Decision, DecisionRecords, DecisionState, Scope, UserId};

/// What an erased user's id becomes in the retained event log and audit
/// trail: `erased-` and 32 hex digits of `random` (16 random bytes per
/// erasure, never derived from the user id, so it cannot be reversed by
/// hashing candidate ids).
pub fn pseudonym(random: [u8; 16]) -> UserId {
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // 39 printable ASCII characters: always a valid user id.
    UserId::parse(&format!("erased-{hex}")).unwrap_or_else(|_| unreachable!("valid id"))
}

/// Every stored decision of one app back to never asked, with `cause`
/// (USER_RESET or USER_ERASED): one change per stored decision, lapsed
/// grants included (they are still stored), background location before
/// location so "background granted implies location granted" holds after
/// every event.
pub fn plan_user_reset(records: &DecisionRecords, cause: Cause) -> Vec<Change> {
    let stored = records.iter().map(|(&scope, d)| (scope, d.state)).collect();
    machine::plan_forget(&stored, cause)
}

/// The rows of one app in the user's listing: the scopes a reader sees as
/// decided at `now_ms` (the ones GetSetting reports), with their stored
/// record; only `scope` when one is asked for.
pub fn listed(
    records: &DecisionRecords,
    now_ms: u64,
    scope: Option<Scope>,
) -> Vec<(Scope, Decision)> {
    machine::effective(records, now_ms)
        .into_iter()
        .filter(|(s, state)| {
            *state != DecisionState::NotDetermined && scope.is_none_or(|w| w == *s)
        })
        .filter_map(|(s, _)| records.get(&s).map(|d| (s, d.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Lifetime, SessionId};

    fn decision(state: DecisionState, lifetime: Lifetime) -> Decision {
        Decision {
            state,
            cause: Cause::Popup,
            updated_at_ms: 1,
            revision: 1,
            lifetime,
        }
    }

    #[test]
    fn pseudonyms_are_valid_ids_and_differ_by_randomness_only() {
        let a = pseudonym([0xab; 16]);
        assert_eq!(a.as_str(), format!("erased-{}", "ab".repeat(16)));
        assert_ne!(a, pseudonym([0xac; 16]));
    }

    #[test]
    fn a_reset_revokes_every_stored_decision_background_first() {
        let (g, d) = (DecisionState::Granted, DecisionState::Denied);
        let records: DecisionRecords = [
            (Scope::UserLocation, decision(g, Lifetime::Permanent)),
            (
                Scope::UserLocationBackground,
                decision(g, Lifetime::Permanent),
            ),
            (Scope::Camera, decision(d, Lifetime::Permanent)),
            // Lapsed but still stored: it goes too.
            (
                Scope::Record,
                decision(g, Lifetime::Until { expires_at_ms: 0 }),
            ),
        ]
        .into_iter()
        .collect();
        let plan = plan_user_reset(&records, Cause::UserReset);
        assert_eq!(plan.len(), 4);
        assert_eq!(plan[0].scope, Scope::UserLocationBackground);
        let location = plan.iter().position(|c| c.scope == Scope::UserLocation);
        assert!(location > Some(0));
        for c in &plan {
            assert_eq!(c.new, DecisionState::NotDetermined);
            assert_eq!(c.cause, Cause::UserReset);
            assert_eq!(c.old, records[&c.scope].state);
        }
        assert!(plan_user_reset(&DecisionRecords::new(), Cause::UserErased).is_empty());
    }

    #[test]
    fn the_listing_shows_what_readers_see() {
        let g = DecisionState::Granted;
        let session = Lifetime::Session {
            session: SessionId::parse("s").unwrap(),
            expires_at_ms: 100,
        };
        let records: DecisionRecords = [
            (
                Scope::UserLocation,
                decision(g, Lifetime::Until { expires_at_ms: 10 }),
            ),
            (
                Scope::UserLocationBackground,
                decision(g, Lifetime::Permanent),
            ),
            (Scope::Camera, decision(g, session.clone())),
        ]
        .into_iter()
        .collect();
        let at = |now, scope| -> Vec<Scope> {
            listed(&records, now, scope)
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        assert_eq!(
            at(5, None),
            [
                Scope::UserLocation,
                Scope::UserLocationBackground,
                Scope::Camera
            ]
        );
        // Location lapsed: background goes with it, as GetSetting shows.
        assert_eq!(at(50, None), [Scope::Camera]);
        assert_eq!(at(5, Some(Scope::Camera)), [Scope::Camera]);
        assert_eq!(
            listed(&records, 5, Some(Scope::Camera))[0].1.lifetime,
            session
        );
        assert!(at(500, None).is_empty());
    }
}
