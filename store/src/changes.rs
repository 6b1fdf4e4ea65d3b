//! The row changes the projector's fold produces from events: the store's write vocabulary.
//! Each one names the rule of SPEC §2 "Folding rules" it carries out, and each is
//! idempotent and commutative.

use agora_eventlog::Partition;
use agora_schemas::FiscalYear;

/// A consultation field that `consultation.updated` may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsultationField {
    TitleFr,
    TitleEn,
    HostedOn,
    Methods,
}

impl ConsultationField {
    /// Returns the field's contract name.
    pub fn name(self) -> &'static str {
        match self {
            ConsultationField::TitleFr => "title_fr",
            ConsultationField::TitleEn => "title_en",
            ConsultationField::HostedOn => "hosted_on",
            ConsultationField::Methods => "methods",
        }
    }
}

/// One change to the read models. `at_ms` is `occurred_at` in epoch milliseconds; with
/// `event_id` it orders events as the folding rules say.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// A `consultation.opened`: the earliest one is the opening.
    Opening {
        consultation_id: String,
        organization_id: String,
        at_ms: i64,
        event_id: String,
        fiscal_year: FiscalYear,
        title_fr: String,
        title_en: Option<String>,
        hosted_on: String,
        methods: Vec<String>,
        digital: bool,
    },
    /// One field set by a `consultation.updated`: the latest setter wins.
    FieldSet {
        consultation_id: String,
        field: ConsultationField,
        at_ms: i64,
        event_id: String,
        /// The value; for `methods`, its JSON array.
        value: String,
        /// For `methods`: whether they include a digital method.
        digital: Option<bool>,
    },
    /// A `consultation.closed`: the earliest counts.
    Closed { consultation_id: String, at_ms: i64 },
    /// A `consultation.cancelled`.
    Cancelled { consultation_id: String },
    /// A `consultation.results_published`: the earliest counts.
    ResultsPublished { consultation_id: String, at_ms: i64 },
    /// A `participant.visited`: a (consultation, participant) set member.
    Visit { consultation_id: String, participant: String },
    /// A `contribution.submitted`: one per `contribution_id`, the earliest if repeated.
    Contribution { contribution_id: String, consultation_id: String, participant: String, kind: String, at_ms: i64, event_id: String },
    /// A `contribution.withdrawn`: withdraws the contribution whenever it arrives.
    Withdrawal { contribution_id: String },
    /// A `feedback.submitted`: the latest per (participant, scope, fiscal year) counts.
    Feedback {
        participant: String,
        /// The consultation named, or empty for the platform.
        scope: String,
        fiscal_year: FiscalYear,
        organization_id: String,
        satisfaction: u8,
        has_suggestion: bool,
        at_ms: i64,
        event_id: String,
    },
    /// The free text of a suggestion, kept apart from the analytics tables.
    SuggestionText { feedback_event_id: String, text: String },
    /// A `suggestion.triaged`: the latest sets the status.
    Triage { feedback_event_id: String, status: String, at_ms: i64, event_id: String },
}

/// A record the projector could not apply, kept with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub partition: Partition,
    pub offset: i64,
    pub reason: String,
    pub payload: Vec<u8>,
}
