//! The pure heart of roster-sync: previous snapshot + complete roster → changes.
//!
//! No async, no SQL, no SDK types. Both inputs are sorted by attendee id (a [`Roster`] always
//! is, and the store returns snapshots that way), so one merge pass finds every change in
//! O(n) and the output order is deterministic: by attendee id, one change per attendee.
//! It must never be called with a partial roster: that would invent `left` events.

use std::cmp::Ordering;

use crate::domain::{Attendee, Change, LeftReason, Roster};

/// Changes that turn `previous` into `current`, ordered by attendee id.
///
/// An attendee only in `current` joined; only in `previous` left (reason `removed`: the roster
/// is complete, so it was deleted); in both with other capabilities changed them. A changed
/// ExternalUserId under the same AttendeeId is impossible in the service and is ignored.
pub fn diff(previous: &[Attendee], current: &Roster) -> Vec<Change> {
    debug_assert!(previous.is_sorted_by(|a, b| a.attendee_id < b.attendee_id));
    let current = current.attendees();
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < previous.len() || j < current.len() {
        let order = match (previous.get(i), current.get(j)) {
            (Some(p), Some(c)) => p.attendee_id.cmp(&c.attendee_id),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                changes.push(Change::left(&previous[i], LeftReason::Removed));
                i += 1;
            }
            Ordering::Greater => {
                changes.push(Change::joined(&current[j]));
                j += 1;
            }
            Ordering::Equal => {
                if previous[i].capabilities != current[j].capabilities {
                    changes.push(Change::capabilities_changed(&previous[i], &current[j]));
                }
                i += 1;
                j += 1;
            }
        }
    }
    changes
}

/// Every attendee of `previous` leaves for `reason`: the meeting ended or tracking stopped.
/// (The store closes them itself, in SQL; this is the model its tests are checked against.)
#[cfg(test)]
fn all_left(previous: &[Attendee], reason: LeftReason) -> Vec<Change> {
    previous.iter().map(|a| Change::left(a, reason)).collect()
}

/// Applies `changes` to `snapshot` the way the store does, so tests can check that the diff
/// is exactly the difference. Returns the new snapshot sorted by attendee id.
#[cfg(test)]
fn apply(snapshot: &[Attendee], changes: &[Change]) -> Vec<Attendee> {
    use crate::domain::EventKind;
    let mut map: std::collections::BTreeMap<_, _> = snapshot
        .iter()
        .map(|a| (a.attendee_id.clone(), a.clone()))
        .collect();
    for c in changes {
        match (c.kind, c.after) {
            (EventKind::Left, _) => {
                map.remove(&c.attendee_id);
            }
            (_, Some(caps)) => {
                map.insert(
                    c.attendee_id.clone(),
                    Attendee {
                        attendee_id: c.attendee_id.clone(),
                        external_user_id: c.external_user_id.clone(),
                        capabilities: caps,
                    },
                );
            }
            (_, None) => {}
        }
    }
    map.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttendeeId, Capabilities, Capability, EventKind, ExternalUserId};
    use proptest::prelude::*;

    fn attendee(n: u32, caps: Capabilities) -> Attendee {
        Attendee {
            attendee_id: AttendeeId::parse(&format!("00000000-0000-0000-0000-{n:012x}")).unwrap(),
            external_user_id: ExternalUserId::new(format!("user-{n}")),
            capabilities: caps,
        }
    }

    fn caps(audio: Capability, video: Capability, content: Capability) -> Capabilities {
        Capabilities {
            audio,
            video,
            content,
        }
    }

    #[test]
    fn first_poll_reports_everyone_joined() {
        let now = Roster::new(vec![
            attendee(2, Capabilities::DEFAULT),
            attendee(1, Capabilities::DEFAULT),
        ]);
        let changes = diff(&[], &now);
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .all(|c| c.kind == EventKind::Joined && c.before.is_none())
        );
        assert_eq!(changes[0].attendee_id, now.attendees()[0].attendee_id);
    }

    #[test]
    fn missing_attendee_left_as_removed_with_last_capabilities() {
        let muted = caps(Capability::Receive, Capability::None, Capability::None);
        let prev = vec![attendee(1, muted), attendee(2, Capabilities::DEFAULT)];
        let changes = diff(
            &prev,
            &Roster::new(vec![attendee(2, Capabilities::DEFAULT)]),
        );
        assert_eq!(changes, vec![Change::left(&prev[0], LeftReason::Removed)]);
        assert_eq!(changes[0].before, Some(muted));
        assert_eq!(changes[0].after, None);
    }

    #[test]
    fn capability_change_carries_before_and_after() {
        let before = attendee(1, Capabilities::DEFAULT);
        let after = attendee(
            1,
            caps(Capability::Send, Capability::None, Capability::None),
        );
        let changes = diff(
            std::slice::from_ref(&before),
            &Roster::new(vec![after.clone()]),
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, EventKind::CapabilitiesChanged);
        assert_eq!(changes[0].before, Some(before.capabilities));
        assert_eq!(changes[0].after, Some(after.capabilities));
    }

    #[test]
    fn unchanged_roster_has_no_changes() {
        let prev = vec![
            attendee(1, Capabilities::DEFAULT),
            attendee(5, Capabilities::DEFAULT),
        ];
        assert!(diff(&prev, &Roster::new(prev.clone())).is_empty());
    }

    #[test]
    fn all_left_closes_every_attendee_with_the_reason() {
        let prev = vec![
            attendee(1, Capabilities::DEFAULT),
            attendee(2, Capabilities::DEFAULT),
        ];
        let changes = all_left(&prev, LeftReason::MeetingEnded);
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .all(|c| c.reason == Some(LeftReason::MeetingEnded))
        );
        assert!(apply(&prev, &changes).is_empty());
    }

    fn capability() -> impl Strategy<Value = Capability> {
        prop::sample::select(Capability::ALL.to_vec())
    }

    fn roster() -> impl Strategy<Value = Vec<Attendee>> {
        prop::collection::btree_map(
            0u32..400,
            (capability(), capability(), capability()),
            0..120,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(n, (a, v, c))| attendee(n, caps(a, v, c)))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_to_the_previous_snapshot_yields_the_new_roster(prev in roster(), next in roster()) {
            let current = Roster::new(next);
            let changes = diff(&prev, &current);
            prop_assert_eq!(apply(&prev, &changes), current.attendees().to_vec());
        }

        #[test]
        fn diff_of_a_roster_with_itself_is_empty(prev in roster()) {
            prop_assert!(diff(&prev, &Roster::new(prev.clone())).is_empty());
        }

        #[test]
        fn diff_output_is_ordered_by_attendee_id_with_one_change_each(prev in roster(), next in roster()) {
            let changes = diff(&prev, &Roster::new(next));
            prop_assert!(changes.windows(2).all(|w| w[0].attendee_id < w[1].attendee_id));
        }
    }
}
