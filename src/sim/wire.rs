//! JSON shapes of the simulated operations, member names exactly as the service model
//! (`chime-sdk-meetings/2021-07-15`) spells them, and the model's input constraints.
//!
//! Request members are `Option`s so a missing required member gets a message naming it.
//! Nothing here may hold or print a JoinToken except [`AttendeeOut`], which is only ever
//! serialized into a response body.

use serde::{Deserialize, Serialize};

use crate::domain::{Capabilities, Capability};

/// `AttendeeCapabilities` in a request: all three members are required when it is present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CapabilitiesIn {
    audio: Option<Capability>,
    video: Option<Capability>,
    content: Option<Capability>,
}

impl CapabilitiesIn {
    /// # Errors
    /// A message for a 400 when a member is missing or the content rule is broken.
    pub(crate) fn validate(&self) -> Result<Capabilities, String> {
        let need = |c: Option<Capability>, name: &str| {
            c.ok_or_else(|| format!("Capabilities.{name} is required"))
        };
        let caps = Capabilities {
            audio: need(self.audio, "Audio")?,
            video: need(self.video, "Video")?,
            content: need(self.content, "Content")?,
        };
        if caps.is_allowed() {
            Ok(caps)
        } else {
            Err(format!(
                "Content capability {} requires Video capability SendReceive or Receive, not {}",
                caps.content, caps.video
            ))
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CapabilitiesOut {
    audio: Capability,
    video: Capability,
    content: Capability,
}

impl From<Capabilities> for CapabilitiesOut {
    fn from(c: Capabilities) -> Self {
        Self {
            audio: c.audio,
            video: c.video,
            content: c.content,
        }
    }
}

/// `Attendee`. The only shape that carries a JoinToken; it is serialized, never logged.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AttendeeOut {
    pub(crate) external_user_id: String,
    pub(crate) attendee_id: String,
    pub(crate) join_token: String,
    pub(crate) capabilities: CapabilitiesOut,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateAttendeeIn {
    pub(crate) external_user_id: Option<String>,
    pub(crate) capabilities: Option<CapabilitiesIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchCreateAttendeeIn {
    pub(crate) attendees: Option<Vec<CreateAttendeeIn>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateCapabilitiesIn {
    pub(crate) capabilities: Option<CapabilitiesIn>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AttendeeResponse {
    pub(crate) attendee: AttendeeOut,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchCreateAttendeeResponse {
    pub(crate) attendees: Vec<AttendeeOut>,
    pub(crate) errors: Vec<CreateAttendeeError>,
}

/// `CreateAttendeeError`: one refused item of a BatchCreateAttendee.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateAttendeeError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) external_user_id: Option<String>,
    pub(crate) error_code: String,
    pub(crate) error_message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListAttendeesResponse {
    pub(crate) attendees: Vec<AttendeeOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateMeetingIn {
    pub(crate) client_request_token: Option<String>,
    pub(crate) media_region: Option<String>,
    pub(crate) meeting_host_id: Option<String>,
    pub(crate) external_meeting_id: Option<String>,
    pub(crate) meeting_features: Option<MeetingFeatures>,
    pub(crate) primary_meeting_id: Option<String>,
    pub(crate) tenant_ids: Option<Vec<String>>,
    // NotificationsConfiguration, Tags and MediaPlacementNetworkType are accepted and ignored.
}

/// `MeetingFeaturesConfiguration`, kept and echoed back. `Attendee.MaxCount` lowers the
/// meeting's attendee limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MeetingFeatures {
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<AudioFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    video: Option<VideoFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<ContentFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attendee: Option<AttendeeFeatures>,
}

impl MeetingFeatures {
    pub(crate) fn max_attendees(&self) -> Option<u32> {
        self.attendee.as_ref().and_then(|a| a.max_count)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AudioFeatures {
    #[serde(skip_serializing_if = "Option::is_none")]
    echo_reduction: Option<FeatureStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum FeatureStatus {
    AVAILABLE,
    UNAVAILABLE,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VideoFeatures {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_resolution: Option<VideoResolution>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum VideoResolution {
    None,
    HD,
    FHD,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContentFeatures {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_resolution: Option<ContentResolution>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum ContentResolution {
    None,
    FHD,
    UHD,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttendeeFeatures {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_count: Option<u32>,
}

/// `Meeting`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MeetingOut {
    pub(crate) meeting_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meeting_host_id: Option<String>,
    pub(crate) external_meeting_id: String,
    pub(crate) media_region: String,
    pub(crate) media_placement: MediaPlacement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meeting_features: Option<MeetingFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) primary_meeting_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tenant_ids: Option<Vec<String>>,
    pub(crate) meeting_arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MeetingResponse {
    pub(crate) meeting: MeetingOut,
}

/// `MediaPlacement`. The hosts are under `.invalid` (RFC 2606): they look like the real
/// thing to a client that only stores them, and can never reach a real media service.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MediaPlacement {
    audio_host_url: String,
    audio_fallback_url: String,
    signaling_url: String,
    turn_control_url: String,
    screen_data_url: String,
    screen_viewing_url: String,
    screen_sharing_url: String,
    event_ingestion_url: String,
}

impl MediaPlacement {
    pub(crate) fn new(meeting_id: &str, region: &str) -> Self {
        let host = format!("{region}.chime-sim.invalid");
        Self {
            audio_host_url: format!("{}.k.{host}:3478", &meeting_id[..8.min(meeting_id.len())]),
            audio_fallback_url: format!("wss://haxrp.{host}:443/calls/{meeting_id}"),
            signaling_url: format!("wss://signal.{host}/control/{meeting_id}"),
            turn_control_url: format!("https://turn.{host}/v2/turn_sessions"),
            screen_data_url: format!("wss://bitpw.{host}:443/v2/screen/{meeting_id}"),
            screen_viewing_url: format!(
                "wss://bitpw.{host}:443/ws/connect?passcode=null&viewer_uuid=null&X-BitHub-Call-Id={meeting_id}"
            ),
            screen_sharing_url: format!("wss://bitpw.{host}:443/v2/screen/{meeting_id}"),
            event_ingestion_url: format!("https://data.svc.{host}/v1/client-events"),
        }
    }
}

/// The JSON error body; the type travels in `x-amzn-ErrorType`. Only a scripted fault
/// leaves `Code` out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<&'a str>,
    pub(crate) message: &'a str,
    pub(crate) request_id: &'a str,
}

/// Length in characters (the model counts characters, not bytes).
fn char_len_within(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.chars().count())
}

/// `ExternalUserId`: 2..=64 characters of the documented pattern
/// `[-_&@+=,(){}\[\]\/«».:|'"#a-zA-Z0-9À-ÿ\s]*`, not starting with the reserved `aws:`
/// (case-insensitive).
///
/// # Errors
/// The message for a 400.
pub(crate) fn validate_external_user_id(s: &str) -> Result<(), String> {
    if !char_len_within(s, 2, 64) {
        return Err("ExternalUserId must be 2 to 64 characters long".to_owned());
    }
    if s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
        return Err("ExternalUserId must not start with the reserved prefix aws:".to_owned());
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || "-_&@+=,(){}[]/«».:|'\"#".contains(c)
            || ('\u{C0}'..='\u{FF}').contains(&c)
            || matches!(c, ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r')
    };
    match s.chars().find(|c| !allowed(*c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "ExternalUserId contains a character that is not allowed: {c:?}"
        )),
    }
}

/// # Errors
/// The message for a 400 naming the first missing or invalid member.
pub(crate) fn validate_create_meeting(m: &CreateMeetingIn) -> Result<(), String> {
    let required = |v: &Option<String>, name: &str| match v {
        Some(s) => Ok(s.clone()),
        None => Err(format!("{name} is required")),
    };
    let token = required(&m.client_request_token, "ClientRequestToken")?;
    if !char_len_within(&token, 2, 64)
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("ClientRequestToken must be 2 to 64 characters of [-_a-zA-Z0-9]".to_owned());
    }
    let region = required(&m.media_region, "MediaRegion")?;
    let region_shape = region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !char_len_within(&region, 2, 64) || !region_shape || !region.contains('-') {
        return Err(format!("MediaRegion {region:?} is not a region name"));
    }
    let external = required(&m.external_meeting_id, "ExternalMeetingId")?;
    if !char_len_within(&external, 2, 64) {
        return Err("ExternalMeetingId must be 2 to 64 characters long".to_owned());
    }
    for (v, name) in [
        (&m.meeting_host_id, "MeetingHostId"),
        (&m.primary_meeting_id, "PrimaryMeetingId"),
    ] {
        if v.as_ref().is_some_and(|s| !char_len_within(s, 2, 64)) {
            return Err(format!("{name} must be 2 to 64 characters long"));
        }
    }
    let max = m
        .meeting_features
        .as_ref()
        .and_then(MeetingFeatures::max_attendees);
    if max.is_some_and(|n| !(1..=250).contains(&n)) {
        return Err("MeetingFeatures.Attendee.MaxCount must be 1 to 250".to_owned());
    }
    if let Some(ids) = &m.tenant_ids {
        if !(1..=5).contains(&ids.len()) {
            return Err("TenantIds must hold 1 to 5 items".to_owned());
        }
        if let Some(bad) = ids.iter().find(|t| !valid_tenant_id(t)) {
            return Err(format!(
                "TenantId {bad:?} does not match the required pattern"
            ));
        }
    }
    Ok(())
}

/// `^(?!.*?(.)\1{3})[-_!@#$a-zA-Z0-9]*$`, 2..=256: no character four times in a row.
fn valid_tenant_id(t: &str) -> bool {
    let b = t.as_bytes();
    (2..=256).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_!@#$".contains(c))
        && !b.windows(4).any(|w| w.iter().all(|c| *c == w[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_user_id_counts_characters_not_bytes() {
        assert!(validate_external_user_id(&"é".repeat(64)).is_ok());
        assert!(validate_external_user_id(&"é".repeat(65)).is_err());
        assert!(validate_external_user_id("a").is_err());
    }

    #[test]
    fn external_user_id_allows_the_documented_characters() {
        assert!(validate_external_user_id("Zoë «O'Brien» [admin] #1, x@y.z/w|v: \"q\"").is_ok());
        assert!(validate_external_user_id("emoji 🙂").is_err());
        assert!(validate_external_user_id("semi;colon").is_err());
    }

    #[test]
    fn external_user_id_refuses_the_reserved_prefix_in_any_case() {
        assert!(validate_external_user_id("aws:x").is_err());
        assert!(validate_external_user_id("AwS:x").is_err());
        assert!(validate_external_user_id("xaws:").is_ok());
    }

    #[test]
    fn tenant_ids_refuse_four_repeats() {
        assert!(valid_tenant_id("ab-cd"));
        assert!(valid_tenant_id("aaab"));
        assert!(!valid_tenant_id("aaaab"));
        assert!(!valid_tenant_id("a b"));
    }

    #[test]
    fn capabilities_need_all_three_members_and_the_content_rule() {
        let parse = |s: &str| {
            serde_json::from_str::<CapabilitiesIn>(s)
                .unwrap()
                .validate()
        };
        assert!(parse(r#"{"Audio":"Send","Video":"None","Content":"Send"}"#).is_ok());
        assert!(
            parse(r#"{"Audio":"Send","Video":"None"}"#)
                .unwrap_err()
                .contains("Content")
        );
        assert!(parse(r#"{"Audio":"Send","Video":"Send","Content":"Receive"}"#).is_err());
        assert!(serde_json::from_str::<CapabilitiesIn>(r#"{"Audio":"Loud"}"#).is_err());
    }
}
