//! JSON Schema (draft 2020-12) documents of every v1 event type, generated from the same
//! rule tables as the validator and served by the ingest role at `GET /v1/schemas`.

use serde_json::{json, Map, Value};

use crate::rules::{self, Presence, Rule, TypeRules};

/// Returns one JSON Schema document per event type, keyed by type name.
pub fn all_schemas() -> Value {
    let mut schemas = Map::new();
    for t in rules::TYPES {
        schemas.insert(t.name.to_string(), event_schema(t));
    }
    Value::Object(schemas)
}

/// Returns the JSON Schema document of one event type: envelope and `data`.
pub fn event_schema(t: &TypeRules) -> Value {
    let mut properties = Map::new();
    properties.insert("event_id".into(), rule_schema(&Rule::Uuid));
    properties.insert("type".into(), json!({ "const": t.name }));
    properties.insert("schema_version".into(), json!({ "const": rules::SCHEMA_VERSION }));
    properties.insert(
        "occurred_at".into(),
        json!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with offset; kept to the millisecond; at most 24 h after reception"
        }),
    );
    properties.insert("organization_id".into(), rule_schema(&rules::ORGANIZATION_ID));
    let mut required = vec!["event_id", "type", "schema_version", "occurred_at", "organization_id", "data"];
    for (name, presence, rule) in
        [("consultation_id", t.consultation_id, &rules::CONSULTATION_ID), ("participant_id", t.participant_id, &rules::PARTICIPANT_ID)]
    {
        match presence {
            Presence::Forbidden => {
                properties.insert(name.into(), json!({ "type": "null" }));
            }
            Presence::Required => {
                properties.insert(name.into(), rule_schema(rule));
                required.push(name);
            }
            Presence::Optional => {
                properties.insert(name.into(), nullable(rule_schema(rule)));
            }
        }
    }
    properties.insert("data".into(), data_schema(t));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("urn:agora:event:{}:v1", t.name),
        "title": t.name,
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

fn data_schema(t: &TypeRules) -> Value {
    let mut properties = Map::new();
    for field in t.data {
        let schema = rule_schema(&field.rule);
        properties.insert(field.name.into(), if field.required { schema } else { nullable(schema) });
    }
    let required: Vec<&str> = t.data.iter().filter(|f| f.required).map(|f| f.name).collect();
    let mut schema = json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    });
    if t.at_least_one_field {
        schema["minProperties"] = json!(1);
    }
    schema
}

fn nullable(schema: Value) -> Value {
    json!({ "anyOf": [schema, { "type": "null" }] })
}

fn rule_schema(rule: &Rule) -> Value {
    match *rule {
        Rule::Text { min, max, charset } => {
            let mut schema = json!({ "type": "string", "minLength": min, "maxLength": max });
            if let Some(set) = charset {
                schema["pattern"] = json!(set.pattern());
            }
            schema
        }
        Rule::OneOf(values) => json!({ "type": "string", "enum": values }),
        Rule::Integer { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Rule::Uuid => json!({
            "type": "string",
            "pattern": "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
        }),
        Rule::Methods => {
            let codes: Vec<&str> = rules::DIGITAL_METHODS.iter().chain(rules::NON_DIGITAL_METHODS).copied().collect();
            json!({
                "type": "array",
                "minItems": 1,
                "uniqueItems": true,
                "items": { "type": "string", "enum": codes }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_one_document_per_type_with_the_data_fields_of_the_rules() {
        let schemas = all_schemas();
        assert_eq!(schemas.as_object().unwrap().len(), rules::TYPES.len());
        let opened = &schemas["consultation.opened"];
        assert_eq!(opened["properties"]["data"]["required"], json!(["title_fr", "hosted_on", "methods"]));
        assert_eq!(opened["properties"]["participant_id"], json!({"type": "null"}));
        let feedback = &schemas["feedback.submitted"];
        assert!(feedback["required"].as_array().unwrap().contains(&json!("participant_id")));
        assert!(!feedback["required"].as_array().unwrap().contains(&json!("consultation_id")));
        assert_eq!(feedback["properties"]["data"]["properties"]["satisfaction"]["maximum"], json!(5));
    }
}
