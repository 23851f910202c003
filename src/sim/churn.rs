//! The churn driver: joins, deletions and capability changes made through the control-plane
//! client ([`Driver`]) at a steady rate, so the daemon has something to notice. Beside it,
//! [`presence_churn`] makes the fleet's attendees connect, drop, reconnect, hand off, share
//! video and content and leave (without being deleted), through the simulator's presence
//! controls, for a daemon that consumes meeting events. `demo` and
//! `roster-bench` both use it; each change is reported with the instant the service
//! acknowledged it, which is where the benchmark's detection latency starts.
//!
//! It keeps its own account of who is in each meeting (16-byte GUIDs, so a fleet of 250 × 250
//! costs about a megabyte) instead of listing attendees, so it never spends the
//! `ListAttendees` quota the daemon is measured on. It must never be pointed at AWS: it is only
//! ever given a driver on a simulator.

use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::control::{Created, Driver};
use super::presence::PresenceAction;
use crate::deadline::Later as _;
use crate::domain::{AttendeeId, Capabilities, Capability, EventKind, MeetingId};

/// The capabilities a capability change switches to and from the default.
pub const LISTENER: Capabilities = Capabilities {
    audio: Capability::Receive,
    video: Capability::None,
    content: Capability::None,
};

/// The meetings the churn changes, and who the driver has put in each.
#[derive(Debug, Default)]
pub struct Fleet {
    meetings: Vec<FleetMeeting>,
}

#[derive(Debug)]
struct FleetMeeting {
    id: MeetingId,
    guid: u128,
    attendees: Vec<u128>,
    /// Whether each attendee has [`LISTENER`] capabilities (else the default ones).
    listener: Vec<bool>,
}

impl Fleet {
    /// Adds a meeting with the attendees the driver created in it (default capabilities).
    ///
    /// # Errors
    /// An id that is not a GUID (the simulator only issues GUIDs).
    pub fn add(&mut self, id: MeetingId, created: &[Created]) -> anyhow::Result<()> {
        let attendees = created
            .iter()
            .map(|c| guid(c.attendee_id.as_str()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.meetings.push(FleetMeeting {
            guid: guid(id.as_str())?,
            id,
            listener: vec![false; attendees.len()],
            attendees,
        });
        Ok(())
    }

    /// Moves the meetings of `other` to the end of this fleet.
    pub fn extend(&mut self, other: Fleet) {
        self.meetings.extend(other.meetings);
    }

    pub fn len(&self) -> usize {
        self.meetings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meetings.is_empty()
    }

    /// The ids of the meetings still in the fleet, in the order they were added.
    /// Every meeting with the attendees the driver has put in it.
    pub fn people(&self) -> Vec<(MeetingId, Vec<AttendeeId>)> {
        self.meetings
            .iter()
            .map(|m| {
                let ids = m
                    .attendees
                    .iter()
                    .filter_map(|a| attendee_id(*a).ok())
                    .collect();
                (m.id.clone(), ids)
            })
            .collect()
    }

    pub fn ids(&self) -> impl Iterator<Item = &MeetingId> {
        self.meetings.iter().map(|m| &m.id)
    }
}

/// What a churn run does.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    /// Changes per second over all meetings; 0 makes none (the run only waits).
    pub per_second: f64,
    /// How long changes are made.
    pub duration: Duration,
    /// Attendees each meeting is kept at about: a membership change deletes someone when the
    /// meeting has this many or more, and adds someone otherwise.
    pub target: usize,
    /// Deletes the last meeting of the fleet (the service ends it) this long into the run.
    pub end_a_meeting_after: Option<Duration>,
    /// The ExternalUserId of the n-th attendee the churn adds.
    pub name: fn(u64) -> String,
    /// How the changes are spread over the meetings.
    pub skew: Skew,
}

/// How a churn run picks the meeting of each change.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Skew {
    /// Every meeting alike.
    #[default]
    Uniform,
    /// Zipf with this exponent over the fleet's order: the n-th meeting (from 1) is picked
    /// with a weight of 1 / n^s, so a few meetings get most of the changes.
    Zipf(f64),
}

impl std::str::FromStr for Skew {
    type Err = String;

    /// `uniform` or `zipf:S` with S a finite exponent ≥ 0 (`zipf:1.0`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "uniform" {
            return Ok(Self::Uniform);
        }
        let exponent = s
            .strip_prefix("zipf:")
            .and_then(|e| e.parse::<f64>().ok())
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or_else(|| {
                format!("{s:?} is not `uniform` or `zipf:S` with S ≥ 0, e.g. zipf:1.0")
            })?;
        Ok(Self::Zipf(exponent))
    }
}

impl std::fmt::Display for Skew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Picks meetings by a [`Skew`]: the cumulative weights of a fleet of `len` meetings.
#[derive(Debug, Clone, Default)]
struct Picker {
    cumulative: Vec<f64>,
}

impl Picker {
    fn new(skew: Skew, len: usize) -> Self {
        let cumulative = match skew {
            Skew::Uniform => Vec::new(),
            Skew::Zipf(s) => (1..=len)
                .scan(0.0, |sum, n| {
                    *sum += (n as f64).powf(-s);
                    Some(*sum)
                })
                .collect(),
        };
        Self { cumulative }
    }

    /// The index of a meeting of a fleet of `len` (the length the picker was made for).
    fn pick(&self, rng: &mut impl Rng, len: usize) -> usize {
        match self.cumulative.last() {
            None => rng.random_range(0..len),
            Some(&total) => {
                let x = rng.random_range(0.0..total);
                self.cumulative.partition_point(|&c| c <= x).min(len - 1)
            }
        }
    }
}

/// A change the service acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    /// The meeting's and attendee's GUIDs.
    pub meeting: u128,
    pub attendee: u128,
    /// The event the daemon should record for it.
    pub kind: EventKind,
    /// When the driver's answer arrived: the simulator had applied the change.
    pub at: Instant,
}

/// How many changes a run made, and how many the service refused or did not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churned {
    pub made: u64,
    pub failed: u64,
}

/// Makes `plan.per_second` changes a second on random meetings of `fleet` until
/// `plan.duration` has passed or `cancel` fires, calling `on_made` with each one. Of the
/// changes, two in three are joins or deletions (see [`ChurnPlan::target`]) and one in three a
/// capability change of a random attendee between the default and [`LISTENER`]. A change the
/// service refuses is logged, counted and skipped.
pub async fn churn(
    driver: &Driver,
    fleet: &mut Fleet,
    plan: &ChurnPlan,
    cancel: &CancellationToken,
    mut on_made: impl FnMut(Made),
) -> Churned {
    let mut churned = Churned::default();
    let started = Instant::now();
    let stop = started.later_by(plan.duration);
    if plan.per_second.is_nan() || plan.per_second <= 0.0 || fleet.is_empty() {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep_until(stop) => {}
        }
        return churned;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.per_second));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ended = false;
    let mut serial = 0u64;
    let mut name = || {
        serial += 1;
        (plan.name)(serial)
    };
    let mut picker = Picker::new(plan.skew, fleet.len());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return churned,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        if now >= stop {
            return churned;
        }
        if let Some(after) = plan.end_a_meeting_after
            && !ended
            && fleet.len() > 1
            && now >= started.later_by(after)
        {
            ended = true;
            picker = Picker::new(plan.skew, fleet.len() - 1);
            if let Some(last) = fleet.meetings.pop()
                && let Err(e) = driver.delete_meeting(&last.id).await
            {
                churned.failed += 1;
                tracing::warn!(error = %format!("{e:#}"), "the churn could not end a meeting");
            }
            continue;
        }
        let (m, membership, pick) = {
            let mut rng = rand::rng();
            (
                picker.pick(&mut rng, fleet.len()),
                rng.random_bool(2.0 / 3.0),
                rng.random::<u64>(),
            )
        };
        let meeting = &mut fleet.meetings[m];
        // A membership change keeps the meeting at about its target size.
        let kind = match membership {
            true if !meeting.attendees.is_empty() && meeting.attendees.len() >= plan.target => {
                EventKind::Left
            }
            true => EventKind::Joined,
            false => EventKind::CapabilitiesChanged,
        };
        match change_one(driver, meeting, kind, pick, &mut name).await {
            Ok(made) => {
                churned.made += 1;
                on_made(made);
            }
            Err(e) => {
                churned.failed += 1;
                tracing::warn!(error = %format!("{e:#}"), "a churn change failed");
            }
        }
    }
}

/// What a presence churn run does.
#[derive(Debug, Clone)]
pub struct PresenceChurnPlan {
    /// Presence changes per second over all meetings; 0 makes none.
    pub per_second: f64,
    /// How long changes are made.
    pub duration: Duration,
    /// Of the changes to a connected attendee, the share that disconnects them (a leave or,
    /// one time in three, a drop); the rest are hand-offs, video and content changes.
    pub disconnect_share: f64,
}

impl Default for PresenceChurnPlan {
    fn default() -> Self {
        Self {
            per_second: 1.0,
            duration: Duration::from_secs(60),
            disconnect_share: 0.25,
        }
    }
}

/// A presence change the simulator acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMade {
    pub meeting: MeetingId,
    pub attendee: AttendeeId,
    pub action: PresenceAction,
    /// When the driver's answer arrived: the simulator had applied it and emitted its events.
    pub at: Instant,
}

/// What the churn believes one attendee is doing (the simulator's truth is the authority).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    connected: bool,
    video: bool,
    content: bool,
    content_video: bool,
    /// DeleteAttendee (the roster churn) made the controls fail: leave the attendee alone.
    gone: bool,
}

/// The next action for an attendee in state `s`, from two random numbers in 0..1.
fn next_action(s: Seen, disconnect_share: f64, r: f64, r2: f64) -> PresenceAction {
    if !s.connected {
        return PresenceAction::Join;
    }
    if r < disconnect_share {
        return if r2 < 1.0 / 3.0 {
            PresenceAction::Drop
        } else {
            PresenceAction::Leave
        };
    }
    let rest = (r - disconnect_share) / (1.0 - disconnect_share).max(f64::EPSILON);
    match rest {
        x if x < 0.1 => PresenceAction::Handoff,
        x if x < 0.55 => {
            if s.video {
                PresenceAction::VideoStop
            } else {
                PresenceAction::VideoStart
            }
        }
        x if x < 0.85 => match (s.content, r2) {
            (false, _) => PresenceAction::ContentJoin,
            (true, y) if y < 0.2 => PresenceAction::ContentDrop,
            (true, _) => PresenceAction::ContentLeave,
        },
        _ => match (s.content, s.content_video) {
            (true, false) => PresenceAction::ContentVideoStart,
            (true, true) => PresenceAction::ContentVideoStop,
            (false, _) => PresenceAction::Handoff,
        },
    }
}

fn after(mut s: Seen, action: PresenceAction) -> Seen {
    use PresenceAction as P;
    match action {
        P::Join => s.connected = true,
        P::Leave | P::Drop => s = Seen::default(),
        P::Handoff => {}
        P::VideoStart => s.video = true,
        P::VideoStop => s.video = false,
        P::ContentJoin => s.content = true,
        P::ContentLeave | P::ContentDrop => {
            s.content = false;
            s.content_video = false;
        }
        P::ContentVideoStart => s.content_video = true,
        P::ContentVideoStop => s.content_video = false,
    }
    s
}

/// Makes `plan.per_second` presence changes a second on random attendees of `people` (see
/// [`Fleet::people`]) until `plan.duration` has passed or `cancel` fires, calling `on_made`
/// with each. A disconnected attendee joins; a connected one leaves or drops (and may come
/// back later: a reconnect), hands off, or starts or stops video, content or content video.
/// Nobody is ever deleted here; an attendee the roster churn deleted is skipped from its
/// first refusal on. `driver` must have the simulator's endpoint ([`Driver::with_endpoint`]).
pub async fn presence_churn(
    driver: &Driver,
    people: &[(MeetingId, Vec<AttendeeId>)],
    plan: &PresenceChurnPlan,
    cancel: &CancellationToken,
    mut on_made: impl FnMut(PresenceMade),
) -> Churned {
    let mut churned = Churned::default();
    let stop = Instant::now() + plan.duration;
    let everyone: Vec<(usize, usize)> = people
        .iter()
        .enumerate()
        .flat_map(|(m, (_, a))| (0..a.len()).map(move |i| (m, i)))
        .collect();
    if plan.per_second.is_nan() || plan.per_second <= 0.0 || everyone.is_empty() {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep_until(stop) => {}
        }
        return churned;
    }
    let mut seen = vec![Seen::default(); everyone.len()];
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.per_second));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return churned,
            _ = ticker.tick() => {}
        }
        if Instant::now() >= stop {
            return churned;
        }
        let (k, r, r2) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..everyone.len()),
                rng.random::<f64>(),
                rng.random::<f64>(),
            )
        };
        if seen[k].gone {
            continue;
        }
        let (m, i) = everyone[k];
        let (meeting, attendees) = &people[m];
        let attendee = &attendees[i];
        let action = next_action(seen[k], plan.disconnect_share, r, r2);
        let network_type = (action == PresenceAction::Join && r2 < 0.1).then_some("Pstn");
        match driver
            .presence(meeting, attendee, action, network_type)
            .await
        {
            Ok(()) => {
                seen[k] = after(seen[k], action);
                churned.made += 1;
                on_made(PresenceMade {
                    meeting: meeting.clone(),
                    attendee: attendee.clone(),
                    action,
                    at: Instant::now(),
                });
            }
            Err(e) => {
                seen[k].gone = true;
                churned.failed += 1;
                tracing::debug!(error = %format!("{e:#}"), "a presence change was refused");
            }
        }
    }
}

/// Makes one change that the daemon records as `kind` in the fleet's `m`-th meeting: a join
/// of an attendee named `name`, or the deletion or capability change of the attendee at
/// `index` (modulo the meeting's size). In a meeting with nobody in it, the change is a join.
///
/// # Errors
/// `m` is not a meeting of the fleet, or the service refused the change.
pub async fn change(
    driver: &Driver,
    fleet: &mut Fleet,
    m: usize,
    kind: EventKind,
    index: usize,
    name: String,
) -> anyhow::Result<Made> {
    let meeting = fleet
        .meetings
        .get_mut(m)
        .with_context(|| format!("the fleet has no meeting {m}"))?;
    change_one(driver, meeting, kind, index as u64, &mut || name.clone()).await
}

async fn change_one(
    driver: &Driver,
    meeting: &mut FleetMeeting,
    kind: EventKind,
    pick: u64,
    name: &mut (dyn FnMut() -> String + Send),
) -> anyhow::Result<Made> {
    let len = meeting.attendees.len();
    let kind = if len == 0 { EventKind::Joined } else { kind };
    let i = usize::try_from(pick % len.max(1) as u64)?;
    let made = |attendee, kind| Made {
        meeting: meeting.guid,
        attendee,
        kind,
        at: Instant::now(),
    };
    match kind {
        EventKind::Joined => {
            let created = driver.add_attendees(&meeting.id, [(name(), None)]).await?;
            let first = created
                .first()
                .context("BatchCreateAttendee created nobody")?;
            let a = guid(first.attendee_id.as_str())?;
            let done = made(a, EventKind::Joined);
            meeting.attendees.push(a);
            meeting.listener.push(false);
            Ok(done)
        }
        EventKind::Left => {
            let a = meeting.attendees[i];
            driver
                .delete_attendee(&meeting.id, &attendee_id(a)?)
                .await?;
            let done = made(a, EventKind::Left);
            meeting.attendees.swap_remove(i);
            meeting.listener.swap_remove(i);
            Ok(done)
        }
        EventKind::CapabilitiesChanged => {
            let a = meeting.attendees[i];
            let to = if meeting.listener[i] {
                Capabilities::DEFAULT
            } else {
                LISTENER
            };
            driver
                .set_capabilities(&meeting.id, &attendee_id(a)?, to)
                .await?;
            meeting.listener[i] = !meeting.listener[i];
            Ok(made(a, EventKind::CapabilitiesChanged))
        }
        other => anyhow::bail!("the churn makes roster changes, not {other}"),
    }
}

/// The 128-bit value of a GUID.
///
/// # Errors
/// `s` is not a GUID.
pub fn guid(s: &str) -> anyhow::Result<u128> {
    Ok(uuid::Uuid::parse_str(s)
        .with_context(|| format!("{s:?} is not a GUID"))?
        .as_u128())
}

fn attendee_id(g: u128) -> anyhow::Result<AttendeeId> {
    Ok(AttendeeId::parse(
        &uuid::Uuid::from_u128(g).hyphenated().to_string(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presence_churn_only_picks_actions_a_client_could_make() {
        let mut rng = rand::rng();
        let mut s = Seen::default();
        let mut truth = crate::sim::presence::Truth::default();
        let (m, a) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut seen_actions = std::collections::HashSet::new();
        for i in 0..5000 {
            let action = next_action(s, 0.25, rng.random(), rng.random());
            let at = t0 + chrono::Duration::seconds(i);
            truth
                .apply(m, a, "x", action, None, at)
                .unwrap_or_else(|e| panic!("{action:?} from {s:?}: {e}"));
            s = after(s, action);
            seen_actions.insert(action);
        }
        assert_eq!(
            seen_actions.len(),
            PresenceAction::ALL.len(),
            "every action happens"
        );
    }

    #[test]
    fn a_skew_parses_from_its_name() {
        assert_eq!("uniform".parse::<Skew>(), Ok(Skew::Uniform));
        assert_eq!("zipf:1.0".parse::<Skew>(), Ok(Skew::Zipf(1.0)));
        assert_eq!(Skew::Zipf(1.0).to_string(), "zipf:1");
        for bad in ["zipf", "zipf:-1", "zipf:nan", "pareto:1"] {
            let err = bad.parse::<Skew>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn zipf_picks_the_nth_meeting_about_one_nth_as_often_as_the_first() {
        let picker = Picker::new(Skew::Zipf(1.0), 10);
        let mut rng = rand::rng();
        let mut counts = [0u32; 10];
        for _ in 0..200_000 {
            counts[picker.pick(&mut rng, 10)] += 1;
        }
        // Expected shares 1/n ÷ H(10): 34 % for the first, 3.4 % for the tenth.
        let share = |i: usize| f64::from(counts[i]) / 200_000.0;
        let h10: f64 = (1..=10).map(|n| 1.0 / f64::from(n)).sum();
        for (i, _) in counts.iter().enumerate() {
            let expected = 1.0 / ((i + 1) as f64 * h10);
            assert!(
                (share(i) - expected).abs() < 0.01,
                "{i}: {} vs {expected}",
                share(i)
            );
        }
        let uniform = Picker::new(Skew::Uniform, 10);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[uniform.pick(&mut rng, 10)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }
}
