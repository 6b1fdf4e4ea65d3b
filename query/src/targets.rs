//! The yearly targets of SPEC §3: what each compares, its threshold, and whether it is met.

use agora_store::ConsultationFigures;
use serde::Serialize;

/// What a target measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Growth of consultations on the platform over the previous fiscal year.
    PlatformGrowth,
    /// Share of consultations that offer a digital means of participation.
    DigitalShare,
}

/// A configured target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetDefinition {
    pub id: String,
    pub kind: TargetKind,
    pub target: f64,
}

impl TargetDefinition {
    /// Returns the targets of the strategy: 50 % growth on the platform, 75 % digital.
    pub fn defaults() -> Vec<TargetDefinition> {
        vec![
            TargetDefinition { id: "platform_growth".into(), kind: TargetKind::PlatformGrowth, target: 0.50 },
            TargetDefinition { id: "digital_share".into(), kind: TargetKind::DigitalShare, target: 0.75 },
        ]
    }
}

/// A target's value for one fiscal year.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetResult {
    pub id: String,
    pub value: Option<f64>,
    pub target: f64,
    pub met: Option<bool>,
    pub numerator: u64,
    pub denominator: u64,
}

/// Evaluates a target from the fiscal year's consultation figures and the number of
/// consultations on the platform the year before.
pub fn evaluate(definition: &TargetDefinition, current: &ConsultationFigures, previous_on_platform: u64) -> TargetResult {
    let (numerator, denominator) = match definition.kind {
        TargetKind::PlatformGrowth => (current.on_platform, previous_on_platform),
        TargetKind::DigitalShare => (current.with_digital_participation, current.opened),
    };
    let value = (denominator > 0).then(|| {
        let ratio = numerator as f64 / denominator as f64;
        match definition.kind {
            TargetKind::PlatformGrowth => ratio - 1.0,
            TargetKind::DigitalShare => ratio,
        }
    });
    TargetResult {
        id: definition.id.clone(),
        value,
        target: definition.target,
        met: value.map(|v| v >= definition.target),
        numerator,
        denominator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_null_without_a_previous_year_and_met_at_exactly_the_target() {
        let defs = TargetDefinition::defaults();
        let current = ConsultationFigures { opened: 4, on_platform: 3, with_digital_participation: 3, ..Default::default() };
        let growth = evaluate(&defs[0], &current, 0);
        assert_eq!((growth.value, growth.met), (None, None));
        let growth = evaluate(&defs[0], &current, 2);
        assert_eq!((growth.value, growth.met, growth.numerator, growth.denominator), (Some(0.5), Some(true), 3, 2));
        let digital = evaluate(&defs[1], &current, 2);
        assert_eq!((digital.value, digital.met), (Some(0.75), Some(true)));
        let none = evaluate(&defs[1], &ConsultationFigures::default(), 0);
        assert_eq!((none.value, none.met), (None, None));
    }
}
