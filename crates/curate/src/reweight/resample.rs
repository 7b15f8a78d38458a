//! Systematic resampling: integer copies per row whose expected value is the row's weight.

use crate::rng::unit_interval;

/// Copies per row: within each group (a domain, or everything), `round(sum of weights)` draws
/// at evenly spaced positions `u + j` over the cumulative weights, `u` drawn once per group
/// from `seed`. Every row gets the floor or the ceiling of its weight, the group total is
/// exact, and the same seed gives the same copies.
pub fn systematic(weights: &[f64], groups: &[usize], seed: u64) -> Vec<u32> {
    let mut copies = vec![0u32; weights.len()];
    for rows in super::rules::partition(groups) {
        let group = groups[rows[0]];
        let total: f64 = rows.iter().map(|&i| weights[i]).sum();
        let draws = total.round() as u64;
        if draws == 0 || total <= 0.0 {
            continue;
        }
        let scale = draws as f64 / total;
        let offset = unit_interval(seed, group as u64);
        let mut cumulative = 0.0;
        let mut next = offset; // position of the next draw
        let mut taken = 0u64;
        for &i in &rows {
            cumulative += weights[i] * scale;
            while taken < draws && next < cumulative {
                copies[i] += 1;
                taken += 1;
                next = offset + taken as f64;
            }
        }
        // Rounding in the running sum can leave the last draw just past the end.
        if taken < draws
            && let Some(&last) = rows.iter().rev().find(|&&i| weights[i] > 0.0)
        {
            copies[last] += (draws - taken) as u32;
        }
    }
    copies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_floor_or_ceiling_and_totals_exact() {
        let weights = [0.4, 1.6, 2.5, 0.5, 0.0, 1.0, 3.0, 0.2, 0.8];
        let groups = [0, 0, 0, 0, 0, 1, 1, 1, 1];
        for seed in 0..50 {
            let copies = systematic(&weights, &groups, seed);
            for (c, w) in copies.iter().zip(weights) {
                assert!(
                    f64::from(*c) >= w.floor() && f64::from(*c) <= w.ceil(),
                    "{copies:?}"
                );
            }
            assert_eq!(copies[..5].iter().sum::<u32>(), 5);
            assert_eq!(copies[5..].iter().sum::<u32>(), 5);
            assert_eq!(copies, systematic(&weights, &groups, seed));
        }
    }

    #[test]
    fn unit_weights_copy_every_row_once() {
        assert_eq!(systematic(&[1.0; 7], &[0; 7], 3), vec![1; 7]);
        assert_eq!(systematic(&[1.0, 0.0, 1.0], &[0; 3], 9), vec![1, 0, 1]);
    }

    #[test]
    fn expected_copies_match_weights_over_seeds() {
        let weights = [0.3, 0.7, 1.5, 0.5];
        let mut sums = [0.0; 4];
        let runs = 4000;
        for seed in 0..runs {
            for (s, c) in sums.iter_mut().zip(systematic(&weights, &[0; 4], seed)) {
                *s += f64::from(c);
            }
        }
        for (s, w) in sums.iter().zip(weights) {
            assert!((s / runs as f64 - w).abs() < 0.03, "{sums:?}");
        }
    }
}
