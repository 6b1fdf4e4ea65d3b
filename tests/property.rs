//! Property: the figures are a pure function of the set of accepted events. Any permutation
//! and any duplication of a generated event set, delivered in any batch size, gives the
//! same figures for every fiscal year, organization and consultation. Runs the real fold
//! into real SQLite files.

use agora_eventlog::{EventLog, SqliteLog};
use agora_projector::{Projector, ProjectorConfig, ProjectorMetrics};
use agora_schemas::{validate_event, Event, FiscalYear};
use agora_store::{ConsultationView, Figures, SqliteStore, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

const TIMES: &[&str] = &[
    "2021-03-31T23:59:59.999-04:00",
    "2021-04-01T00:00:00-04:00",
    "2021-05-01T12:00:00Z",
    "2021-05-01T08:00:00-04:00",
    "2021-09-15T00:00:00Z",
    "2022-01-01T00:00:00-05:00",
    "2022-04-01T12:00:00Z",
];
const CONSULTATIONS: &[&str] = &["c0", "c1", "c2"];
const ORGS: &[&str] = &["MSSS", "MEQ"];
const METHODS: &[&[&str]] = &[&["online_survey"], &["phone"], &["mail", "virtual_meeting"]];
const KINDS: &[&str] = &["comment", "vote", "brief"];
const STATUSES: &[&str] = &["under_review", "implemented", "declined"];

type Pick = (usize, usize, usize, usize, usize, usize, u8, bool, usize);

fn build(index: usize, pick: Pick, count: usize) -> Value {
    let (kind, time, consultation, org, participant, contribution, satisfaction, flag, choice) = pick;
    let consultation = CONSULTATIONS[consultation];
    let participant = format!("person-{participant}");
    let contribution = format!("k{contribution}");
    let (kind, consultation_id, participant_id, data) = match kind {
        0 | 1 => (
            "consultation.opened",
            Some(consultation),
            None,
            json!({
            "title_fr": format!("Titre {choice}"), "hosted_on": if flag { "platform" } else { "third_party" },
            "methods": METHODS[choice % METHODS.len()]}),
        ),
        2 => (
            "consultation.updated",
            Some(consultation),
            None,
            if flag {
                json!({"hosted_on": if choice % 2 == 0 { "platform" } else { "third_party" }})
            } else {
                json!({"methods": METHODS[choice % METHODS.len()], "title_en": "Title"})
            },
        ),
        3 => ("consultation.closed", Some(consultation), None, json!({})),
        4 => ("consultation.cancelled", Some(consultation), None, json!({})),
        5 => ("consultation.results_published", Some(consultation), None, json!({})),
        6 => ("participant.visited", Some(consultation), Some(participant), json!({"channel": "web"})),
        7 | 8 => (
            "contribution.submitted",
            Some(consultation),
            Some(participant),
            json!({"contribution_id": contribution, "kind": KINDS[choice % KINDS.len()]}),
        ),
        9 => ("contribution.withdrawn", Some(consultation), None, json!({"contribution_id": contribution, "reason": "author"})),
        10 | 11 => (
            "feedback.submitted",
            flag.then_some(consultation),
            Some(participant),
            if choice % 2 == 0 {
                json!({"satisfaction": satisfaction, "suggestion": "une idée"})
            } else {
                json!({"satisfaction": satisfaction})
            },
        ),
        _ => (
            "suggestion.triaged",
            None,
            None,
            json!({
            "feedback_event_id": uuid(choice * 7 % count.max(1)), "status": STATUSES[choice % STATUSES.len()]}),
        ),
    };
    let mut event = json!({"event_id": uuid(index), "type": kind, "schema_version": 1, "occurred_at": TIMES[time],
        "organization_id": ORGS[org], "data": data});
    if let Some(c) = consultation_id {
        event["consultation_id"] = json!(c);
    }
    if let Some(p) = participant_id {
        event["participant_id"] = json!(p);
    }
    event
}

fn uuid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    let pick =
        (0usize..13, 0..TIMES.len(), 0..CONSULTATIONS.len(), 0..ORGS.len(), 0usize..4, 0usize..5, 1u8..=5, any::<bool>(), 0usize..12);
    prop::collection::vec(pick, 1..70).prop_map(|picks| {
        let count = picks.len();
        picks
            .into_iter()
            .enumerate()
            .map(|(i, pick)| {
                let raw = build(i, pick, count);
                validate_event(&raw, chrono::Utc::now()).unwrap_or_else(|e| panic!("{raw}: {e:?}"))
            })
            .collect()
    })
}

type Snapshot = (Vec<Figures>, Vec<u64>, Vec<Option<ConsultationView>>);

fn project(events: &[Event], batch_size: usize) -> Snapshot {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::Sqlite(SqliteLog::open(dir.path()).unwrap());
        let store = Store::Sqlite(SqliteStore::open(dir.path()).unwrap());
        for chunk in events.chunks(batch_size) {
            log.append(chunk).await.unwrap();
        }
        let config = ProjectorConfig { batch_size, ..ProjectorConfig::default() };
        let projector = Projector::new(log, store.clone(), config, ProjectorMetrics::register(&prometheus::Registry::new()).unwrap());
        projector.catch_up().await.unwrap();
        let mut figures = Vec::new();
        let mut on_platform = Vec::new();
        for year in 2020..=2022 {
            for org in [None, Some("MSSS"), Some("MEQ")] {
                let fy = FiscalYear::starting_in(year);
                figures.push(Figures::from_raw(store.raw_figures(fy, org).await.unwrap()));
                on_platform.push(store.on_platform(fy, org).await.unwrap());
            }
        }
        let mut views = Vec::new();
        for c in CONSULTATIONS {
            views.push(store.consultation(c).await.unwrap());
        }
        (figures, on_platform, views)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_permutation_and_duplication_gives_identical_figures(
        events in arb_events(),
        seed in any::<u64>(),
        repeats in prop::collection::vec(0usize..200, 0..30),
        batch_size in 1usize..25,
    ) {
        let expected = project(&events, 1_000);
        let mut delivered = events.clone();
        for r in repeats {
            delivered.push(events[r % events.len()].clone());
        }
        // A deterministic shuffle driven by the generated seed.
        let mut state = seed | 1;
        for i in (1..delivered.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            delivered.swap(i, (state % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(project(&delivered, batch_size), expected);
    }
}
