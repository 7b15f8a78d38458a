//! Before/after distribution per domain x level.

use std::io::Write;

use super::levels::Groups;
use crate::text::{Align, text_table};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub domain: String,
    /// 1-based, easiest first.
    pub level: usize,
    pub difficulty_min: f64,
    pub difficulty_max: f64,
    pub rows: usize,
    /// Share of the domain's rows in this level.
    pub share_before: f64,
    /// Share of the domain's weight in this level.
    pub share_after: f64,
    pub mean_weight: f64,
    /// Rows after resampling, when the table was materialised.
    pub rows_after: Option<u64>,
    /// The domain's effective sample size under the weights, `(sum w)^2 / sum w^2` (the same
    /// on each of its levels).
    pub domain_ess: f64,
}

/// One row per (domain, level), domains in order of first appearance, levels easiest first.
pub fn audit(groups: &Groups, weights: &[f64], copies: Option<&[u32]>) -> Vec<AuditRow> {
    let counts = groups.counts();
    let mass = groups.mass(weights);
    let copied = copies.map(|copies| {
        let as_f64: Vec<f64> = copies.iter().map(|&c| f64::from(c)).collect();
        groups.mass(&as_f64)
    });
    let ess = super::effective_sample_sizes(&groups.domain, groups.domains(), weights);
    let mut rows = Vec::new();
    for d in 0..groups.domains() {
        let total_rows: usize = counts[d].iter().sum();
        let total_mass: f64 = mass[d].iter().sum();
        for k in 0..groups.levels_in(d) {
            let (lo, hi) = groups.level_ranges[d][k];
            rows.push(AuditRow {
                domain: groups.domain_names[d].clone(),
                level: k + 1,
                difficulty_min: lo,
                difficulty_max: hi,
                rows: counts[d][k],
                share_before: ratio(counts[d][k] as f64, total_rows as f64),
                share_after: ratio(mass[d][k], total_mass),
                mean_weight: ratio(mass[d][k], counts[d][k] as f64),
                rows_after: copied.as_ref().map(|c| c[d][k].round() as u64),
                domain_ess: ess[d],
            });
        }
    }
    rows
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The audit as an aligned text table for people.
pub fn write_text(out: &mut impl Write, rows: &[AuditRow]) -> std::io::Result<()> {
    let materialized = rows.iter().any(|r| r.rows_after.is_some());
    let mut header = vec![
        "domain",
        "level",
        "difficulty",
        "rows",
        "before",
        "after",
        "weight",
    ];
    if materialized {
        header.push("rows after");
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let range = if r.difficulty_min == r.difficulty_max || r.rows == 0 {
                format_number(r.difficulty_min)
            } else {
                format!(
                    "{}–{}",
                    format_number(r.difficulty_min),
                    format_number(r.difficulty_max)
                )
            };
            let mut cells = vec![
                r.domain.clone(),
                r.level.to_string(),
                range,
                r.rows.to_string(),
                format!("{:.1}%", r.share_before * 100.0),
                format!("{:.1}%", r.share_after * 100.0),
                format!("{:.3}", r.mean_weight),
            ];
            if let Some(after) = r.rows_after {
                cells.push(after.to_string());
            }
            cells
        })
        .collect();
    let mut align = vec![Align::Right; header.len()];
    align[0] = Align::Left;
    for line in text_table(&header, &body, &align) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reweight::levels::{Binning, assign};

    #[test]
    fn shares_before_and_after() {
        let groups = assign(
            vec!["m".into()],
            vec![0; 4],
            &[1.0, 1.0, 1.0, 2.0],
            Binning::Ordinal,
        )
        .unwrap();
        let rows = audit(&groups, &[0.5, 0.5, 0.5, 2.5], Some(&[0, 1, 0, 3]));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].rows, rows[0].share_before, rows[0].share_after),
            (3, 0.75, 0.375)
        );
        assert_eq!((rows[1].mean_weight, rows[1].rows_after), (2.5, Some(3)));
        // (0.5 * 3 + 2.5)^2 / (0.25 * 3 + 6.25) = 16 / 7 on both levels.
        assert!(
            rows.iter()
                .all(|r| (r.domain_ess - 16.0 / 7.0).abs() < 1e-12)
        );
        let mut text = Vec::new();
        write_text(&mut text, &rows).unwrap();
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with("rows after"), "{text}");
        assert!(
            lines[1].starts_with("m") && lines[1].contains("75.0%"),
            "{text}"
        );
        assert_eq!((rows[1].difficulty_min, rows[1].difficulty_max), (2.0, 2.0));
    }
}
