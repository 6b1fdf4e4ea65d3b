//! The byte form of an event in the log: its JSON document, UTF-8. Readable with any tool,
//! the same on every backend, and what the audit reads back independently of the projector.

use agora_schemas::Event;

/// A record whose bytes are not a v1 event: it is dead-lettered, never applied.
#[derive(Debug, thiserror::Error)]
#[error("record is not a v1 event: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// Returns the log bytes of an event.
pub fn encode(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("an event always serializes")
}

/// Returns the event held by log bytes.
pub fn decode(payload: &[u8]) -> Result<Event, DecodeError> {
    Ok(serde_json::from_slice(payload)?)
}
