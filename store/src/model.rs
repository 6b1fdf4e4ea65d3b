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

/// The raw figures of every fiscal year and scope the store holds, read together: what the
/// query role serves figures from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FigureSet {
    /// The store's [version](crate::Store::version) when the read began: the figures reflect
    /// at least that version.
    pub version: i64,
    /// By fiscal year and organization (`None` for the whole government); a scope that is
    /// absent has no data, so its figures are all zero.
    pub scopes: BTreeMap<(FiscalYear, Option<String>), RawFigures>,
}

impl FigureSet {
    /// Returns the raw figures of a fiscal year and scope (zeros when the store holds none).
    pub fn raw(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> RawFigures {
        self.scopes.get(&(fiscal_year, organization_id.map(str::to_owned))).cloned().unwrap_or_default()
    }
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

/// What monthly series are made of, read from the store for one fiscal year and scope: the
/// same counted consultations, contributions and feedback as the yearly figures, each with
/// the instant (epoch ms) it happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonthlyRaw {
    /// Openings of the counted consultations.
    pub openings_ms: Vec<i64>,
    /// Counted contributions: participant and instant.
    pub contributions: Vec<(String, i64)>,
    /// Counted satisfaction responses: score and instant.
    pub feedback: Vec<(u8, i64)>,
}

/// What the store holds figures for: every organization with a consultation or feedback, and
/// every fiscal year with a consultation opened or feedback given, both sorted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    pub organizations: Vec<String>,
    pub fiscal_years: Vec<FiscalYear>,
}

/// One month of `GET /v1/indicators/monthly`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthFigures {
    /// `YYYY-MM`, in Québec local time (America/Toronto).
    pub month: String,
    pub consultations_opened: u64,
    pub contributions: u64,
    /// Distinct participants with a counted contribution that month.
    pub unique_participants: u64,
    pub satisfaction_responses: u64,
    pub satisfaction_mean: Option<f64>,
}

/// Buckets raw monthly data by local month: the twelve months of the fiscal year, then any
/// later month that holds data (contributions to a year's consultations may come after
/// March 31), so that the months of a series add up to the yearly totals.
pub fn monthly_series(fiscal_year: FiscalYear, raw: MonthlyRaw) -> Vec<MonthFigures> {
    use chrono::{Datelike, TimeZone};
    use std::collections::HashSet;
    let month_of = |ms: i64| {
        let local = agora_schemas::fiscal::ZONE.timestamp_millis_opt(ms).single().map(|t| (t.year(), t.month()));
        local.unwrap_or((1970, 1))
    };
    let mut months: BTreeMap<(i32, u32), (u64, u64, HashSet<String>, u64, u64)> = BTreeMap::new();
    let first = fiscal_year.start_year();
    for i in 0..12 {
        let (year, month) = if i < 9 { (first, 4 + i) } else { (first + 1, i - 8) };
        months.insert((year, month), Default::default());
    }
    for ms in raw.openings_ms {
        months.entry(month_of(ms)).or_default().0 += 1;
    }
    for (participant, ms) in raw.contributions {
        let entry = months.entry(month_of(ms)).or_default();
        entry.1 += 1;
        entry.2.insert(participant);
    }
    for (score, ms) in raw.feedback {
        let entry = months.entry(month_of(ms)).or_default();
        entry.3 += 1;
        entry.4 += u64::from(score);
    }
    months
        .into_iter()
        .map(|((year, month), (opened, contributions, participants, responses, score_sum))| MonthFigures {
            month: format!("{year:04}-{month:02}"),
            consultations_opened: opened,
            contributions,
            unique_participants: participants.len() as u64,
            satisfaction_responses: responses,
            satisfaction_mean: share(score_sum, responses),
        })
        .collect()
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
    fn buckets_months_in_quebec_time_and_keeps_months_after_march() {
        // 2024-05-01 03:30 UTC is still April 30 in Québec (EDT, UTC-4).
        let april_30_local = 1_714_534_200_000;
        // 2025-04-02 12:00 UTC: after the fiscal year, still counted.
        let april_2025 = 1_743_595_200_000;
        let raw = MonthlyRaw {
            openings_ms: vec![april_30_local],
            contributions: vec![("p1".into(), april_30_local), ("p1".into(), april_30_local), ("p2".into(), april_2025)],
            feedback: vec![(5, april_30_local), (2, april_30_local)],
        };
        let series = monthly_series(FiscalYear::starting_in(2024), raw);
        assert_eq!(series.len(), 13);
        assert_eq!(series[0].month, "2024-04");
        assert_eq!((series[0].consultations_opened, series[0].contributions, series[0].unique_participants), (1, 2, 1));
        assert_eq!(series[0].satisfaction_mean, Some(3.5));
        assert_eq!(series[1].month, "2024-05");
        assert_eq!(series[1].contributions, 0);
        assert_eq!(series[11].month, "2025-03");
        assert_eq!((series[12].month.as_str(), series[12].contributions), ("2025-04", 1));
    }

    #[test]
    fn takes_the_median_of_even_and_odd_counts() {
        assert_eq!(median_days(vec![86_400_000 * 3, 86_400_000, 86_400_000 * 2]), Some(2.0));
        assert_eq!(median_days(vec![86_400_000, 43_200_000]), Some(0.75));
    }
}
