//! The declarative rules of SPEC §2: which envelope fields each event type needs and which
//! `data` fields it takes, under which constraint. The validator and the JSON Schema
//! documents are both generated from these tables, so they cannot drift apart.

/// Digital participation methods (SPEC §2, "Method codes").
pub const DIGITAL_METHODS: &[&str] =
    &["online_survey", "online_comments", "online_proposals", "online_vote", "online_brief", "virtual_meeting"];

/// Non-digital participation methods.
pub const NON_DIGITAL_METHODS: &[&str] = &["in_person_meeting", "paper_brief", "phone", "mail"];

/// Kinds of contribution, in the order they are reported.
pub const CONTRIBUTION_KINDS: &[&str] = &["comment", "survey_response", "proposal", "vote", "brief"];

/// Where a consultation is hosted.
pub const HOSTED_ON: &[&str] = &["platform", "third_party"];

/// Statuses of a triaged suggestion.
pub const TRIAGE_STATUSES: &[&str] = &["under_review", "planned", "implemented", "declined"];

/// Returns whether `code` is a known method code.
pub fn is_method(code: &str) -> bool {
    DIGITAL_METHODS.contains(&code) || NON_DIGITAL_METHODS.contains(&code)
}

/// Returns whether `code` is a digital method code.
pub fn is_digital_method(code: &str) -> bool {
    DIGITAL_METHODS.contains(&code)
}

/// Characters an identifier may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `A-Z a-z 0-9 _ -`
    Identifier,
    /// `A-Z a-z 0-9 _ - .`
    IdentifierWithDot,
}

impl Charset {
    /// Returns whether `c` belongs to the set.
    pub fn allows(self, c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_' || c == '-' || (self == Charset::IdentifierWithDot && c == '.')
    }

    /// Returns the set as a JSON Schema regular expression character class.
    pub fn pattern(self) -> &'static str {
        match self {
            Charset::Identifier => "^[A-Za-z0-9_-]*$",
            Charset::IdentifierWithDot => "^[A-Za-z0-9_.-]*$",
        }
    }

    /// Returns the set as people read it in an error message.
    pub fn describe(self) -> &'static str {
        match self {
            Charset::Identifier => "A-Z a-z 0-9 _ -",
            Charset::IdentifierWithDot => "A-Z a-z 0-9 _ - .",
        }
    }
}

/// The constraint on one field's value.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// A string of `min..=max` Unicode characters, optionally from a character set.
    Text { min: usize, max: usize, charset: Option<Charset> },
    /// One of a fixed list of strings.
    OneOf(&'static [&'static str]),
    /// A non-empty array of distinct method codes.
    Methods,
    /// An integer in `min..=max`.
    Integer { min: i64, max: i64 },
    /// A UUID in canonical 8-4-4-4-12 form (upper-case hex accepted, lower-cased).
    Uuid,
}

/// One `data` field of an event type.
#[derive(Debug, Clone, Copy)]
pub struct DataField {
    pub name: &'static str,
    pub rule: Rule,
    pub required: bool,
}

/// Whether an envelope field must, may or must not be present for a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    Forbidden,
}

/// The rules of one event type.
#[derive(Debug, Clone, Copy)]
pub struct TypeRules {
    pub name: &'static str,
    pub consultation_id: Presence,
    pub participant_id: Presence,
    pub data: &'static [DataField],
    /// `consultation.updated`: at least one data field must be set.
    pub at_least_one_field: bool,
}

const TITLE: Rule = Rule::Text { min: 1, max: 500, charset: None };
const CONTRIBUTION_ID: Rule = Rule::Text { min: 1, max: 128, charset: None };

const fn field(name: &'static str, rule: Rule, required: bool) -> DataField {
    DataField { name, rule, required }
}

/// Envelope: `organization_id`.
pub const ORGANIZATION_ID: Rule = Rule::Text { min: 2, max: 64, charset: Some(Charset::Identifier) };
/// Envelope: `consultation_id`.
pub const CONSULTATION_ID: Rule = Rule::Text { min: 1, max: 128, charset: Some(Charset::IdentifierWithDot) };
/// Envelope: `participant_id`.
pub const PARTICIPANT_ID: Rule = Rule::Text { min: 1, max: 256, charset: None };

/// The names of the envelope fields, in contract order.
pub const ENVELOPE_FIELDS: &[&str] =
    &["event_id", "type", "schema_version", "occurred_at", "organization_id", "consultation_id", "participant_id", "data"];

/// The current (and only) schema version.
pub const SCHEMA_VERSION: i64 = 1;

/// Every v1 event type with its rules.
pub const TYPES: &[TypeRules] = &[
    TypeRules {
        name: "consultation.opened",
        consultation_id: Presence::Required,
        participant_id: Presence::Forbidden,
        data: &[
            field("title_fr", TITLE, true),
            field("title_en", TITLE, false),
            field("hosted_on", Rule::OneOf(HOSTED_ON), true),
            field("methods", Rule::Methods, true),
        ],
        at_least_one_field: false,
    },
    TypeRules {
        name: "consultation.updated",
        consultation_id: Presence::Required,
        participant_id: Presence::Forbidden,
        data: &[
            field("title_fr", TITLE, false),
            field("title_en", TITLE, false),
            field("hosted_on", Rule::OneOf(HOSTED_ON), false),
            field("methods", Rule::Methods, false),
        ],
        at_least_one_field: true,
    },
    TypeRules {
        name: "consultation.closed",
        consultation_id: Presence::Required,
        participant_id: Presence::Forbidden,
        data: &[],
        at_least_one_field: false,
    },
    TypeRules {
        name: "consultation.cancelled",
        consultation_id: Presence::Required,
        participant_id: Presence::Forbidden,
        data: &[field("reason", Rule::Text { min: 0, max: 500, charset: None }, false)],
        at_least_one_field: false,
    },
    TypeRules {
        name: "consultation.results_published",
        consultation_id: Presence::Required,
        participant_id: Presence::Forbidden,
        data: &[field("report_url", Rule::Text { min: 0, max: 2000, charset: None }, false)],
        at_least_one_field: false,
    },
    TypeRules {
        name: "participant.visited",
        consultation_id: Presence::Required,
        participant_id: Presence::Required,
        data: &[field("channel", Rule::OneOf(&["web", "mobile"]), true)],
        at_least_one_field: false,
    },
    TypeRules {
        name: "contribution.submitted",
        consultation_id: Presence::Required,
        participant_id: Presence::Required,
        data: &[field("contribution_id", CONTRIBUTION_ID, true), field("kind", Rule::OneOf(CONTRIBUTION_KINDS), true)],
        at_least_one_field: false,
    },
    TypeRules {
        name: "contribution.withdrawn",
        consultation_id: Presence::Required,
        participant_id: Presence::Forbidden,
        data: &[field("contribution_id", CONTRIBUTION_ID, true), field("reason", Rule::OneOf(&["author", "moderation"]), true)],
        at_least_one_field: false,
    },
    TypeRules {
        name: "feedback.submitted",
        consultation_id: Presence::Optional,
        participant_id: Presence::Required,
        data: &[
            field("satisfaction", Rule::Integer { min: 1, max: 5 }, true),
            field("suggestion", Rule::Text { min: 0, max: 2000, charset: None }, false),
        ],
        at_least_one_field: false,
    },
    TypeRules {
        name: "suggestion.triaged",
        consultation_id: Presence::Optional,
        participant_id: Presence::Forbidden,
        data: &[field("feedback_event_id", Rule::Uuid, true), field("status", Rule::OneOf(TRIAGE_STATUSES), true)],
        at_least_one_field: false,
    },
];

/// Returns the rules of the event type `name`, if it is one.
pub fn type_rules(name: &str) -> Option<&'static TypeRules> {
    TYPES.iter().find(|t| t.name == name)
}

/// Returns every event type name, in contract order.
pub fn type_names() -> impl Iterator<Item = &'static str> {
    TYPES.iter().map(|t| t.name)
}
