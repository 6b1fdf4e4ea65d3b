//! Agora's event contract (SPEC §2): the typed v1 events, the one validator that turns raw
//! JSON into them with field-level errors, the JSON Schema documents generated from the same
//! rules, the method taxonomy and the fiscal-year calendar. No I/O: every other crate takes
//! its vocabulary from here.

pub mod api;
pub mod event;
pub mod fiscal;
pub mod json_schema;
pub mod rules;
pub mod validate;

pub use event::{Event, EventBody};
pub use fiscal::FiscalYear;
pub use validate::{validate_event, ValidationError};
