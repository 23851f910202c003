//! The awsJson1_0 request and response members of the SQS operations the simulator serves
//! (service model `sqs/2012-11-05`), spelled as the model spells them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateQueueIn {
    pub(crate) queue_name: Option<String>,
    #[serde(default)]
    pub(crate) attributes: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetQueueUrlIn {
    pub(crate) queue_name: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct QueueUrlOut {
    pub(crate) queue_url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct QueueUrlIn {
    pub(crate) queue_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ReceiveMessageIn {
    pub(crate) queue_url: Option<String>,
    #[serde(default)]
    pub(crate) attribute_names: Vec<String>,
    #[serde(default)]
    pub(crate) message_system_attribute_names: Vec<String>,
    pub(crate) max_number_of_messages: Option<i64>,
    pub(crate) visibility_timeout: Option<i64>,
    pub(crate) wait_time_seconds: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MessageOut {
    #[serde(rename = "MessageId")]
    pub(crate) message_id: String,
    #[serde(rename = "ReceiptHandle")]
    pub(crate) receipt_handle: String,
    #[serde(rename = "MD5OfBody")]
    pub(crate) md5_of_body: String,
    #[serde(rename = "Body")]
    pub(crate) body: String,
    #[serde(rename = "Attributes", skip_serializing_if = "HashMap::is_empty")]
    pub(crate) attributes: HashMap<&'static str, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ReceiveMessageOut {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) messages: Vec<MessageOut>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteMessageIn {
    pub(crate) queue_url: Option<String>,
    pub(crate) receipt_handle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ChangeVisibilityIn {
    pub(crate) queue_url: Option<String>,
    pub(crate) receipt_handle: Option<String>,
    pub(crate) visibility_timeout: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendMessageIn {
    pub(crate) queue_url: Option<String>,
    pub(crate) message_body: Option<String>,
    pub(crate) delay_seconds: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SendMessageOut {
    #[serde(rename = "MessageId")]
    pub(crate) message_id: String,
    #[serde(rename = "MD5OfMessageBody")]
    pub(crate) md5_of_message_body: String,
}

/// One entry of any of the three batch operations; each reads the members it needs.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchEntryIn {
    pub(crate) id: Option<String>,
    pub(crate) receipt_handle: Option<String>,
    pub(crate) visibility_timeout: Option<i64>,
    pub(crate) message_body: Option<String>,
    pub(crate) delay_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchIn {
    pub(crate) queue_url: Option<String>,
    pub(crate) entries: Option<Vec<BatchEntryIn>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchSuccess {
    #[serde(rename = "Id")]
    pub(crate) id: String,
    #[serde(rename = "MessageId", skip_serializing_if = "Option::is_none")]
    pub(crate) message_id: Option<String>,
    #[serde(rename = "MD5OfMessageBody", skip_serializing_if = "Option::is_none")]
    pub(crate) md5_of_message_body: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchFailure {
    pub(crate) id: String,
    pub(crate) sender_fault: bool,
    pub(crate) code: String,
    pub(crate) message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchOut {
    pub(crate) successful: Vec<BatchSuccess>,
    pub(crate) failed: Vec<BatchFailure>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetQueueAttributesIn {
    pub(crate) queue_url: Option<String>,
    #[serde(default)]
    pub(crate) attribute_names: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetQueueAttributesOut {
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub(crate) attributes: HashMap<String, String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrorOut<'a> {
    #[serde(rename = "__type")]
    pub(crate) error_type: String,
    pub(crate) message: &'a str,
}
