//! The pure fold of SPEC §2 "Folding rules": one event in, the row changes it makes out.
//! No I/O and no state: what makes the result independent of arrival order and of repeats
//! is that every change is idempotent and commutative in the store (see `agora-store`).

use agora_schemas::rules::is_digital_method;
use agora_schemas::{Event, EventBody, FiscalYear};
use agora_store::{ConsultationField, RowChange};

/// An event that decodes but cannot be applied (it lacks what its type needs).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{type_name} without {field}")]
pub struct FoldError {
    pub type_name: &'static str,
    pub field: &'static str,
}

/// Returns the row changes one event makes.
pub fn fold(event: &Event) -> Result<Vec<RowChange>, FoldError> {
    let at_ms = event.occurred_at_ms();
    let event_id = || event.event_id.clone();
    let missing = |field| FoldError { type_name: event.type_name(), field };
    let consultation = || event.consultation_id.clone().ok_or(missing("consultation_id"));
    let participant = || event.participant_id.clone().ok_or(missing("participant_id"));
    let changes = match &event.body {
        EventBody::ConsultationOpened { title_fr, title_en, hosted_on, methods } => vec![RowChange::Opening {
            consultation_id: consultation()?,
            organization_id: event.organization_id.clone(),
            at_ms,
            event_id: event_id(),
            fiscal_year: FiscalYear::of_instant(&event.occurred_at),
            title_fr: title_fr.clone(),
            title_en: title_en.clone(),
            hosted_on: hosted_on.clone(),
            methods: methods.clone(),
            digital: offers_digital(methods),
        }],
        EventBody::ConsultationUpdated { title_fr, title_en, hosted_on, methods } => {
            let consultation_id = consultation()?;
            let set = |field, value: String, digital| RowChange::FieldSet {
                consultation_id: consultation_id.clone(),
                field,
                at_ms,
                event_id: event_id(),
                value,
                digital,
            };
            let mut changes = Vec::new();
            if let Some(v) = title_fr {
                changes.push(set(ConsultationField::TitleFr, v.clone(), None));
            }
            if let Some(v) = title_en {
                changes.push(set(ConsultationField::TitleEn, v.clone(), None));
            }
            if let Some(v) = hosted_on {
                changes.push(set(ConsultationField::HostedOn, v.clone(), None));
            }
            if let Some(v) = methods {
                let json = serde_json::to_string(v).expect("strings serialize");
                changes.push(set(ConsultationField::Methods, json, Some(offers_digital(v))));
            }
            changes
        }
        EventBody::ConsultationClosed {} => vec![RowChange::Closed { consultation_id: consultation()?, at_ms }],
        EventBody::ConsultationCancelled { .. } => vec![RowChange::Cancelled { consultation_id: consultation()? }],
        EventBody::ResultsPublished { .. } => vec![RowChange::ResultsPublished { consultation_id: consultation()?, at_ms }],
        EventBody::ParticipantVisited { .. } => {
            vec![RowChange::Visit { consultation_id: consultation()?, participant: participant()? }]
        }
        EventBody::ContributionSubmitted { contribution_id, kind } => vec![RowChange::Contribution {
            contribution_id: contribution_id.clone(),
            consultation_id: consultation()?,
            participant: participant()?,
            kind: kind.clone(),
            at_ms,
            event_id: event_id(),
        }],
        EventBody::ContributionWithdrawn { contribution_id, .. } => {
            vec![RowChange::Withdrawal { contribution_id: contribution_id.clone() }]
        }
        EventBody::FeedbackSubmitted { satisfaction, suggestion } => {
            let suggestion = suggestion.as_deref().map(str::trim).filter(|s| !s.is_empty());
            let mut changes = vec![RowChange::Feedback {
                participant: participant()?,
                scope: event.consultation_id.clone().unwrap_or_default(),
                fiscal_year: FiscalYear::of_instant(&event.occurred_at),
                organization_id: event.organization_id.clone(),
                satisfaction: *satisfaction,
                has_suggestion: suggestion.is_some(),
                at_ms,
                event_id: event_id(),
            }];
            if let Some(text) = suggestion {
                changes.push(RowChange::SuggestionText { feedback_event_id: event_id(), text: text.to_owned() });
            }
            changes
        }
        EventBody::SuggestionTriaged { feedback_event_id, status } => {
            vec![RowChange::Triage { feedback_event_id: feedback_event_id.clone(), status: status.clone(), at_ms, event_id: event_id() }]
        }
    };
    Ok(changes)
}

fn offers_digital(methods: &[String]) -> bool {
    methods.iter().any(|m| is_digital_method(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: serde_json::Value) -> Event {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn splits_an_update_into_one_register_per_field() {
        let changes = fold(&event(json!({
            "event_id": "00000000-0000-0000-0000-000000000001", "type": "consultation.updated", "schema_version": 1,
            "occurred_at": "2021-05-01T10:00:00Z", "organization_id": "MSSS", "consultation_id": "c1",
            "data": {"hosted_on": "platform", "methods": ["phone", "online_vote"]}
        })))
        .unwrap();
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[1], RowChange::FieldSet { field: ConsultationField::Methods, digital: Some(true), .. }));
    }

    #[test]
    fn keeps_only_non_blank_suggestions_and_dates_feedback_by_its_own_fiscal_year() {
        let changes = fold(&event(json!({
            "event_id": "00000000-0000-0000-0000-000000000002", "type": "feedback.submitted", "schema_version": 1,
            "occurred_at": "2022-04-01T03:30:00Z", "organization_id": "MSSS", "participant_id": "p",
            "data": {"satisfaction": 4, "suggestion": "   "}
        })))
        .unwrap();
        assert_eq!(changes.len(), 1);
        match &changes[0] {
            RowChange::Feedback { fiscal_year, has_suggestion, scope, .. } => {
                assert_eq!(fiscal_year.to_string(), "2021-2022");
                assert!(!has_suggestion);
                assert_eq!(scope, "");
            }
            other => panic!("unexpected change {other:?}"),
        }
    }

    #[test]
    fn refuses_a_participation_event_without_its_consultation() {
        let err = fold(&event(json!({
            "event_id": "00000000-0000-0000-0000-000000000003", "type": "participant.visited", "schema_version": 1,
            "occurred_at": "2022-04-01T03:30:00Z", "organization_id": "MSSS", "participant_id": "p",
            "data": {"channel": "web"}
        })))
        .unwrap_err();
        assert_eq!(err.field, "consultation_id");
    }
}
