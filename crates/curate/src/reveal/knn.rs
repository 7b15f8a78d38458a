//! kNN consensus on embeddings (SimiFeat-style voting): in each of several rounds a random
//! share of the rows is kept, every kept row looks at its k most cosine-similar kept rows, and
//! their labels vote. A row is flagged when, in most of its rounds, its own label is not what
//! its neighbours say.
//!
//! The neighbour lists are computed once, blockwise (a block of queries against a block of
//! candidates, one matrix product each), keeping only the nearest `depth` per row, so memory is
//! O(N * k), never N x N. A round then takes the first k kept rows of each list; a row whose
//! list runs out of kept rows is searched again exactly.

use faer::MatRef;

use super::Probabilities;
use crate::rng::unit_interval;

/// Rows per block of queries and of candidates.
const QUERY_BLOCK: usize = 256;
const CANDIDATE_BLOCK: usize = 4096;

/// Unit-length embeddings, row-major f32.
#[derive(Debug, Clone)]
pub struct Embeddings {
    dim: usize,
    values: Vec<f32>,
}

impl Embeddings {
    /// Rows of `dim` values; each row is scaled to unit length (an all-zero row stays zero).
    pub fn new(dim: usize, mut values: Vec<f32>) -> Embeddings {
        assert!(
            dim > 0 && values.len().is_multiple_of(dim),
            "ragged embeddings"
        );
        for row in values.chunks_mut(dim) {
            let norm = row
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt();
            if norm > 0.0 {
                for x in row.iter_mut() {
                    *x = (*x as f64 / norm) as f32;
                }
            }
        }
        Embeddings { dim, values }
    }

    pub fn len(&self) -> usize {
        self.values.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    fn matrix(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.values, self.len(), self.dim)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct KnnOptions {
    /// Neighbours per row.
    pub k: usize,
    /// Subsampling rounds.
    pub rounds: usize,
    /// Share of rows kept in each round.
    pub sample: f64,
    pub seed: u64,
}

impl Default for KnnOptions {
    fn default() -> Self {
        KnnOptions {
            k: 10,
            rounds: 5,
            sample: 0.9,
            seed: 0,
        }
    }
}

/// What the neighbours said.
#[derive(Debug, Clone)]
pub(crate) struct KnnVote {
    /// Flagged in more than half of the row's rounds.
    pub issue: Vec<bool>,
    /// Per class, the share of neighbours carrying it, averaged over the row's rounds.
    pub votes: Probabilities,
}

/// Neighbour lists: for each row the nearest other rows, most similar first (ties by row).
pub struct Neighbours {
    depth: usize,
    lists: Vec<u32>,
    lengths: Vec<u32>,
}

impl Neighbours {
    pub fn of(&self, row: usize) -> &[u32] {
        let start = row * self.depth;
        &self.lists[start..start + self.lengths[row] as usize]
    }
}

/// The `depth` nearest rows of every row among the rows `keep` allows, blockwise.
pub fn nearest(embeddings: &Embeddings, depth: usize, keep: Option<&[bool]>) -> Neighbours {
    let n = embeddings.len();
    let depth = depth.min(n.saturating_sub(1)).max(1);
    let all = embeddings.matrix();
    let starts: Vec<usize> = (0..n).step_by(QUERY_BLOCK).collect();
    let blocks: Vec<Vec<Vec<(f32, u32)>>> = {
        use rayon::prelude::*;
        starts
            .par_iter()
            .map(|&start| {
                let rows = QUERY_BLOCK.min(n - start);
                let queries = all.subrows(start, rows);
                let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(depth + 1); rows];
                let mut c = 0;
                while c < n {
                    let cols = CANDIDATE_BLOCK.min(n - c);
                    let candidates = all.subrows(c, cols);
                    let similarity = queries * candidates.transpose();
                    for (q, list) in best.iter_mut().enumerate() {
                        let me = start + q;
                        for j in 0..cols {
                            let other = c + j;
                            if other == me || keep.is_some_and(|k| !k[other]) {
                                continue;
                            }
                            insert(list, depth, (similarity[(q, j)], other as u32));
                        }
                    }
                    c += cols;
                }
                best
            })
            .collect()
    };
    let mut lists = vec![0u32; n * depth];
    let mut lengths = vec![0u32; n];
    for (block, &start) in blocks.into_iter().zip(&starts) {
        for (q, list) in block.into_iter().enumerate() {
            let row = start + q;
            lengths[row] = list.len() as u32;
            for (slot, (_, j)) in lists[row * depth..].iter_mut().zip(list) {
                *slot = j;
            }
        }
    }
    Neighbours {
        depth,
        lists,
        lengths,
    }
}

/// Keep `list` sorted by similarity (high first, then row) and at most `depth` long.
#[inline]
fn insert(list: &mut Vec<(f32, u32)>, depth: usize, item: (f32, u32)) {
    let before = |a: &(f32, u32), b: &(f32, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    if list.len() == depth && !before(&item, list.last().expect("full list")) {
        return;
    }
    let at = list.partition_point(|x| before(x, &item));
    list.insert(at, item);
    list.truncate(depth);
}

/// Vote with `labels` (each row's set of classes; one class for single-label data).
pub(crate) fn knn_vote(
    embeddings: &Embeddings,
    labels: &[Vec<usize>],
    classes: usize,
    options: KnnOptions,
) -> KnnVote {
    let n = embeddings.len();
    let k = options.k.min(n.saturating_sub(1)).max(1);
    // Deep enough that k kept rows are almost always among the first `depth`.
    let depth = 2 * k + 16;
    let lists = nearest(embeddings, depth, None);
    let mut tally = Tally {
        classes,
        votes: vec![0.0f64; n * classes],
        flagged: vec![0usize; n],
        rounds: vec![0usize; n],
    };
    for round in 0..options.rounds {
        let keep: Vec<bool> = (0..n)
            .map(|i| unit_interval(options.seed, (round * n + i) as u64) < options.sample)
            .collect();
        let mut short = Vec::new();
        for i in (0..n).filter(|&i| keep[i]) {
            let chosen: Vec<usize> = lists
                .of(i)
                .iter()
                .map(|&j| j as usize)
                .filter(|&j| keep[j])
                .take(k)
                .collect();
            let kept_others = keep.iter().filter(|&&x| x).count() - 1;
            if chosen.len() < k.min(kept_others) {
                short.push(i);
            } else {
                tally.add(i, &chosen, labels);
            }
        }
        if !short.is_empty() {
            // Exact search among this round's kept rows for the rows whose lists ran short.
            let exact = nearest(embeddings, k, Some(&keep));
            for i in short {
                let chosen: Vec<usize> = exact.of(i).iter().map(|&j| j as usize).collect();
                tally.add(i, &chosen, labels);
            }
        }
    }
    // Rows no round kept vote once with all rows.
    for i in 0..n {
        if tally.rounds[i] == 0 {
            let chosen: Vec<usize> = lists.of(i).iter().take(k).map(|&j| j as usize).collect();
            tally.add(i, &chosen, labels);
        }
    }
    let Tally {
        mut votes,
        flagged,
        rounds,
        ..
    } = tally;
    for i in 0..n {
        for v in votes[i * classes..(i + 1) * classes].iter_mut() {
            *v /= rounds[i] as f64;
        }
    }
    KnnVote {
        issue: (0..n).map(|i| 2 * flagged[i] > rounds[i]).collect(),
        votes: Probabilities::new(classes, votes),
    }
}

/// Running sums of the rounds' votes.
struct Tally {
    classes: usize,
    votes: Vec<f64>,
    flagged: Vec<usize>,
    rounds: Vec<usize>,
}

impl Tally {
    fn add(&mut self, row: usize, neighbours: &[usize], labels: &[Vec<usize>]) {
        let mut share = vec![0.0f64; self.classes];
        for &j in neighbours {
            for &c in &labels[j] {
                share[c] += 1.0;
            }
        }
        for s in share.iter_mut() {
            *s /= neighbours.len().max(1) as f64;
        }
        if disagrees(&labels[row], &share) {
            self.flagged[row] += 1;
        }
        self.rounds[row] += 1;
        for (v, s) in self.votes[row * self.classes..].iter_mut().zip(&share) {
            *v += s;
        }
    }
}

/// One round's verdict: a single label that is not a plurality of the votes, or any of several
/// labels carried by fewer than half of the neighbours.
fn disagrees(labels: &[usize], share: &[f64]) -> bool {
    match labels {
        [] => false,
        [only] => {
            let top = share.iter().copied().fold(0.0, f64::max);
            share[*only] < top
        }
        many => many.iter().any(|&c| share[c] < 0.5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn clusters(n_per: usize, seed: u64) -> (Embeddings, Vec<Vec<usize>>) {
        let mut rng = SplitMix64::new(seed);
        let centres = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for (c, centre) in centres.iter().enumerate() {
            for _ in 0..n_per {
                for &x in centre {
                    values.push((x + 0.1 * rng.normal()) as f32);
                }
                labels.push(vec![c]);
            }
        }
        (Embeddings::new(3, values), labels)
    }

    #[test]
    fn blockwise_neighbours_equal_brute_force() {
        let (emb, _) = clusters(400, 1);
        let n = emb.len();
        let lists = nearest(&emb, 7, None);
        for i in [0, 17, 600, n - 1] {
            let mut all: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let s: f32 = emb.row(i).iter().zip(emb.row(j)).map(|(a, b)| a * b).sum();
                    (s, j)
                })
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let expected: Vec<u32> = all[..7].iter().map(|&(_, j)| j as u32).collect();
            // Same rows; the similarity sums may differ in the last bit between a dot product
            // and a matrix product, so compare as sets.
            let mut got = lists.of(i).to_vec();
            let mut want = expected;
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn flipped_labels_are_flagged_and_votes_point_home() {
        let (emb, mut labels) = clusters(60, 2);
        for &i in &[3usize, 70, 150] {
            labels[i] = vec![(labels[i][0] + 1) % 3];
        }
        let vote = knn_vote(&emb, &labels, 3, KnnOptions::default());
        let flagged: Vec<usize> = (0..labels.len()).filter(|&i| vote.issue[i]).collect();
        assert_eq!(flagged, vec![3, 70, 150]);
        assert!(vote.votes.get(3, 0) > 0.8);
        // Every row voted at least once: its shares are an average, summing to 1.
        for i in 0..labels.len() {
            let total: f64 = (0..3).map(|c| vote.votes.get(i, c)).sum();
            assert!((total - 1.0).abs() < 1e-9, "row {i}: {total}");
        }
        // Same seed, same answer; another seed, other rounds.
        let again = knn_vote(&emb, &labels, 3, KnnOptions::default());
        assert_eq!(again.votes, vote.votes);
    }
}
