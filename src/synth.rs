//! The synthetic history behind `agora demo` and `agora generate`, and the test data of the
//! end-to-end suite: raw platform events (participant identifiers in clear, as the platform
//! sends them) for several fiscal years and many Québec public bodies. Deterministic for a
//! seed, and realistic in shape: growth that meets the 50 % target for some bodies and
//! misses it for others, updates, withdrawals, feedback and triage, cancelled
//! consultations, exact duplicates and late deliveries.

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

use agora_schemas::fiscal::ZONE;
use agora_schemas::FiscalYear;

/// Public bodies: code, platform consultations in the first year, yearly growth of those,
/// third-party consultations in the first year, share of third-party ones offering a
/// digital means of participation.
const ORGANIZATIONS: &[(&str, u32, f64, u32, f64)] = &[
    ("MSSS", 3, 1.7, 3, 0.5),
    ("MEQ", 2, 1.6, 4, 0.4),
    ("MES", 1, 1.8, 2, 0.6),
    ("MTMD", 2, 1.3, 4, 0.3),
    ("MELCCFP", 3, 1.55, 2, 0.7),
    ("MAPAQ", 1, 1.2, 3, 0.2),
    ("MAMH", 2, 1.5, 2, 0.5),
    ("MCC", 1, 1.9, 1, 0.8),
    ("MEIE", 2, 1.1, 3, 0.3),
    ("MFQ", 1, 1.0, 2, 0.5),
    ("MJQ", 1, 1.4, 2, 0.2),
    ("MSP", 1, 1.6, 1, 0.4),
    ("MTESS", 2, 1.25, 2, 0.5),
    ("MRNF", 1, 1.75, 3, 0.3),
    ("MIFI", 1, 1.5, 1, 0.6),
    ("MCE", 1, 0.9, 2, 0.2),
    ("SCT", 2, 1.6, 0, 0.0),
    ("SAAQ", 1, 1.35, 2, 0.5),
    ("RAMQ", 1, 1.65, 1, 0.9),
    ("INSPQ", 1, 1.2, 1, 0.4),
];

const TOPICS: &[(&str, &str)] = &[
    ("la mobilité durable", "sustainable mobility"),
    ("la santé mentale des jeunes", "youth mental health"),
    ("la réussite éducative", "educational success"),
    ("l'accès au logement", "access to housing"),
    ("la protection des milieux humides", "wetland protection"),
    ("la sécurité alimentaire", "food security"),
    ("la culture numérique", "digital culture"),
    ("la main-d'œuvre en région", "the regional workforce"),
    ("la transition énergétique", "the energy transition"),
    ("l'accueil des personnes immigrantes", "welcoming immigrants"),
];

const DIGITAL: &[&str] = &["online_survey", "online_comments", "online_proposals", "online_vote", "online_brief", "virtual_meeting"];
const NOT_DIGITAL: &[&str] = &["in_person_meeting", "paper_brief", "phone", "mail"];
const KINDS: &[(&str, u32)] = &[("comment", 40), ("survey_response", 30), ("proposal", 12), ("vote", 14), ("brief", 4)];
const TRIAGE: &[&str] = &["under_review", "planned", "implemented", "declined"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub seed: u64,
    /// Multiplies the number of participants per consultation (1.0: about 650,000 events).
    pub scale: f64,
    /// First fiscal year of the history.
    pub first_fiscal_year: FiscalYear,
    /// Fiscal years covered; the last one ends early, at `until`.
    pub fiscal_years: i32,
    /// No event occurs after this instant.
    pub until: DateTime<Utc>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            seed: 2021,
            scale: 1.0,
            first_fiscal_year: FiscalYear::starting_in(2021),
            fiscal_years: 6,
            until: Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).single().expect("valid date"),
        }
    }
}

/// SplitMix64: small, fast and stable across platforms and versions, so a seed always
/// gives the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low).max(0) as u64 + 1) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        let hi = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let lo = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF, lo >> 48, lo & 0xFFFF_FFFF_FFFF)
    }
}

struct Timed {
    at: DateTime<Utc>,
    event: Value,
}

struct Builder {
    rng: Rng,
    events: Vec<Timed>,
    until: DateTime<Utc>,
    contributions: u64,
}

impl Builder {
    fn push(
        &mut self,
        at: DateTime<Utc>,
        kind: &str,
        org: &str,
        consultation: Option<&str>,
        participant: Option<&str>,
        data: Value,
    ) -> Option<String> {
        if at > self.until {
            return None;
        }
        let event_id = self.rng.uuid();
        let mut event = json!({
            "event_id": event_id,
            "type": kind,
            "schema_version": 1,
            "occurred_at": at.with_timezone(&ZONE).to_rfc3339_opts(SecondsFormat::Millis, false),
            "organization_id": org,
            "data": data,
        });
        if let Some(c) = consultation {
            event["consultation_id"] = json!(c);
        }
        if let Some(p) = participant {
            event["participant_id"] = json!(p);
        }
        self.events.push(Timed { at, event });
        Some(event_id)
    }
}

/// Returns the synthetic history in delivery order: mostly by time, with late deliveries
/// and exact duplicates mixed in.
pub fn generate(options: &SynthOptions) -> Vec<Value> {
    let mut b = Builder { rng: Rng(options.seed), events: Vec::new(), until: options.until, contributions: 0 };
    let participants_pool = 60_000u64;
    let mut serial = 0u32;
    for (org_index, &(org, base_platform, growth, base_third, third_digital)) in ORGANIZATIONS.iter().enumerate() {
        for year in 0..options.fiscal_years {
            let fy = FiscalYear::starting_in(options.first_fiscal_year.start_year() + year);
            let platform = (base_platform as f64 * growth.powi(year)).round() as u32;
            let third = (base_third as f64 * 0.85f64.powi(year)).round() as u32;
            for i in 0..platform + third {
                serial += 1;
                let on_platform = i < platform;
                let id = format!("{}-{}-{:03}", org.to_lowercase(), fy.start_year(), serial % 1000);
                consultation(&mut b, options, org, org_index, fy, &id, on_platform, third_digital, participants_pool);
            }
        }
        // Feedback on the platform itself, outside any consultation.
        for _ in 0..(40.0 * options.scale) as u32 {
            let start = options.first_fiscal_year.start();
            let span = (options.until - start).num_seconds();
            let at = start + Duration::seconds(b.rng.range(0, span));
            let participant = format!("citoyen-{}", b.rng.below(participants_pool));
            feedback(&mut b, at, org, None, &participant);
        }
    }

    let mut timed = b.events;
    timed.sort_by_key(|t| t.at);
    let mut rng = b.rng;
    let mut delivered = Vec::with_capacity(timed.len() + timed.len() / 100);
    let mut late = Vec::new();
    for t in timed {
        if rng.chance(0.01) {
            late.push(t.event);
        } else {
            if rng.chance(0.005) {
                delivered.push(t.event.clone());
            }
            delivered.push(t.event);
        }
    }
    // Late deliveries arrive at the end, after everything that happened after them.
    delivered.extend(late);
    delivered
}

#[allow(clippy::too_many_arguments)]
fn consultation(
    b: &mut Builder,
    options: &SynthOptions,
    org: &str,
    org_index: usize,
    fy: FiscalYear,
    id: &str,
    on_platform: bool,
    third_digital: f64,
    pool: u64,
) {
    let year_span = (fy.end().min(options.until) - fy.start()).num_seconds().max(1);
    let opened = fy.start() + Duration::seconds(b.rng.range(0, year_span * 9 / 10));
    let digital = on_platform || b.rng.chance(third_digital);
    let mut methods: Vec<&str> = Vec::new();
    if digital {
        methods.push(*b.rng.pick(DIGITAL));
        if b.rng.chance(0.5) {
            let second = *b.rng.pick(DIGITAL);
            if !methods.contains(&second) {
                methods.push(second);
            }
        }
    }
    if !digital || b.rng.chance(0.3) {
        methods.push(*b.rng.pick(NOT_DIGITAL));
    }
    let (topic_fr, topic_en) = TOPICS[(org_index + id.len() + b.rng.below(TOPICS.len() as u64) as usize) % TOPICS.len()];
    let Some(_) = b.push(
        opened,
        "consultation.opened",
        org,
        Some(id),
        None,
        json!({
            "title_fr": format!("Consultation sur {topic_fr}"),
            "title_en": format!("Consultation on {topic_en}"),
            "hosted_on": if on_platform { "platform" } else { "third_party" },
            "methods": methods,
        }),
    ) else {
        return;
    };
    if !on_platform && b.rng.chance(0.1) {
        // Moved onto the platform a few days in.
        let at = opened + Duration::days(b.rng.range(1, 10));
        b.push(
            at,
            "consultation.updated",
            org,
            Some(id),
            None,
            json!({"hosted_on": "platform", "methods": ["online_survey", "online_comments"]}),
        );
    } else if b.rng.chance(0.05) {
        let at = opened + Duration::hours(b.rng.range(1, 72));
        b.push(at, "consultation.updated", org, Some(id), None, json!({"title_fr": format!("Consultation publique sur {topic_fr}")}));
    }
    let closes = opened + Duration::days(b.rng.range(20, 90));
    if b.rng.chance(0.03) {
        let at = opened + Duration::days(b.rng.range(1, 15));
        b.push(at, "consultation.cancelled", org, Some(id), None, json!({"reason": "report de la démarche"}));
    }
    let last_day = closes.min(options.until);
    let span = (last_day - opened).num_seconds().max(1);
    let visitors = ((b.rng.range(150, 650) as f64) * options.scale).round() as u64;
    for _ in 0..visitors {
        let participant = format!("citoyen-{}", b.rng.below(pool));
        let visited = opened + Duration::seconds(b.rng.range(0, span));
        let channel = if b.rng.chance(0.35) { "mobile" } else { "web" };
        b.push(visited, "participant.visited", org, Some(id), Some(&participant), json!({ "channel": channel }));
        if !b.rng.chance(0.45) {
            continue;
        }
        for _ in 0..b.rng.range(1, 3) {
            b.contributions += 1;
            let contribution_id = format!("{id}-k{}", b.contributions);
            let weight = b.rng.below(100) as u32;
            let mut acc = 0;
            let kind = KINDS.iter().find(|(_, w)| {
                acc += w;
                weight < acc
            });
            let at = visited + Duration::seconds(b.rng.range(30, 3_600));
            b.push(
                at,
                "contribution.submitted",
                org,
                Some(id),
                Some(&participant),
                json!({"contribution_id": contribution_id, "kind": kind.map_or("comment", |k| k.0)}),
            );
            if b.rng.chance(0.03) {
                let reason = if b.rng.chance(0.5) { "author" } else { "moderation" };
                let withdrawn = at + Duration::hours(b.rng.range(1, 48));
                b.push(
                    withdrawn,
                    "contribution.withdrawn",
                    org,
                    Some(id),
                    None,
                    json!({"contribution_id": contribution_id, "reason": reason}),
                );
            }
        }
        if b.rng.chance(0.12) {
            feedback(b, visited + Duration::hours(1), org, Some(id), &participant);
        }
    }
    if closes <= options.until {
        b.push(closes, "consultation.closed", org, Some(id), None, json!({}));
        if b.rng.chance(0.7) {
            let published = closes + Duration::days(b.rng.range(10, 60)) + Duration::hours(b.rng.range(0, 23));
            b.push(
                published,
                "consultation.results_published",
                org,
                Some(id),
                None,
                json!({"report_url": format!("https://www.quebec.ca/consultations/{id}/rapport")}),
            );
        }
    }
}

fn feedback(b: &mut Builder, at: DateTime<Utc>, org: &str, consultation: Option<&str>, participant: &str) {
    let satisfaction = [1, 2, 3, 3, 4, 4, 4, 5, 5, 5][b.rng.below(10) as usize];
    let mut data = json!({ "satisfaction": satisfaction });
    let with_suggestion = b.rng.chance(0.35);
    if with_suggestion {
        data["suggestion"] = json!("Offrir un résumé en langage clair et des rappels par courriel.");
    }
    let Some(feedback_id) = b.push(at, "feedback.submitted", org, consultation, Some(participant), data) else {
        return;
    };
    if with_suggestion && b.rng.chance(0.6) {
        let mut when = at;
        for _ in 0..b.rng.range(1, 2) {
            when += Duration::days(b.rng.range(3, 40));
            let status = *b.rng.pick(TRIAGE);
            b.push(when, "suggestion.triaged", "SCT", None, None, json!({"feedback_event_id": feedback_id, "status": status}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_for_a_seed() {
        let options = SynthOptions { scale: 0.02, ..SynthOptions::default() };
        let a = generate(&options);
        let b = generate(&options);
        assert_eq!(a, b);
        let c = generate(&SynthOptions { seed: 7, ..options });
        assert_ne!(a, c);
    }

    #[test]
    fn every_event_is_valid() {
        let options = SynthOptions { scale: 0.05, ..SynthOptions::default() };
        let received = options.until;
        for event in generate(&options) {
            if let Err(errors) = agora_schemas::validate_event(&event, received) {
                panic!("{event}: {errors:?}");
            }
        }
    }
}
