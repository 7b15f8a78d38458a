//! Evaluation results summed up: per-domain summaries of row losses and answer checks, and
//! arms (training recipes) compared over seeds with the gain of one over another.

/// What one row's evaluation gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowResult {
    /// Summed loss and loss tokens, when the row has a response.
    pub loss: Option<(f64, usize)>,
    pub generation: Option<String>,
    pub predicted: Option<String>,
    /// None without a reference answer (or when nothing was generated).
    pub correct: Option<bool>,
}

/// One summary row: a domain (or `all`).
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub domain: String,
    pub rows: usize,
    pub loss_tokens: usize,
    /// Token-weighted mean loss: summed losses over summed loss tokens.
    pub mean_loss: Option<f64>,
    /// Rows with a reference answer, and how many were answered correctly.
    pub checked: usize,
    pub correct: usize,
}

/// Per domain in order of first appearance, then `all`.
pub fn summarize(
    results: &[RowResult],
    domains: Option<&[String]>,
    generated: bool,
) -> Vec<SummaryRow> {
    let mut names: Vec<String> = Vec::new();
    if let Some(domains) = domains {
        for d in domains {
            if !names.contains(d) {
                names.push(d.clone());
            }
        }
    }
    let row_of = |name: &str, keep: &dyn Fn(usize) -> bool| {
        let mut row = SummaryRow {
            domain: name.to_string(),
            rows: 0,
            loss_tokens: 0,
            mean_loss: None,
            checked: 0,
            correct: 0,
        };
        let mut total = 0.0;
        for (_, result) in results.iter().enumerate().filter(|&(i, _)| keep(i)) {
            row.rows += 1;
            if let Some((loss, tokens)) = result.loss {
                total += loss;
                row.loss_tokens += tokens;
            }
            if generated && let Some(correct) = result.correct {
                row.checked += 1;
                row.correct += usize::from(correct);
            }
        }
        if row.loss_tokens > 0 {
            row.mean_loss = Some(total / row.loss_tokens as f64);
        }
        row
    };
    let mut summary: Vec<SummaryRow> = names
        .iter()
        .map(|name| {
            let domains = domains.expect("names come from domains");
            row_of(name, &|i| domains[i] == *name)
        })
        .collect();
    summary.push(row_of("all", &|_| true));
    summary
}

/// One arm's runs: per run, the summed loss and loss tokens per domain (`all` last).
pub struct Arm {
    pub name: String,
    pub runs: Vec<Vec<(String, f64, f64)>>,
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    pub arm: String,
    pub domain: String,
    pub runs: usize,
    pub mean: f64,
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

/// Per domain: the token-mean loss of each run, then their mean, spread and range.
pub fn arm_stats(arm: &Arm) -> Vec<ArmStats> {
    let mut domains: Vec<String> = Vec::new();
    for run in &arm.runs {
        for (domain, _, _) in run {
            if !domains.contains(domain) {
                domains.push(domain.clone());
            }
        }
    }
    // `all` last.
    domains.sort_by_key(|d| d == "all");
    domains
        .into_iter()
        .map(|domain| {
            let values: Vec<f64> = arm
                .runs
                .iter()
                .filter_map(|run| run.iter().find(|(d, _, _)| *d == domain))
                .filter(|(_, _, tokens)| *tokens > 0.0)
                .map(|(_, loss, tokens)| loss / tokens)
                .collect();
            let n = values.len();
            let mean = values.iter().sum::<f64>() / n.max(1) as f64;
            let std = (n > 1).then(|| {
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            });
            ArmStats {
                arm: arm.name.clone(),
                domain,
                runs: n,
                mean,
                std,
                min: values.iter().cloned().fold(f64::INFINITY, f64::min),
                max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Per domain the control's mean loss minus the candidate's (positive: the candidate is better).
pub fn gains(stats: &[ArmStats], candidate: &str, control: &str) -> Vec<(String, f64)> {
    stats
        .iter()
        .filter(|s| s.arm == candidate)
        .filter_map(|c| {
            stats
                .iter()
                .find(|s| s.arm == control && s.domain == c.domain)
                .map(|k| (c.domain.clone(), k.mean - c.mean))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_weighs_losses_by_tokens_and_counts_checked_answers() {
        let results = [
            RowResult {
                loss: Some((6.0, 3)),
                correct: Some(true),
                ..Default::default()
            },
            RowResult {
                loss: Some((2.0, 2)),
                correct: Some(false),
                ..Default::default()
            },
            RowResult {
                loss: Some((1.0, 1)),
                correct: None,
                ..Default::default()
            },
        ];
        let domains = ["math", "code", "math"].map(String::from);
        let summary = summarize(&results, Some(&domains), true);
        assert_eq!(summary.len(), 3);
        assert_eq!(summary[0].domain, "math");
        assert_eq!(summary[0].rows, 2);
        assert_eq!(summary[0].mean_loss, Some(7.0 / 4.0));
        assert_eq!((summary[0].checked, summary[0].correct), (1, 1));
        assert_eq!(summary[2].domain, "all");
        assert_eq!(summary[2].mean_loss, Some(9.0 / 6.0));
        assert_eq!((summary[2].checked, summary[2].correct), (2, 1));
    }

    #[test]
    fn stats_are_per_run_token_means_and_gains_favour_lower_loss() {
        let candidate = Arm {
            name: "influence".into(),
            runs: vec![
                vec![("math".into(), 10.0, 5.0), ("all".into(), 10.0, 5.0)],
                vec![("math".into(), 12.0, 4.0), ("all".into(), 12.0, 4.0)],
            ],
        };
        let control = Arm {
            name: "random".into(),
            runs: vec![vec![("math".into(), 16.0, 4.0), ("all".into(), 16.0, 4.0)]],
        };
        let stats: Vec<ArmStats> = [&candidate, &control]
            .into_iter()
            .flat_map(arm_stats)
            .collect();
        assert_eq!(stats[0].domain, "math");
        assert_eq!(stats[0].mean, 2.5);
        assert!((stats[0].std.unwrap() - (0.5f64).sqrt()).abs() < 1e-12);
        assert_eq!((stats[0].min, stats[0].max), (2.0, 3.0));
        assert_eq!(stats[2].std, None);
        let gains = gains(&stats, "influence", "random");
        assert_eq!(gains, vec![("math".into(), 1.5), ("all".into(), 1.5)]);
    }
}
