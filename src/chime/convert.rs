//! SDK answers into domain values: a `ListAttendees` page into [`Attendee`]s and a NextToken,
//! a `GetAttendee` answer into an [`Attendee`].
//!
//! This is where the JoinToken is dropped: it goes out of scope with the SDK value, and no
//! type returned from here can hold it. A value that is not what the model promises fails as
//! [`ChimeError::Malformed`], which never quotes the answer.

use aws_sdk_chimesdkmeetings as chime;

use super::{ChimeError, Result};
use crate::domain::{Attendee, AttendeeId, Capabilities, Capability, ExternalUserId};

/// One converted page. The SDK's attendee values, JoinToken included, are dropped here.
pub(super) struct Page {
    pub attendees: Vec<Attendee>,
    pub next_token: Option<String>,
}

pub(super) fn parse_page(
    out: chime::operation::list_attendees::ListAttendeesOutput,
) -> Result<Page> {
    let next_token = out.next_token.filter(|t| !t.is_empty());
    let attendees = out
        .attendees
        .unwrap_or_default()
        .into_iter()
        .map(convert_attendee)
        .collect::<Result<Vec<_>>>()?;
    Ok(Page {
        attendees,
        next_token,
    })
}

/// Keeps what roster-sync records; the JoinToken goes out of scope with `a`.
pub(super) fn convert_attendee(a: chime::types::Attendee) -> Result<Attendee> {
    let malformed = |message: String| ChimeError::Malformed { message };
    let attendee_id = a
        .attendee_id
        .ok_or_else(|| malformed("an attendee has no AttendeeId".into()))
        .and_then(|id| AttendeeId::parse_owned(id).map_err(|e| malformed(e.to_string())))?;
    let external_user_id = a
        .external_user_id
        .ok_or_else(|| malformed(format!("attendee {attendee_id} has no ExternalUserId")))?;
    let capabilities = match a.capabilities {
        // The service gives attendees created without capabilities all three SendReceive.
        None => Capabilities::DEFAULT,
        Some(c) => Capabilities {
            audio: capability(c.audio(), "Audio", &attendee_id)?,
            video: capability(c.video(), "Video", &attendee_id)?,
            content: capability(c.content(), "Content", &attendee_id)?,
        },
    };
    Ok(Attendee {
        attendee_id,
        external_user_id: ExternalUserId::new(external_user_id),
        capabilities,
    })
}

fn capability(
    c: &chime::types::MediaCapabilities,
    which: &str,
    attendee: &AttendeeId,
) -> Result<Capability> {
    c.as_str().parse().map_err(|_| ChimeError::Malformed {
        message: format!(
            "attendee {attendee} has {which} capability {:?}",
            c.as_str()
        ),
    })
}
