//! The typed v1 event, as it is written to the event log after validation and
//! pseudonymization, and read back by the projector and the audit.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// One accepted event. `participant_id`, once in the log, is the keyed pseudonym, never the
/// platform's identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<FixedOffset>,
    pub organization_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consultation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// Returns `occurred_at` as milliseconds since the Unix epoch, the instant by which the
    /// folding rules order events.
    pub fn occurred_at_ms(&self) -> i64 {
        self.occurred_at.timestamp_millis()
    }

    /// Returns the event type name of SPEC §2.
    pub fn type_name(&self) -> &'static str {
        self.body.type_name()
    }
}

/// The type-specific part of an event: `type` and `data` of the envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventBody {
    #[serde(rename = "consultation.opened")]
    ConsultationOpened {
        title_fr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title_en: Option<String>,
        hosted_on: String,
        methods: Vec<String>,
    },
    #[serde(rename = "consultation.updated")]
    ConsultationUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title_fr: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title_en: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hosted_on: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
    },
    #[serde(rename = "consultation.closed")]
    ConsultationClosed {},
    #[serde(rename = "consultation.cancelled")]
    ConsultationCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "consultation.results_published")]
    ResultsPublished {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report_url: Option<String>,
    },
    #[serde(rename = "participant.visited")]
    ParticipantVisited { channel: String },
    #[serde(rename = "contribution.submitted")]
    ContributionSubmitted { contribution_id: String, kind: String },
    #[serde(rename = "contribution.withdrawn")]
    ContributionWithdrawn { contribution_id: String, reason: String },
    #[serde(rename = "feedback.submitted")]
    FeedbackSubmitted {
        satisfaction: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suggestion: Option<String>,
    },
    #[serde(rename = "suggestion.triaged")]
    SuggestionTriaged { feedback_event_id: String, status: String },
}

impl EventBody {
    /// Returns the event type name of SPEC §2.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::ConsultationOpened { .. } => "consultation.opened",
            EventBody::ConsultationUpdated { .. } => "consultation.updated",
            EventBody::ConsultationClosed {} => "consultation.closed",
            EventBody::ConsultationCancelled { .. } => "consultation.cancelled",
            EventBody::ResultsPublished { .. } => "consultation.results_published",
            EventBody::ParticipantVisited { .. } => "participant.visited",
            EventBody::ContributionSubmitted { .. } => "contribution.submitted",
            EventBody::ContributionWithdrawn { .. } => "contribution.withdrawn",
            EventBody::FeedbackSubmitted { .. } => "feedback.submitted",
            EventBody::SuggestionTriaged { .. } => "suggestion.triaged",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_log_format() {
        let raw = serde_json::json!({
            "event_id": "0b7c6d3e-7a57-4c43-9a2a-3f1a6d1c9e01",
            "type": "consultation.opened",
            "schema_version": 1,
            "occurred_at": "2021-05-01T10:00:00.123-04:00",
            "organization_id": "MSSS",
            "consultation_id": "c-1",
            "data": {"title_fr": "Titre", "hosted_on": "platform", "methods": ["online_survey"]}
        });
        let event: Event = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(event.type_name(), "consultation.opened");
        assert_eq!(serde_json::to_value(&event).unwrap(), raw);
        let closed: Event = serde_json::from_value(serde_json::json!({
            "event_id": "0b7c6d3e-7a57-4c43-9a2a-3f1a6d1c9e02", "type": "consultation.closed",
            "schema_version": 1, "occurred_at": "2021-05-01T10:00:00Z", "organization_id": "MSSS",
            "consultation_id": "c-1", "data": {}
        }))
        .unwrap();
        assert_eq!(closed.body, EventBody::ConsultationClosed {});
        assert_eq!(serde_json::to_value(&closed).unwrap()["data"], serde_json::json!({}));
    }
}
