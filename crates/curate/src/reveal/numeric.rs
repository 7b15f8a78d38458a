//! The few numeric primitives whose exact behaviour decides cleanlab's flags: numpy's pairwise
//! summation (thresholds and calibration are means and sums that are then compared or rounded),
//! numpy's default argsort order on ties where cleanlab rounds the calibrated joint, round half
//! to even, and the cut of the m smallest values, where rows tied at the cut go by row order.

/// Sum in numpy's order (`np.add.reduce` on a contiguous run): blocks of up to 128 values are
/// summed with eight interleaved accumulators, longer runs are split in two recursively. Equal
/// bits to numpy matter where a mean becomes a threshold that probabilities are compared with.
pub(crate) fn pairwise_sum(values: &[f64]) -> f64 {
    pairwise_sum_by(values.len(), &|i| values[i])
}

/// [`pairwise_sum`] over `len` values produced by `at` (a strided or gathered run).
pub(crate) fn pairwise_sum_by(len: usize, at: &dyn Fn(usize) -> f64) -> f64 {
    sum_range(0, len, at)
}

const BLOCK: usize = 128;

fn sum_range(start: usize, len: usize, at: &dyn Fn(usize) -> f64) -> f64 {
    if len < 8 {
        let mut sum = -0.0;
        for i in 0..len {
            sum += at(start + i);
        }
        sum
    } else if len <= BLOCK {
        let mut r = [0.0f64; 8];
        for (j, slot) in r.iter_mut().enumerate() {
            *slot = at(start + j);
        }
        let whole = len - len % 8;
        let mut i = 8;
        while i < whole {
            for (j, slot) in r.iter_mut().enumerate() {
                *slot += at(start + i + j);
            }
            i += 8;
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < len {
            sum += at(start + i);
            i += 1;
        }
        sum
    } else {
        let mut half = len / 2;
        half -= half % 8;
        sum_range(start, half, at) + sum_range(start + half, len - half, at)
    }
}

/// Mean as `np.mean`: the pairwise sum divided by the count.
pub fn mean(values: &[f64]) -> f64 {
    pairwise_sum(values) / values.len() as f64
}

/// numpy's `less` for floats: NaN sorts last.
#[inline]
fn less(a: f64, b: f64) -> bool {
    a < b || (b.is_nan() && !a.is_nan())
}

/// `np.argsort(values)` in the order numpy 2.x gives on x86-64 with AVX2, ties included.
///
/// numpy hands float64 argsort to x86-simd-sort, whose order on ties is not stable: runs of up
/// to 256 values are sorted by a bitonic network over 4-lane registers. cleanlab takes the first
/// `m` of such an order (calibration rounding, prune counts), so on ties the network decides
/// which entries move. Runs of up to 256 values (class counts, small classes) follow the network
/// exactly; longer runs are ordered stably by index (numpy partitions those with vector compress
/// first, and its order on ties there also differs between AVX2 and AVX-512 machines).
pub fn argsort(values: &[f64]) -> Vec<usize> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    let sorted = values.windows(2).all(|w| !less(w[1], w[0]));
    if n < 2 || sorted {
        return order;
    }
    if n <= NETWORK_MAX {
        return network_argsort(values);
    }
    order.sort_by(|&a, &b| {
        if less(values[a], values[b]) {
            std::cmp::Ordering::Less
        } else if less(values[b], values[a]) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    order
}

const NETWORK_MAX: usize = 256;
const LANES: usize = 4;

/// One AVX2 register of keys and the matching register of indices.
#[derive(Clone, Copy)]
struct Lanes {
    keys: [f64; LANES],
    index: [usize; LANES],
}

impl Lanes {
    fn permuted(&self, perm: [usize; LANES]) -> Lanes {
        Lanes {
            keys: perm.map(|p| self.keys[p]),
            index: perm.map(|p| self.index[p]),
        }
    }

    /// `cmp_merge`: lanes in `take_max` keep the larger of each pair, others the smaller; a lane
    /// keeps its own index when the kept key equals its own (so ties never move).
    fn cmp_merge(&mut self, perm: [usize; LANES], take_max: [bool; LANES]) {
        let other = self.permuted(perm);
        for (lane, &max) in take_max.iter().enumerate() {
            let (a, b) = (self.keys[lane], other.keys[lane]);
            // _mm256_min_pd(b, a) / _mm256_max_pd(b, a): the second operand on equality.
            let kept = if max {
                if b > a { b } else { a }
            } else if b < a {
                b
            } else {
                a
            };
            if kept != a {
                self.index[lane] = other.index[lane];
            }
            self.keys[lane] = kept;
        }
    }

    fn reverse(&mut self) {
        *self = self.permuted([3, 2, 1, 0]);
    }

    /// `sort_reg_4lanes`.
    fn sort(&mut self) {
        const A: [bool; LANES] = [false, true, false, true];
        const C: [bool; LANES] = [false, false, true, true];
        self.cmp_merge([1, 0, 3, 2], A);
        self.cmp_merge([3, 2, 1, 0], C);
        self.cmp_merge([1, 0, 3, 2], A);
    }

    /// `bitonic_merge_reg_4lanes`.
    fn bitonic_merge(&mut self) {
        self.cmp_merge([2, 3, 0, 1], [false, false, true, true]);
        self.cmp_merge([1, 0, 3, 2], [false, true, false, true]);
    }
}

/// `COEX` on two registers: lane-wise min into the first, max into the second.
fn compare_exchange(vectors: &mut [Lanes], first: usize, second: usize) {
    let (a, b) = (vectors[first], vectors[second]);
    for lane in 0..LANES {
        let (x, y) = (a.keys[lane], b.keys[lane]);
        let low = if x < y { x } else { y };
        let high = if x > y { x } else { y };
        let stays = low == x;
        vectors[first].keys[lane] = low;
        vectors[second].keys[lane] = high;
        vectors[first].index[lane] = if stays { a.index[lane] } else { b.index[lane] };
        vectors[second].index[lane] = if stays { b.index[lane] } else { a.index[lane] };
    }
}

/// `bitonic_merge_n_vec`: merge a group of sorted registers (the upper half reversed first).
fn merge_group(vectors: &mut [Lanes]) {
    let n = vectors.len();
    for i in 0..n / 2 {
        vectors[n - 1 - i].reverse();
        compare_exchange(vectors, i, n - 1 - i);
        vectors[n - 1 - i].reverse();
    }
    let mut span = n / 2;
    while span >= 2 {
        for start in (0..n).step_by(span) {
            for i in 0..span / 2 {
                compare_exchange(vectors, start + i, start + i + span / 2);
            }
        }
        span /= 2;
    }
    for vector in vectors.iter_mut() {
        vector.bitonic_merge();
    }
}

/// `argsort_n` for at most 256 values: load into as few 4-lane registers as the size needs
/// (a power of two, padded with +inf), sort each, merge in groups of 2, 4, ... registers.
fn network_argsort(values: &[f64]) -> Vec<usize> {
    let n = values.len();
    let mut count = NETWORK_MAX / LANES;
    while count > 1 && n * 2 <= count * LANES {
        count /= 2;
    }
    let mut vectors: Vec<Lanes> = (0..count)
        .map(|v| {
            let mut lanes = Lanes {
                keys: [f64::INFINITY; LANES],
                index: [usize::MAX; LANES],
            };
            for lane in 0..LANES {
                let i = v * LANES + lane;
                if i < n {
                    lanes.keys[lane] = values[i];
                    lanes.index[lane] = i;
                }
            }
            lanes
        })
        .collect();
    for vector in vectors.iter_mut() {
        vector.sort();
    }
    let mut group = 2;
    while group <= count {
        for chunk in vectors.chunks_mut(group) {
            merge_group(chunk);
        }
        group *= 2;
    }
    vectors.iter().flat_map(|v| v.index).take(n).collect()
}

/// The `m` smallest of some values, sorted by position, and which of them were picked from a
/// tie across the cut.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cut {
    pub chosen: Vec<usize>,
    /// Chosen positions whose value equals the cut while other positions with that value were
    /// left out: rows a different tie order would have swapped (ascending).
    pub tied: Vec<usize>,
}

/// The positions of the `m` smallest values, ties broken by position (the earlier row first),
/// in O(n). cleanlab takes the first `m` of `np.argsort`, whose order among equal values is
/// that of numpy's sort kernel (it differs between AVX2 and AVX-512 machines); here it is the
/// row order, and the rows that were chosen from a tie at the cut are named, so a difference
/// from cleanlab can be traced to them.
pub(crate) fn smallest(values: &[f64], m: usize) -> Cut {
    let n = values.len();
    if m == 0 {
        return Cut::default();
    }
    if m >= n {
        return Cut {
            chosen: (0..n).collect(),
            tied: Vec::new(),
        };
    }
    let cut = if m <= SMALL_CUT {
        smallest_few_cut(values, m)
    } else {
        let mut keys: Vec<f64> = values.to_vec();
        let (_, cut, _) = keys.select_nth_unstable_by(m - 1, |a, b| {
            if less(*a, *b) {
                std::cmp::Ordering::Less
            } else if less(*b, *a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        *cut
    };
    let equal = |x: f64| !less(x, cut) && !less(cut, x);
    let (below, at_cut) = values.iter().fold((0, 0), |(below, at_cut), &x| {
        (
            below + usize::from(less(x, cut)),
            at_cut + usize::from(equal(x)),
        )
    });
    let mut from_tie = m - below;
    let straddles = below + at_cut > m;
    let mut cut_rows = Cut::default();
    for (i, &x) in values.iter().enumerate() {
        if less(x, cut) {
            cut_rows.chosen.push(i);
        } else if from_tie > 0 && equal(x) {
            from_tie -= 1;
            cut_rows.chosen.push(i);
            if straddles {
                cut_rows.tied.push(i);
            }
        }
    }
    cut_rows
}

/// Up to this many, the smallest values are kept in a sorted buffer during one scan.
const SMALL_CUT: usize = 32;

/// The `m`-th smallest value, by one scan with a sorted buffer of `m`.
fn smallest_few_cut(values: &[f64], m: usize) -> f64 {
    let mut best: Vec<f64> = Vec::with_capacity(m + 1);
    for &x in values {
        if best.len() == m && !less(x, best[m - 1]) {
            continue;
        }
        let at = best.partition_point(|&y| !less(x, y));
        best.insert(at, x);
        best.truncate(m);
    }
    best[m - 1]
}

/// `np.round`: halves go to the even neighbour.
#[inline]
pub(crate) fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// First index of the largest value (`np.argmax`; a NaN wins as numpy's does).
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate().skip(1) {
        let current = row[best];
        if current.is_nan() {
            return best;
        }
        if x > current || x.is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn pairwise_sum_splits_like_numpy() {
        // 0.1 repeated: the association order shows in the last bits.
        let values = vec![0.1; 1000];
        let sequential: f64 = values.iter().sum();
        let pairwise = pairwise_sum(&values);
        // numpy: np.add.reduce(np.full(1000, 0.1)) == 100.00000000000001 (bits below)
        assert_eq!(pairwise.to_bits(), 100.00000000000001f64.to_bits());
        assert_ne!(pairwise.to_bits(), sequential.to_bits());
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(pairwise_sum(&[]), 0.0);
    }

    #[test]
    fn argsort_sorts_and_follows_numpys_network_on_ties() {
        // numpy 2.4 on AVX2: np.argsort([3, 1, 2, 1, 0, 1]) == [4, 1, 5, 3, 2, 0]
        let values = [3.0, 1.0, 2.0, 1.0, 0.0, 1.0];
        assert_eq!(argsort(&values), vec![4, 1, 5, 3, 2, 0]);
        let alternating = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        assert_eq!(argsort(&alternating), vec![0, 2, 6, 4, 8, 3, 5, 1, 7, 9]);
        let mixed = [0.2, 0.1, 0.1, 0.3, 0.1, 0.0, 0.1, 0.1, 0.0, 0.0];
        assert_eq!(argsort(&mixed), vec![5, 8, 9, 1, 6, 7, 4, 2, 0, 3]);
        let mut rng = SplitMix64::new(7);
        for n in [17, 100, 1000, 5000] {
            let values: Vec<f64> = (0..n).map(|_| (rng.next_f64() * 20.0).floor()).collect();
            let order = argsort(&values);
            let mut seen = vec![false; n];
            for w in order.windows(2) {
                assert!(values[w[0]] <= values[w[1]]);
            }
            for &i in &order {
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
    }

    #[test]
    fn smallest_breaks_ties_by_position_and_names_them() {
        let cut = smallest(&[0.3, 0.0, 0.5, 0.0, 0.0, 0.1], 2);
        assert_eq!(cut.chosen, vec![1, 3]);
        assert_eq!(cut.tied, vec![1, 3]);
        // No tie across the cut: nothing to name.
        let cut = smallest(&[0.3, 0.0, 0.5, 0.0, 0.0, 0.1], 3);
        assert_eq!((cut.chosen, cut.tied), (vec![1, 3, 4], vec![]));
        let cut = smallest(&[0.3, 0.0, 0.5, 0.1, 0.1, 0.1], 2);
        assert_eq!((cut.chosen, cut.tied), (vec![1, 3], vec![3]));
        // Against a stable sort by value, at every size and cut.
        let mut rng = SplitMix64::new(3);
        for n in [1usize, 5, 40, 300] {
            for distinct in [3.0, 1e9] {
                let values: Vec<f64> = (0..n)
                    .map(|_| (rng.next_f64() * distinct).floor())
                    .collect();
                let mut stable: Vec<usize> = (0..n).collect();
                stable.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
                for m in [0, 1, n / 3, n / 2, n] {
                    let mut expected: Vec<usize> = stable[..m].to_vec();
                    expected.sort_unstable();
                    let cut = smallest(&values, m);
                    assert_eq!(cut.chosen, expected, "n {n} m {m}");
                    let straddles = m > 0
                        && m < n
                        && stable[m..]
                            .iter()
                            .any(|&i| values[i] == values[stable[m - 1]]);
                    let tied: Vec<usize> = expected
                        .iter()
                        .copied()
                        .filter(|&i| straddles && values[i] == values[stable[m - 1]])
                        .collect();
                    assert_eq!(cut.tied, tied, "n {n} m {m}");
                }
            }
        }
    }

    #[test]
    fn rounding_and_argmax() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-0.5), -0.0);
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
        assert_eq!(argmax(&[0.5]), 0);
    }
}
