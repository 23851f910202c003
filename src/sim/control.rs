//! The simulator's control-plane client: create meetings
//! and attendees, delete them, change capabilities, and (on a driver given the simulator's
//! endpoint with [`Driver::with_endpoint`]) make attendees connect, leave, drop, hand off,
//! share video and content, through the simulator's `POST /_sim/presence`. Used by the demo, `roster-bench` and the
//! tests to make the changes roster-sync must notice; the daemon itself never calls these.
//!
//! Join tokens issued on creation are handed back only so tests can prove they are never
//! stored; `Debug` never shows one.

use anyhow::Context;
use aws_sdk_chimesdkmeetings::Client;
use aws_sdk_chimesdkmeetings::types::{
    AttendeeCapabilities, CreateAttendeeRequestItem, MediaCapabilities,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::presence::{MeetingPresence, PresenceAction};
use crate::domain::{AttendeeId, Capabilities, Capability, MeetingId};

/// An attendee the driver created.
#[derive(Clone)]
pub struct Created {
    pub attendee_id: AttendeeId,
    pub external_user_id: String,
    pub join_token: String,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("attendee_id", &self.attendee_id)
            .finish_non_exhaustive()
    }
}

/// Wraps an SDK client for the control operations.
#[derive(Clone, Debug)]
pub struct Driver {
    sdk: Client,
    /// The simulator's `http://host:port`, for the presence controls.
    control: Option<Control>,
}

#[derive(Clone)]
struct Control {
    url: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn media(c: Capability) -> MediaCapabilities {
    MediaCapabilities::from(c.as_str())
}

fn sdk_capabilities(c: Capabilities) -> anyhow::Result<AttendeeCapabilities> {
    AttendeeCapabilities::builder()
        .audio(media(c.audio))
        .video(media(c.video))
        .content(media(c.content))
        .build()
        .context("capabilities")
}

impl Driver {
    pub fn new(sdk: Client) -> Self {
        Self { sdk, control: None }
    }

    /// The same driver, able to use the presence controls of the simulator at `endpoint`
    /// (`http://host:port`, what [`super::SimHandle::endpoint_url`] answers).
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        let http = HttpClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        self.control = Some(Control {
            url: endpoint.trim_end_matches('/').to_owned(),
            http,
        });
        self
    }

    async fn control(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        let c = self
            .control
            .as_ref()
            .context("this driver has no simulator endpoint (Driver::with_endpoint)")?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", c.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building a control request")?;
        let resp = c
            .http
            .request(req)
            .await
            .with_context(|| format!("{path}: no answer"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{path}: reading the answer"))?
            .to_bytes();
        if !status.is_success() {
            anyhow::bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }

    /// Applies one presence control to an attendee now (see [`PresenceAction`]);
    /// `network_type` is for joins (default `Voip`).
    ///
    /// # Errors
    /// No endpoint, or the simulator refused (unknown attendee, joined twice, ...).
    pub async fn presence(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
        action: PresenceAction,
        network_type: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut body = serde_json::json!({
            "meeting_id": meeting.as_str(),
            "attendee_id": attendee.as_str(),
            "action": action,
        });
        if let (Some(n), Some(o)) = (network_type, body.as_object_mut()) {
            o.insert("network_type".into(), n.into());
        }
        self.control(http::Method::POST, "/_sim/presence", Some(body))
            .await
            .map(|_| ())
    }

    /// The attendee connects (`AttendeeJoined`, `Voip`).
    ///
    /// # Errors
    /// As [`Self::presence`].
    pub async fn join(&self, meeting: &MeetingId, attendee: &AttendeeId) -> anyhow::Result<()> {
        self.presence(meeting, attendee, PresenceAction::Join, None)
            .await
    }

    /// The attendee leaves (`AttendeeLeft`).
    ///
    /// # Errors
    /// As [`Self::presence`].
    pub async fn leave(&self, meeting: &MeetingId, attendee: &AttendeeId) -> anyhow::Result<()> {
        self.presence(meeting, attendee, PresenceAction::Leave, None)
            .await
    }

    /// The attendee's connection drops (`AttendeeDropped`).
    ///
    /// # Errors
    /// As [`Self::presence`].
    pub async fn drop_connection(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
    ) -> anyhow::Result<()> {
        self.presence(meeting, attendee, PresenceAction::Drop, None)
            .await
    }

    /// The attendee moves to another device with the same join token (`AttendeeAuthorized`).
    ///
    /// # Errors
    /// As [`Self::presence`].
    pub async fn hand_off(&self, meeting: &MeetingId, attendee: &AttendeeId) -> anyhow::Result<()> {
        self.presence(meeting, attendee, PresenceAction::Handoff, None)
            .await
    }

    /// The simulator's truth of who was connected to `meeting` and when.
    ///
    /// # Errors
    /// No endpoint, an unknown meeting, or an answer that is not the truth's JSON.
    pub async fn presence_truth(&self, meeting: &MeetingId) -> anyhow::Result<MeetingPresence> {
        let bytes = self
            .control(
                http::Method::GET,
                &format!("/_sim/presence/{}", meeting.as_str()),
                None,
            )
            .await?;
        serde_json::from_slice(&bytes).context("the presence truth is not the expected JSON")
    }

    /// # Errors
    /// The service refused or did not answer.
    pub async fn create_meeting(
        &self,
        external_meeting_id: &str,
        media_region: &str,
    ) -> anyhow::Result<MeetingId> {
        let out = self
            .sdk
            .create_meeting()
            .client_request_token(uuid::Uuid::new_v4().to_string())
            .media_region(media_region)
            .external_meeting_id(external_meeting_id)
            .send()
            .await
            .context("CreateMeeting")?;
        let id = out
            .meeting
            .and_then(|m| m.meeting_id)
            .context("CreateMeeting returned no MeetingId")?;
        Ok(MeetingId::parse(&id)?)
    }

    /// Creates attendees (BatchCreateAttendee, 100 per call), each with the given
    /// capabilities or the service default.
    ///
    /// # Errors
    /// The service refused a batch or an attendee in it.
    pub async fn add_attendees(
        &self,
        meeting: &MeetingId,
        people: impl IntoIterator<Item = (String, Option<Capabilities>)>,
    ) -> anyhow::Result<Vec<Created>> {
        let people: Vec<_> = people.into_iter().collect();
        let mut created = Vec::with_capacity(people.len());
        for chunk in people.chunks(100) {
            let mut b = self
                .sdk
                .batch_create_attendee()
                .meeting_id(meeting.as_str());
            for (name, caps) in chunk {
                let mut item = CreateAttendeeRequestItem::builder().external_user_id(name);
                if let Some(c) = caps {
                    item = item.capabilities(sdk_capabilities(*c)?);
                }
                b = b.attendees(item.build().context("attendee request")?);
            }
            let out = b.send().await.context("BatchCreateAttendee")?;
            if let Some(e) = out.errors.as_ref().and_then(|e| e.first()) {
                anyhow::bail!(
                    "BatchCreateAttendee refused {:?}: {:?}",
                    e.error_code,
                    e.error_message
                );
            }
            for a in out.attendees.unwrap_or_default() {
                created.push(Created {
                    attendee_id: AttendeeId::parse(a.attendee_id.as_deref().unwrap_or_default())?,
                    external_user_id: a.external_user_id.unwrap_or_default(),
                    join_token: a.join_token.unwrap_or_default(),
                });
            }
        }
        Ok(created)
    }

    /// # Errors
    /// The service refused or did not answer.
    pub async fn delete_attendee(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
    ) -> anyhow::Result<()> {
        self.sdk
            .delete_attendee()
            .meeting_id(meeting.as_str())
            .attendee_id(attendee.as_str())
            .send()
            .await
            .context("DeleteAttendee")?;
        Ok(())
    }

    /// # Errors
    /// The service refused (e.g. content receive without video receive) or did not answer.
    pub async fn set_capabilities(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
        caps: Capabilities,
    ) -> anyhow::Result<()> {
        self.sdk
            .update_attendee_capabilities()
            .meeting_id(meeting.as_str())
            .attendee_id(attendee.as_str())
            .capabilities(sdk_capabilities(caps)?)
            .send()
            .await
            .context("UpdateAttendeeCapabilities")?;
        Ok(())
    }

    /// # Errors
    /// The service refused or did not answer.
    pub async fn delete_meeting(&self, meeting: &MeetingId) -> anyhow::Result<()> {
        self.sdk
            .delete_meeting()
            .meeting_id(meeting.as_str())
            .send()
            .await
            .context("DeleteMeeting")?;
        Ok(())
    }

    /// The attendee ids currently listed (all pages).
    ///
    /// # Errors
    /// The service refused or did not answer.
    pub async fn attendee_ids(&self, meeting: &MeetingId) -> anyhow::Result<Vec<AttendeeId>> {
        let mut ids = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .sdk
                .list_attendees()
                .meeting_id(meeting.as_str())
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .context("ListAttendees")?;
            for a in out.attendees.unwrap_or_default() {
                ids.push(AttendeeId::parse(
                    a.attendee_id.as_deref().unwrap_or_default(),
                )?);
            }
            token = out.next_token;
            if token.is_none() {
                return Ok(ids);
            }
        }
    }
}
