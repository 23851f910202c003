//! The simulator's meetings and attendees, and the change log benchmarks read.
//!
//! Kept small on purpose (10,000 meetings × 20 attendees must stay within a few tens of MB):
//! ids are 16-byte [`Uuid`]s, each meeting's attendees are one `Vec` sorted by attendee id
//! (a page is a binary search plus a slice, O(page) not O(meeting)), times are 8-byte
//! offsets from the simulator's start, and JoinTokens are not stored at all but derived
//! from a secret key and the attendee id (see [`TokenKey::join_token`]).
//!
//! Nothing here logs; nothing here formats a JoinToken except [`TokenKey::join_token`].

use std::collections::HashMap;
use std::num::NonZeroU64;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use uuid::Uuid;

use crate::domain::Capabilities;

use super::ApiError;
use super::cursor::Position;
use super::wire::MeetingFeatures;

/// A moment on the simulator's clock: microseconds since start, plus one so that
/// `Option<Stamp>` stays 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(NonZeroU64);

impl Stamp {
    pub(crate) fn from_micros(micros: u64) -> Self {
        Self(NonZeroU64::MIN.saturating_add(micros))
    }

    pub(crate) fn micros(self) -> u64 {
        self.0.get() - 1
    }
}

/// Rarely used meeting members, boxed so a meeting without them pays one pointer.
#[derive(Debug)]
pub(crate) struct MeetingExtras {
    pub(crate) features: Option<MeetingFeatures>,
    pub(crate) primary_meeting_id: Option<Box<str>>,
    pub(crate) tenant_ids: Option<Vec<Box<str>>>,
}

#[derive(Debug)]
pub(crate) struct Meeting {
    pub(crate) external_meeting_id: Box<str>,
    pub(crate) media_region: Box<str>,
    pub(crate) host_id: Option<Box<str>>,
    client_request_token: Box<str>,
    pub(crate) extras: Option<Box<MeetingExtras>>,
    /// Live attendees, sorted by id.
    attendees: Vec<Entry>,
}

/// A live attendee. There is no JoinToken field: see [`TokenKey::join_token`].
#[derive(Debug)]
struct Entry {
    id: Uuid,
    external_user_id: Box<str>,
    capabilities: Capabilities,
    created: Stamp,
    capabilities_updated: Option<Stamp>,
}

/// What handlers get back: an attendee as of the moment the lock was held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttendeeView {
    pub(crate) id: Uuid,
    pub(crate) external_user_id: String,
    pub(crate) capabilities: Capabilities,
    /// When it was created: a create call tells a new attendee from an existing one by it.
    pub(crate) created: Stamp,
}

impl From<&Entry> for AttendeeView {
    fn from(e: &Entry) -> Self {
        Self {
            id: e.id,
            external_user_id: e.external_user_id.to_string(),
            capabilities: e.capabilities,
            created: e.created,
        }
    }
}

/// One `ListAttendees` page as read under the lock.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) attendees: Vec<AttendeeView>,
    /// Index in the live attendee list of the page's first attendee.
    pub(crate) start: usize,
    /// Whether attendees follow the page.
    pub(crate) more: bool,
}

/// An attendee's life on the simulator clock, live or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeline {
    pub(crate) created: Stamp,
    pub(crate) capabilities_updated: Option<Stamp>,
    pub(crate) deleted: Option<Stamp>,
}

#[derive(Debug)]
struct Tombstone {
    meeting: Uuid,
    created: Stamp,
    capabilities_updated: Option<Stamp>,
    deleted: Stamp,
}

/// A validated CreateMeeting.
pub(crate) struct NewMeeting {
    pub(crate) client_request_token: String,
    pub(crate) external_meeting_id: String,
    pub(crate) media_region: String,
    pub(crate) host_id: Option<String>,
    pub(crate) extras: Option<MeetingExtras>,
}

/// One CreateAttendee, validated.
pub(crate) struct NewAttendee {
    pub(crate) external_user_id: String,
    pub(crate) capabilities: Capabilities,
}

pub(crate) struct State {
    meetings: HashMap<Uuid, Meeting>,
    by_request_token: HashMap<Box<str>, Uuid>,
    /// Deleted attendees (and those of deleted meetings), for [`State::timeline`] only.
    tombstones: HashMap<Uuid, Tombstone>,
    /// Draws meeting and attendee ids, in request order: with a seed they repeat run to run.
    ids: StdRng,
    max_attendees: usize,
}

/// The secret JoinTokens are derived from, so they need no storage. Its `Debug` is redacted.
pub(crate) struct TokenKey([u8; 32]);

impl TokenKey {
    pub(crate) fn new(rng: &mut StdRng) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// The attendee's JoinToken: 48 bytes of ChaCha (rand's `StdRng`) keyed by the secret
    /// and the attendee id, as 64 base64 characters. Stable for the attendee's life,
    /// unpredictable without the key, and never stored.
    pub(crate) fn join_token(&self, attendee: &Uuid) -> String {
        let mut seed = self.0;
        for (i, b) in attendee.as_bytes().iter().enumerate() {
            seed[i] ^= b;
            seed[i + 16] ^= b.rotate_left(3);
        }
        let mut raw = [0u8; 48];
        StdRng::from_seed(seed).fill_bytes(&mut raw);
        base64(&raw)
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl State {
    pub(crate) fn new(ids: StdRng, max_attendees: usize) -> Self {
        Self {
            meetings: HashMap::new(),
            by_request_token: HashMap::new(),
            tombstones: HashMap::new(),
            ids,
            max_attendees,
        }
    }

    fn fresh_id(&mut self) -> Uuid {
        loop {
            let mut b = [0u8; 16];
            self.ids.fill_bytes(&mut b);
            let id = uuid::Builder::from_random_bytes(b).into_uuid();
            if !self.meetings.contains_key(&id) && !self.tombstones.contains_key(&id) {
                return id;
            }
        }
    }

    /// Creates a meeting, or returns the one created with the same ClientRequestToken.
    pub(crate) fn create_meeting(&mut self, m: NewMeeting) -> Uuid {
        if let Some(id) = self.by_request_token.get(m.client_request_token.as_str()) {
            return *id;
        }
        let id = self.fresh_id();
        let token: Box<str> = m.client_request_token.into();
        self.by_request_token.insert(token.clone(), id);
        self.meetings.insert(
            id,
            Meeting {
                external_meeting_id: m.external_meeting_id.into(),
                media_region: m.media_region.into(),
                host_id: m.host_id.map(Into::into),
                client_request_token: token,
                extras: m.extras.map(Box::new),
                attendees: Vec::new(),
            },
        );
        id
    }

    /// # Errors
    /// [`ApiError::NotFound`] for an unknown or deleted meeting.
    pub(crate) fn meeting(&self, id: &Uuid) -> Result<&Meeting, ApiError> {
        self.meetings.get(id).ok_or_else(|| meeting_not_found(id))
    }

    /// Ends the meeting; its attendees become tombstones deleted now.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] for an unknown or deleted meeting.
    pub(crate) fn delete_meeting(&mut self, id: &Uuid, now: Stamp) -> Result<(), ApiError> {
        let m = self
            .meetings
            .remove(id)
            .ok_or_else(|| meeting_not_found(id))?;
        self.by_request_token.remove(&m.client_request_token);
        for e in m.attendees {
            self.bury(*id, e, now);
        }
        Ok(())
    }

    fn bury(&mut self, meeting: Uuid, e: Entry, now: Stamp) {
        let t = Tombstone {
            meeting,
            created: e.created,
            capabilities_updated: e.capabilities_updated,
            deleted: now,
        };
        self.tombstones.insert(e.id, t);
    }

    /// Creates attendees in one meeting, all or none when the limit would be exceeded.
    /// An ExternalUserId already in the meeting (or earlier in `items`) returns that
    /// attendee: the service treats it as an idempotency token.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] for an unknown meeting, [`ApiError::LimitExceeded`] when the
    /// new attendees would not fit.
    pub(crate) fn create_attendees(
        &mut self,
        meeting: &Uuid,
        items: Vec<NewAttendee>,
        now: Stamp,
    ) -> Result<Vec<AttendeeView>, ApiError> {
        let limit = {
            let m = self.meeting(meeting)?;
            let own = m
                .extras
                .as_ref()
                .and_then(|x| x.features.as_ref()?.max_attendees());
            own.map_or(self.max_attendees, |n| self.max_attendees.min(n as usize))
        };
        let m = self.meeting(meeting)?;
        let mut fresh: Vec<&str> = Vec::new();
        for it in &items {
            let ext = it.external_user_id.as_str();
            if find_by_external(&m.attendees, ext).is_none() && !fresh.contains(&ext) {
                fresh.push(ext);
            }
        }
        if m.attendees.len() + fresh.len() > limit {
            return Err(ApiError::LimitExceeded(format!(
                "The meeting already has {} attendees; the limit is {limit}",
                m.attendees.len()
            )));
        }
        // Exact capacity: a meeting's attendees rarely grow after they join, and doubling
        // would leave a third of every roster's memory unused.
        let additional = fresh.len();
        if let Some(m) = self.meetings.get_mut(meeting) {
            m.attendees.reserve_exact(additional);
        }
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            let existing = self
                .meetings
                .get(meeting)
                .and_then(|m| find_by_external(&m.attendees, &it.external_user_id))
                .map(AttendeeView::from);
            if let Some(view) = existing {
                out.push(view);
                continue;
            }
            let id = self.fresh_attendee_id(meeting);
            let entry = Entry {
                id,
                external_user_id: it.external_user_id.into(),
                capabilities: it.capabilities,
                created: now,
                capabilities_updated: None,
            };
            out.push(AttendeeView::from(&entry));
            let m = self
                .meetings
                .get_mut(meeting)
                .ok_or_else(|| meeting_not_found(meeting))?;
            let at = m.attendees.partition_point(|e| e.id < id);
            m.attendees.insert(at, entry);
        }
        Ok(out)
    }

    fn fresh_attendee_id(&mut self, meeting: &Uuid) -> Uuid {
        loop {
            let id = self.fresh_id();
            let taken = self
                .meetings
                .get(meeting)
                .is_some_and(|m| m.attendees.binary_search_by(|e| e.id.cmp(&id)).is_ok());
            if !taken {
                return id;
            }
        }
    }

    /// # Errors
    /// [`ApiError::NotFound`] for an unknown meeting or attendee.
    pub(crate) fn attendee(&self, meeting: &Uuid, id: &Uuid) -> Result<AttendeeView, ApiError> {
        let m = self.meeting(meeting)?;
        find(&m.attendees, id)
            .map(AttendeeView::from)
            .ok_or_else(|| attendee_not_found(id))
    }

    /// One page of up to `max` attendees starting at `from` (the first attendee when `None`).
    ///
    /// # Errors
    /// [`ApiError::NotFound`] for an unknown meeting.
    pub(crate) fn list(
        &self,
        meeting: &Uuid,
        from: Option<Position>,
        max: usize,
    ) -> Result<Page, ApiError> {
        let all = &self.meeting(meeting)?.attendees;
        let start = from.map_or(0, |p| served_before(all, p));
        let rest = &all[start..];
        let page = &rest[..max.min(rest.len())];
        Ok(Page {
            attendees: page.iter().map(AttendeeView::from).collect(),
            start,
            more: rest.len() > page.len(),
        })
    }

    /// Deletes up to `count` of the attendees a client paging up to `to` has already been
    /// served (the first ones in attendee-id order), exactly as DeleteAttendee does; returns
    /// their ids. An unknown meeting has nothing to delete.
    pub(crate) fn delete_served(
        &mut self,
        meeting: &Uuid,
        to: Position,
        count: usize,
        now: Stamp,
    ) -> Vec<Uuid> {
        let Some(m) = self.meetings.get(meeting) else {
            return Vec::new();
        };
        let served = served_before(&m.attendees, to);
        let chosen: Vec<Uuid> = m.attendees[..served]
            .iter()
            .take(count)
            .map(|e| e.id)
            .collect();
        chosen
            .into_iter()
            .filter(|id| self.delete_attendee(meeting, id, now).is_ok())
            .collect()
    }

    /// Sets an attendee's capabilities; the change time is recorded only when they change.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] for an unknown meeting or attendee.
    pub(crate) fn update_capabilities(
        &mut self,
        meeting: &Uuid,
        id: &Uuid,
        caps: Capabilities,
        now: Stamp,
    ) -> Result<AttendeeView, ApiError> {
        let m = self
            .meetings
            .get_mut(meeting)
            .ok_or_else(|| meeting_not_found(meeting))?;
        let e = match m.attendees.binary_search_by(|e| e.id.cmp(id)) {
            Ok(i) => &mut m.attendees[i],
            Err(_) => return Err(attendee_not_found(id)),
        };
        if e.capabilities != caps {
            e.capabilities = caps;
            e.capabilities_updated = Some(now);
        }
        Ok(AttendeeView::from(&*e))
    }

    /// # Errors
    /// [`ApiError::NotFound`] for an unknown meeting or attendee.
    pub(crate) fn delete_attendee(
        &mut self,
        meeting: &Uuid,
        id: &Uuid,
        now: Stamp,
    ) -> Result<(), ApiError> {
        let m = self
            .meetings
            .get_mut(meeting)
            .ok_or_else(|| meeting_not_found(meeting))?;
        let e = match m.attendees.binary_search_by(|e| e.id.cmp(id)) {
            Ok(i) => m.attendees.remove(i),
            Err(_) => return Err(attendee_not_found(id)),
        };
        self.bury(*meeting, e, now);
        Ok(())
    }

    pub(crate) fn timeline(&self, meeting: &Uuid, id: &Uuid) -> Option<Timeline> {
        if let Some(e) = self
            .meetings
            .get(meeting)
            .and_then(|m| find(&m.attendees, id))
        {
            return Some(Timeline {
                created: e.created,
                capabilities_updated: e.capabilities_updated,
                deleted: None,
            });
        }
        self.tombstones
            .get(id)
            .filter(|t| t.meeting == *meeting)
            .map(|t| Timeline {
                created: t.created,
                capabilities_updated: t.capabilities_updated,
                deleted: Some(t.deleted),
            })
    }
}

/// How many of `attendees` (sorted by id) come before `p`: the index a page at `p` starts at.
fn served_before(attendees: &[Entry], p: Position) -> usize {
    match p {
        Position::After(last) => attendees.partition_point(|e| e.id <= last),
        Position::Index(at) => {
            usize::try_from(at).map_or(attendees.len(), |at| at.min(attendees.len()))
        }
    }
}

fn find<'a>(attendees: &'a [Entry], id: &Uuid) -> Option<&'a Entry> {
    attendees
        .binary_search_by(|e| e.id.cmp(id))
        .ok()
        .map(|i| &attendees[i])
}

fn find_by_external<'a>(attendees: &'a [Entry], ext: &str) -> Option<&'a Entry> {
    attendees.iter().find(|e| &*e.external_user_id == ext)
}

fn meeting_not_found(id: &Uuid) -> ApiError {
    ApiError::NotFound(format!("The meeting {id} is not found"))
}

fn attendee_not_found(id: &Uuid) -> ApiError {
    ApiError::NotFound(format!("The attendee {id} is not found"))
}

/// Standard base64 with padding, the alphabet AWS JoinTokens use.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(StdRng::seed_from_u64(7), 250)
    }

    fn meeting(s: &mut State, token: &str) -> Uuid {
        s.create_meeting(NewMeeting {
            client_request_token: token.to_owned(),
            external_meeting_id: "ext".to_owned(),
            media_region: "us-east-1".to_owned(),
            host_id: None,
            extras: None,
        })
    }

    fn new(ext: &str) -> NewAttendee {
        NewAttendee {
            external_user_id: ext.to_owned(),
            capabilities: Capabilities::DEFAULT,
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn join_tokens_are_stable_per_attendee_and_differ_between_attendees() {
        let k = TokenKey::new(&mut StdRng::seed_from_u64(7));
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(k.join_token(&a), k.join_token(&a));
        assert_ne!(k.join_token(&a), k.join_token(&b));
        assert_eq!(k.join_token(&a).len(), 64);
        let other = TokenKey::new(&mut StdRng::seed_from_u64(8));
        assert_ne!(k.join_token(&a), other.join_token(&a));
        assert_eq!(format!("{k:?}"), "TokenKey(<redacted>)");
    }

    #[test]
    fn the_same_client_request_token_returns_the_same_meeting() {
        let mut s = state();
        assert_eq!(meeting(&mut s, "t1"), meeting(&mut s, "t1"));
        assert_ne!(meeting(&mut s, "t1"), meeting(&mut s, "t2"));
    }

    fn ids(p: &Page) -> Vec<Uuid> {
        p.attendees.iter().map(|a| a.id).collect()
    }

    #[test]
    fn keyset_pages_follow_attendee_id_order_and_survive_deletes() {
        let mut s = state();
        let m = meeting(&mut s, "t");
        let items = (0..10).map(|i| new(&format!("user{i}"))).collect();
        s.create_attendees(&m, items, Stamp::from_micros(1))
            .unwrap();
        let p1 = s.list(&m, None, 4).unwrap();
        assert!(p1.more);
        assert_eq!(p1.start, 0);
        assert!(ids(&p1).windows(2).all(|w| w[0] < w[1]));
        // Deleting the cursor's own attendee must not shift the next page.
        let last = p1.attendees[3].id;
        s.delete_attendee(&m, &last, Stamp::from_micros(2)).unwrap();
        let p2 = s.list(&m, Some(Position::After(last)), 4).unwrap();
        let all = s.list(&m, None, 100).unwrap();
        assert!(!all.more);
        assert_eq!(&ids(&all)[3..7], &ids(&p2)[..]);
        assert_eq!(p2.start, 3);
    }

    #[test]
    fn an_offset_page_after_a_deletion_skips_an_attendee() {
        let mut s = state();
        let m = meeting(&mut s, "t");
        let items = (0..10).map(|i| new(&format!("user{i}"))).collect();
        s.create_attendees(&m, items, Stamp::from_micros(1))
            .unwrap();
        let before = ids(&s.list(&m, None, 100).unwrap());
        let gone = s.delete_served(&m, Position::Index(4), 1, Stamp::from_micros(2));
        assert_eq!(gone, vec![before[0]], "the first attendee already served");
        let p2 = s.list(&m, Some(Position::Index(4)), 4).unwrap();
        assert_eq!(ids(&p2), before[5..9], "before[4] is skipped");
        assert!(s.timeline(&m, &before[0]).unwrap().deleted.is_some());
        let beyond = s.list(&m, Some(Position::Index(40)), 4).unwrap();
        assert!(beyond.attendees.is_empty() && !beyond.more);
    }

    #[test]
    fn delete_served_never_touches_attendees_not_yet_served() {
        let mut s = state();
        let m = meeting(&mut s, "t");
        let items = (0..6).map(|i| new(&format!("user{i}"))).collect();
        s.create_attendees(&m, items, Stamp::from_micros(1))
            .unwrap();
        let before = ids(&s.list(&m, None, 100).unwrap());
        let gone = s.delete_served(&m, Position::After(before[1]), 5, Stamp::from_micros(2));
        assert_eq!(gone, before[..2]);
        assert_eq!(ids(&s.list(&m, None, 100).unwrap()), before[2..]);
        assert!(
            s.delete_served(
                &Uuid::from_u128(9),
                Position::Index(3),
                1,
                Stamp::from_micros(3)
            )
            .is_empty()
        );
    }

    #[test]
    fn a_duplicate_external_user_id_returns_the_existing_attendee() {
        let mut s = state();
        let m = meeting(&mut s, "t");
        let a = s
            .create_attendees(&m, vec![new("alice")], Stamp::from_micros(1))
            .unwrap();
        let b = s
            .create_attendees(&m, vec![new("alice"), new("alice")], Stamp::from_micros(2))
            .unwrap();
        assert_eq!(b, vec![a[0].clone(), a[0].clone()]);
        assert_eq!(s.list(&m, None, 100).unwrap().attendees.len(), 1);
    }

    #[test]
    fn the_attendee_limit_is_all_or_nothing() {
        let mut s = State::new(StdRng::seed_from_u64(1), 3);
        let m = meeting(&mut s, "t");
        s.create_attendees(&m, vec![new("a"), new("b")], Stamp::from_micros(1))
            .unwrap();
        let err = s.create_attendees(&m, vec![new("c"), new("d")], Stamp::from_micros(1));
        assert!(matches!(err, Err(ApiError::LimitExceeded(_))));
        assert_eq!(s.list(&m, None, 100).unwrap().attendees.len(), 2);
        // An existing attendee does not count against the limit again.
        s.create_attendees(&m, vec![new("a"), new("c")], Stamp::from_micros(1))
            .unwrap();
    }

    #[test]
    fn the_timeline_outlives_the_meeting() {
        let mut s = state();
        let m = meeting(&mut s, "t");
        let a = s
            .create_attendees(&m, vec![new("a")], Stamp::from_micros(10))
            .unwrap()[0]
            .id;
        let mut caps = Capabilities::DEFAULT;
        s.update_capabilities(&m, &a, caps, Stamp::from_micros(15))
            .unwrap();
        assert_eq!(
            s.timeline(&m, &a).unwrap().capabilities_updated,
            None,
            "unchanged"
        );
        caps.audio = crate::domain::Capability::Send;
        s.update_capabilities(&m, &a, caps, Stamp::from_micros(20))
            .unwrap();
        s.delete_meeting(&m, Stamp::from_micros(30)).unwrap();
        let t = s.timeline(&m, &a).unwrap();
        assert_eq!(t.created.micros(), 10);
        assert_eq!(t.capabilities_updated.map(Stamp::micros), Some(20));
        assert_eq!(t.deleted.map(Stamp::micros), Some(30));
        assert!(
            s.timeline(&Uuid::from_u128(9), &a).is_none(),
            "another meeting's attendee"
        );
        assert!(matches!(s.meeting(&m), Err(ApiError::NotFound(_))));
    }

    #[test]
    fn an_attendee_entry_stays_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 56,
            "{}",
            std::mem::size_of::<Entry>()
        );
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }
}
