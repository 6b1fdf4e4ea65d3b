//! The figures of SPEC §3 as both backends return them: raw counts from the store, and the
//! one pure function that derives shares, means and medians from them, so every backend
//! reports the same numbers for the same counts.

use std::collections::BTreeMap;

use agora_schemas::rules::CONTRIBUTION_KINDS;
use agora_schemas::FiscalYear;
use serde::{Deserialize, Serialize};

const MS_PER_DAY: f64 = 86_400_000.0;

/// Consultation counts of a fiscal year (SPEC §3, `consultations.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsultationFigures {
    pub opened: u64,
    pub on_platform: u64,
    pub third_party: u64,
    pub with_digital_participation: u64,
    pub closed: u64,
    pub with_results_published: u64,
}

/// Exact counts read from the store, before any division.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawFigures {
    pub consultations: ConsultationFigures,
    pub unique_participants: u64,
    pub contributions_by_kind: BTreeMap<String, u64>,
    pub visitors: u64,
    /// Visitors who also made a counted contribution.
    pub converted_visitors: u64,
    pub satisfaction_responses: u64,
    pub satisfaction_sum: u64,
    /// Responses with satisfaction of 4 or 5.
    pub satisfied: u64,
    /// Per consultation with both events: earliest results − earliest closed, in ms.
    pub result_delays_ms: Vec<i64>,
    pub suggestions: SuggestionFigures,
}

/// `participation.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipationFigures {
    pub unique_participants: u64,
    pub contributions: u64,
    pub contributions_by_kind: BTreeMap<String, u64>,
    pub visitors: u64,
    pub visitor_conversion: Option<f64>,
}

/// `satisfaction.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SatisfactionFigures {
    pub responses: u64,
    pub mean: Option<f64>,
    pub csat: Option<f64>,
}

/// `results.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsFigures {
    pub published_share: Option<f64>,
    pub median_days_to_results: Option<f64>,
}

/// `suggestions.*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SuggestionFigures {
    pub received: u64,
    pub answered: u64,
    pub implemented: u64,
}

/// Every SPEC §3 figure of a fiscal year except the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub consultations: ConsultationFigures,
    pub participation: ParticipationFigures,
    pub satisfaction: SatisfactionFigures,
    pub results: ResultsFigures,
    pub suggestions: SuggestionFigures,
}

impl Figures {
    /// Derives the reported figures from raw counts.
    pub fn from_raw(raw: RawFigures) -> Self {
        let c = raw.consultations;
        Figures {
            participation: ParticipationFigures {
                unique_participants: raw.unique_participants,
                contributions: raw.contributions_by_kind.values().sum(),
                contributions_by_kind: every_kind(raw.contributions_by_kind),
                visitors: raw.visitors,
                visitor_conversion: share(raw.converted_visitors, raw.visitors),
            },
            satisfaction: SatisfactionFigures {
                responses: raw.satisfaction_responses,
                mean: share(raw.satisfaction_sum, raw.satisfaction_responses),
                csat: share(raw.satisfied, raw.satisfaction_responses),
            },
            results: ResultsFigures {
                published_share: share(c.with_results_published, c.closed),
                median_days_to_results: median_days(raw.result_delays_ms),
            },
            suggestions: raw.suggestions,
            consultations: c,
        }
    }
}

/// Returns `numerator / denominator`, or `None` when the denominator is 0.
pub fn share(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Returns the counts with every contribution kind present, zero included.
pub fn every_kind(mut counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    for kind in CONTRIBUTION_KINDS {
        counts.entry((*kind).to_string()).or_insert(0);
    }
    counts
}

/// Returns the median of delays in days (86,400 s a day), or `None` for no delays.
pub fn median_days(mut delays_ms: Vec<i64>) -> Option<f64> {
    if delays_ms.is_empty() {
        return None;
    }
    delays_ms.sort_unstable();
    let n = delays_ms.len();
    let median_ms = if n % 2 == 1 {
        delays_ms[n / 2] as f64
    } else {
        // Sum as i128 so that two extreme delays cannot overflow.
        (delays_ms[n / 2 - 1] as i128 + delays_ms[n / 2] as i128) as f64 / 2.0
    };
    Some(median_ms / MS_PER_DAY)
}

/// A consultation's state and figures (SPEC §4 `GET /v1/consultations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsultationView {
    pub consultation_id: String,
    pub organization_id: String,
    pub fiscal_year: FiscalYear,
    pub status: String,
    pub title_fr: String,
    pub title_en: Option<String>,
    pub hosted_on: String,
    pub methods: Vec<String>,
    pub offers_digital_participation: bool,
    pub unique_participants: u64,
    pub contributions: u64,
    pub contributions_by_kind: BTreeMap<String, u64>,
    pub visitors: u64,
    pub results_published: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_nulls_when_denominators_are_zero() {
        let figures = Figures::from_raw(RawFigures::default());
        assert_eq!(figures.participation.visitor_conversion, None);
        assert_eq!(figures.satisfaction.mean, None);
        assert_eq!(figures.results.published_share, None);
        assert_eq!(figures.results.median_days_to_results, None);
        assert_eq!(figures.participation.contributions_by_kind.len(), CONTRIBUTION_KINDS.len());
    }

    #[test]
    fn takes_the_median_of_even_and_odd_counts() {
        assert_eq!(median_days(vec![86_400_000 * 3, 86_400_000, 86_400_000 * 2]), Some(2.0));
        assert_eq!(median_days(vec![86_400_000, 43_200_000]), Some(0.75));
    }
}
