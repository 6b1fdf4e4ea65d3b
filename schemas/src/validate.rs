//! The one validator of SPEC §2: turns a raw JSON value into a typed [`Event`], or into the
//! list of every rule it breaks, each naming its field as a JSON pointer. Values are
//! normalized on the way (lower-case UUIDs, `occurred_at` truncated to the millisecond).

use std::fmt;

use chrono::{DateTime, Duration, DurationRound, FixedOffset, Utc};
use serde::de::value::MapDeserializer;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::event::{Event, EventBody};
use crate::rules::{self, Charset, Presence, Rule, TypeRules};

/// How far in the future `occurred_at` may be, relative to reception.
pub const MAX_FUTURE: Duration = Duration::hours(24);

/// What kind of rule an error breaks; a bounded label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotObject,
    InvalidJson,
    Required,
    WrongType,
    UnknownField,
    Forbidden,
    Format,
    Length,
    NotAllowed,
    Duplicate,
    Range,
    Future,
}

impl ErrorKind {
    /// Returns the kind as a snake-case label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotObject => "not_object",
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::Required => "required",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::UnknownField => "unknown_field",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Format => "format",
            ErrorKind::Length => "length",
            ErrorKind::NotAllowed => "not_allowed",
            ErrorKind::Duplicate => "duplicate",
            ErrorKind::Range => "range",
            ErrorKind::Future => "future",
        }
    }
}

/// One broken rule: the field (JSON pointer, empty for the event itself) and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub pointer: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl ValidationError {
    fn new(pointer: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        ValidationError { pointer: pointer.into(), kind, message: message.into() }
    }

    /// Returns the error for an element that is not even JSON (NDJSON lines).
    pub fn invalid_json(detail: &str) -> Self {
        ValidationError::new("", ErrorKind::InvalidJson, format!("not valid JSON ({detail})"))
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "event: {}", self.message)
        } else {
            write!(f, "{}: {}", self.pointer, self.message)
        }
    }
}

/// Validates one raw event received at `received_at`, returning the normalized typed event
/// or every rule it breaks.
///
/// `null` stands for an absent field: it satisfies an optional or forbidden field and fails
/// a required one.
pub fn validate_event(raw: &Value, received_at: DateTime<Utc>) -> Result<Event, Vec<ValidationError>> {
    let Some(envelope) = raw.as_object() else {
        return Err(vec![ValidationError::new("", ErrorKind::NotObject, "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    // The normalized fields, each once valid; the typed event is built from them directly.
    let (mut event_id, mut type_name, mut occurred, mut organization_id, mut data_fields) = (None, None, None, None, None);
    let mut ids: [Option<String>; 2] = [None, None];

    for key in envelope.keys() {
        if !rules::ENVELOPE_FIELDS.contains(&key.as_str()) {
            errors.push(ValidationError::new(pointer(&[key]), ErrorKind::UnknownField, "unknown field"));
        }
    }

    if let Some(id) = required(envelope, "event_id", "/event_id", &mut errors) {
        event_id = check_uuid(id, "/event_id", &mut errors);
    }

    let type_rules = required(envelope, "type", "/type", &mut errors).and_then(|t| match t.as_str() {
        Some(name) => match rules::type_rules(name) {
            Some(rules) => {
                type_name = Some(name);
                Some(rules)
            }
            None => {
                let known = rules::type_names().collect::<Vec<_>>().join(", ");
                errors.push(ValidationError::new("/type", ErrorKind::NotAllowed, format!("must be one of {known}")));
                None
            }
        },
        None => {
            errors.push(ValidationError::new("/type", ErrorKind::WrongType, "must be a string"));
            None
        }
    });

    if let Some(version) = required(envelope, "schema_version", "/schema_version", &mut errors) {
        if version.as_i64() != Some(rules::SCHEMA_VERSION) || version.is_f64() {
            errors.push(ValidationError::new("/schema_version", ErrorKind::NotAllowed, "must be the integer 1"));
        }
    }

    if let Some(at) = required(envelope, "occurred_at", "/occurred_at", &mut errors) {
        occurred = check_occurred_at(at, received_at, &mut errors);
    }

    if let Some(org) = required(envelope, "organization_id", "/organization_id", &mut errors) {
        if check_rule(org, &rules::ORGANIZATION_ID, "/organization_id", &mut errors) {
            organization_id = org.as_str().map(str::to_owned);
        }
    }

    let (consultation, participant) = match type_rules {
        Some(t) => (t.consultation_id, t.participant_id),
        // Without a known type the presence rules are unknown: check the format only.
        None => (Presence::Optional, Presence::Optional),
    };
    for (slot, (name, presence, rule)) in ids
        .iter_mut()
        .zip([("consultation_id", consultation, &rules::CONSULTATION_ID), ("participant_id", participant, &rules::PARTICIPANT_ID)])
    {
        let path = pointer(&[name]);
        match (present(envelope, name), presence) {
            (None, Presence::Required) => errors.push(required_error(&path, type_rules)),
            (None, _) => {}
            (Some(_), Presence::Forbidden) => errors.push(ValidationError::new(
                &path,
                ErrorKind::Forbidden,
                format!("must not be set for {}", type_rules.map_or("this type", |t| t.name)),
            )),
            (Some(value), _) => {
                if check_rule(value, rule, &path, &mut errors) {
                    *slot = value.as_str().map(str::to_owned);
                }
            }
        }
    }

    if let Some(data) = required(envelope, "data", "/data", &mut errors) {
        match data.as_object() {
            None => errors.push(ValidationError::new("/data", ErrorKind::WrongType, "must be a JSON object")),
            Some(data) => {
                if let Some(t) = type_rules {
                    data_fields = check_data(data, t, &mut errors);
                }
            }
        }
    }

    // Without an error, every field above is set; the type's tag comes first, so serde reads
    // `data` straight into the variant.
    let (Some(event_id), Some(name), Some(occurred_at), Some(organization_id), Some(data), true) =
        (event_id, type_name, occurred, organization_id, data_fields, errors.is_empty())
    else {
        if errors.is_empty() {
            errors.push(ValidationError::new("", ErrorKind::Format, "does not fit the event model"));
        }
        return Err(errors);
    };
    let [consultation_id, participant_id] = ids;
    let tagged = [("type", Value::String(name.to_owned())), ("data", Value::Object(data))];
    let body = EventBody::deserialize(MapDeserializer::<_, serde_json::Error>::new(tagged.into_iter())).map_err(|e| {
        // The rules above admit only what the typed event holds; this is a bug if reached.
        vec![ValidationError::new("", ErrorKind::Format, format!("does not fit the event model ({e})"))]
    })?;
    Ok(Event {
        event_id,
        schema_version: rules::SCHEMA_VERSION as u32,
        occurred_at,
        organization_id,
        consultation_id,
        participant_id,
        body,
    })
}

fn pointer(segments: &[&str]) -> String {
    segments.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect()
}

fn present<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn required_error(path: &str, type_rules: Option<&TypeRules>) -> ValidationError {
    let message = match type_rules {
        Some(t) => format!("is required for {}", t.name),
        None => "is required".to_string(),
    };
    ValidationError::new(path, ErrorKind::Required, message)
}

fn required<'a>(map: &'a Map<String, Value>, name: &str, path: &str, errors: &mut Vec<ValidationError>) -> Option<&'a Value> {
    let value = present(map, name);
    if value.is_none() {
        errors.push(ValidationError::new(path, ErrorKind::Required, "is required"));
    }
    value
}

fn check_uuid(value: &Value, path: &str, errors: &mut Vec<ValidationError>) -> Option<String> {
    let Some(s) = value.as_str() else {
        errors.push(ValidationError::new(path, ErrorKind::WrongType, "must be a string"));
        return None;
    };
    let canonical = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if canonical {
        Some(s.to_ascii_lowercase())
    } else {
        errors.push(ValidationError::new(path, ErrorKind::Format, "must be a UUID in canonical 8-4-4-4-12 hexadecimal form"));
        None
    }
}

fn check_occurred_at(value: &Value, received_at: DateTime<Utc>, errors: &mut Vec<ValidationError>) -> Option<DateTime<FixedOffset>> {
    let Some(s) = value.as_str() else {
        errors.push(ValidationError::new("/occurred_at", ErrorKind::WrongType, "must be a string"));
        return None;
    };
    let parsed = match DateTime::parse_from_rfc3339(s) {
        Ok(at) => at,
        Err(_) => {
            errors.push(ValidationError::new(
                "/occurred_at",
                ErrorKind::Format,
                "must be an RFC 3339 date-time with an offset, such as 2021-05-01T10:00:00-04:00",
            ));
            return None;
        }
    };
    let at = parsed.duration_trunc(Duration::milliseconds(1)).unwrap_or(parsed);
    if at.with_timezone(&Utc) > received_at + MAX_FUTURE {
        errors.push(ValidationError::new(
            "/occurred_at",
            ErrorKind::Future,
            "must not be more than 24 hours after the time the event is received",
        ));
        return None;
    }
    Some(at)
}

/// Checks `value` against `rule`, pushing errors; returns whether it passed.
fn check_rule(value: &Value, rule: &Rule, path: &str, errors: &mut Vec<ValidationError>) -> bool {
    let before = errors.len();
    match *rule {
        Rule::Text { min, max, charset } => match value.as_str() {
            None => errors.push(ValidationError::new(path, ErrorKind::WrongType, "must be a string")),
            Some(s) => {
                let len = s.chars().count();
                if len < min || len > max {
                    let message = if min == 0 {
                        format!("must be at most {max} characters long")
                    } else {
                        format!("must be {min} to {max} characters long")
                    };
                    errors.push(ValidationError::new(path, ErrorKind::Length, message));
                }
                if let Some(set) = charset {
                    check_charset(s, set, path, errors);
                }
            }
        },
        Rule::OneOf(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => {}
            Some(_) => errors.push(ValidationError::new(path, ErrorKind::NotAllowed, format!("must be one of {}", allowed.join(", ")))),
            None => errors.push(ValidationError::new(path, ErrorKind::WrongType, "must be a string")),
        },
        Rule::Integer { min, max } => match value.as_i64().filter(|_| !value.is_f64()) {
            Some(n) if (min..=max).contains(&n) => {}
            Some(_) => errors.push(ValidationError::new(path, ErrorKind::Range, format!("must be from {min} to {max}"))),
            None => errors.push(ValidationError::new(path, ErrorKind::WrongType, "must be an integer")),
        },
        Rule::Uuid => {
            check_uuid(value, path, errors);
        }
        Rule::Methods => match value.as_array() {
            None => errors.push(ValidationError::new(path, ErrorKind::WrongType, "must be an array of method codes")),
            Some(items) if items.is_empty() => errors.push(ValidationError::new(path, ErrorKind::Length, "must list at least one method")),
            Some(items) => {
                let mut seen: Vec<&str> = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}/{i}");
                    match item.as_str() {
                        None => errors.push(ValidationError::new(item_path, ErrorKind::WrongType, "must be a string")),
                        Some(code) if !rules::is_method(code) => errors.push(ValidationError::new(
                            item_path,
                            ErrorKind::NotAllowed,
                            format!(
                                "unknown method code; must be one of {}, {}",
                                rules::DIGITAL_METHODS.join(", "),
                                rules::NON_DIGITAL_METHODS.join(", ")
                            ),
                        )),
                        Some(code) if seen.contains(&code) => {
                            errors.push(ValidationError::new(item_path, ErrorKind::Duplicate, format!("duplicate method {code}")))
                        }
                        Some(code) => seen.push(code),
                    }
                }
            }
        },
    }
    errors.len() == before
}

fn check_charset(s: &str, set: Charset, path: &str, errors: &mut Vec<ValidationError>) {
    if !s.chars().all(|c| set.allows(c)) {
        errors.push(ValidationError::new(path, ErrorKind::Format, format!("may only contain {}", set.describe())));
    }
}

fn check_data(data: &Map<String, Value>, t: &TypeRules, errors: &mut Vec<ValidationError>) -> Option<Map<String, Value>> {
    let before = errors.len();
    let mut normalized = Map::new();
    for key in data.keys() {
        if !t.data.iter().any(|f| f.name == key) {
            errors.push(ValidationError::new(pointer(&["data", key]), ErrorKind::UnknownField, format!("unknown field for {}", t.name)));
        }
    }
    for field in t.data {
        let path = pointer(&["data", field.name]);
        match present(data, field.name) {
            None if field.required => errors.push(required_error(&path, Some(t))),
            None => {}
            Some(value) => {
                if check_rule(value, &field.rule, &path, errors) {
                    let value = match field.rule {
                        Rule::Uuid => Value::String(value.as_str().unwrap_or_default().to_ascii_lowercase()),
                        _ => value.clone(),
                    };
                    normalized.insert(field.name.into(), value);
                }
            }
        }
    }
    if t.at_least_one_field && t.data.iter().all(|f| present(data, f.name).is_none()) {
        let names = t.data.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
        errors.push(ValidationError::new("/data", ErrorKind::Required, format!("must set at least one of {names}")));
    }
    (errors.len() == before).then_some(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event is built field by field from what the rules checked: it must be the one the
    /// typed model reads from the normalized JSON (the event's UUID lower-cased, `occurred_at`
    /// cut to the millisecond with its offset kept, `data` in its variant; a contribution id is
    /// free text, kept as sent).
    #[test]
    fn builds_the_normalized_typed_event() {
        let raw = serde_json::json!({
            "event_id": "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "type": "contribution.submitted",
            "schema_version": 1,
            "occurred_at": "2021-05-01T10:00:00.123456-04:00",
            "organization_id": "MSSS",
            "consultation_id": "msss.2021.plan",
            "participant_id": "citizen-42",
            "data": { "contribution_id": "7C9E6679-7425-40DE-944B-E07FC1F90AE7", "kind": "brief" }
        });
        let event = validate_event(&raw, Utc::now()).unwrap();
        let expected: Event = serde_json::from_value(serde_json::json!({
            "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
            "type": "contribution.submitted",
            "schema_version": 1,
            "occurred_at": "2021-05-01T10:00:00.123-04:00",
            "organization_id": "MSSS",
            "consultation_id": "msss.2021.plan",
            "participant_id": "citizen-42",
            "data": { "contribution_id": "7C9E6679-7425-40DE-944B-E07FC1F90AE7", "kind": "brief" }
        }))
        .unwrap();
        assert_eq!(event, expected);
        assert_eq!(event.occurred_at.offset().local_minus_utc(), -4 * 3600);
    }

    #[test]
    fn an_event_without_a_participant_keeps_it_unset() {
        let raw = serde_json::json!({
            "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
            "type": "consultation.closed",
            "schema_version": 1,
            "occurred_at": "2021-05-01T10:00:00Z",
            "organization_id": "MSSS",
            "consultation_id": "msss.2021.plan",
            "data": {}
        });
        match validate_event(&raw, Utc::now()) {
            Ok(event) => {
                assert_eq!(event.participant_id, None);
                assert_eq!(event.type_name(), "consultation.closed");
                assert_eq!(event.occurred_at.offset().local_minus_utc(), 0);
            }
            Err(errors) => panic!("{errors:?}"),
        }
    }
}
