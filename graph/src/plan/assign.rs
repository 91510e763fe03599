//! Offsets in one arena for buffers with known lifetimes: the "greedy by
//! size" strategy (as in TFLite's arena planner). Buffers are placed
//! largest first, each at the lowest aligned offset that overlaps no placed
//! buffer whose lifetime intersects its own. Ties break by index, so the
//! result is deterministic.

use super::round_up;

/// One buffer to place: live at positions `first..=last`, `bytes` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub first: usize,
    pub last: usize,
    pub bytes: usize,
}

impl Interval {
    /// Whether the two lifetimes share a position.
    pub fn intersects(&self, other: &Interval) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Offsets chosen for a list of [`Interval`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Per interval (same order), its byte offset: a multiple of the
    /// alignment.
    pub offsets: Vec<usize>,
    /// The arena size: the largest `offset + size`, sizes rounded up to the
    /// alignment.
    pub arena_bytes: usize,
}

/// Places `items` greedily by size; `alignment` (at least 1) divides every
/// offset and rounds every size up.
pub fn greedy_by_size(items: &[Interval], alignment: usize) -> Assignment {
    let size = |i: usize| round_up(items[i].bytes, alignment);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| size(b).cmp(&size(a)).then(a.cmp(&b)));

    let mut offsets = vec![0; items.len()];
    // Placed intervals, sorted by (offset, index).
    let mut placed: Vec<usize> = Vec::with_capacity(items.len());
    let mut arena_bytes = 0;
    for &i in &order {
        let need = size(i);
        let mut at = 0;
        for &j in &placed {
            if !items[i].intersects(&items[j]) {
                continue;
            }
            if offsets[j] >= at + need {
                // The gap before `j` fits; every later buffer starts later.
                break;
            }
            at = at.max(offsets[j] + size(j));
        }
        offsets[i] = at;
        let pos = placed.partition_point(|&j| (offsets[j], j) < (at, i));
        placed.insert(pos, i);
        arena_bytes = arena_bytes.max(at + need);
    }
    Assignment {
        offsets,
        arena_bytes,
    }
}

/// The lower bound for any placement: the largest total size (rounded up
/// to `alignment`) of intervals live at one position.
pub fn live_peak(items: &[Interval], alignment: usize) -> usize {
    let Some(end) = items.iter().map(|it| it.last + 1).max() else {
        return 0;
    };
    let mut born = vec![0usize; end + 1];
    let mut dead = vec![0usize; end + 1];
    for it in items {
        let size = round_up(it.bytes, alignment);
        born[it.first] += size;
        dead[it.last + 1] += size;
    }
    let (mut live, mut peak) = (0usize, 0usize);
    for (b, d) in born.iter().zip(&dead) {
        // Everything dying here was born earlier, so this never underflows.
        live = live + b - d;
        peak = peak.max(live);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::super::check::{Block, check_blocks};
    use super::*;

    fn iv(first: usize, last: usize, bytes: usize) -> Interval {
        Interval { first, last, bytes }
    }

    fn blocks(items: &[Interval], a: &Assignment) -> Vec<Block> {
        items
            .iter()
            .zip(&a.offsets)
            .enumerate()
            .map(|(id, (it, &offset))| Block {
                id,
                first: it.first,
                last: it.last,
                offset,
                bytes: it.bytes,
            })
            .collect()
    }

    /// Assigns, checks with the independent sweep, and returns the result.
    fn assign_checked(items: &[Interval], alignment: usize) -> Assignment {
        let a = greedy_by_size(items, alignment);
        check_blocks(&blocks(items, &a), a.arena_bytes, alignment).unwrap();
        assert!(a.arena_bytes >= live_peak(items, alignment));
        a
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let items = [iv(0, 1, 100), iv(2, 3, 100), iv(4, 4, 30)];
        let a = assign_checked(&items, 64);
        assert_eq!(a.offsets, [0, 0, 0]);
        assert_eq!(a.arena_bytes, 128);
        assert_eq!(live_peak(&items, 64), 128);
    }

    #[test]
    fn intersecting_lifetimes_stack_largest_first() {
        // Touching at position 2 counts as intersecting.
        let items = [iv(0, 2, 64), iv(2, 4, 256), iv(1, 3, 128)];
        let a = assign_checked(&items, 64);
        assert_eq!(a.offsets, [384, 0, 256]);
        assert_eq!(a.arena_bytes, 448);
        assert_eq!(live_peak(&items, 64), 448);
    }

    #[test]
    fn fills_the_lowest_gap_that_fits() {
        // 1 dies before 3 and 4 are born, so they reuse its bytes: 3 in
        // the gap 1 leaves between 0 and 2, and 4 right above 3.
        let items = [
            iv(0, 9, 512),
            iv(0, 3, 256),
            iv(0, 9, 256),
            iv(5, 9, 128),
            iv(5, 9, 64),
        ];
        let a = assign_checked(&items, 64);
        assert_eq!(a.offsets, [0, 512, 768, 512, 640]);
        assert_eq!(a.arena_bytes, 1024);
        assert_eq!(live_peak(&items, 64), 1024);
    }

    #[test]
    fn alignment_rounds_sizes_and_offsets() {
        let items = [iv(0, 5, 1), iv(0, 5, 65), iv(0, 5, 3)];
        let a = assign_checked(&items, 64);
        assert_eq!(a.offsets, [128, 0, 192]);
        assert_eq!(a.arena_bytes, 256);
        let a = assign_checked(&items, 1);
        assert_eq!(a.offsets, [68, 0, 65]);
        assert_eq!(a.arena_bytes, 69);
    }

    #[test]
    fn ties_break_by_index() {
        let items = [iv(0, 3, 64), iv(1, 2, 64), iv(0, 1, 64)];
        let a = assign_checked(&items, 64);
        assert_eq!(a.offsets, [0, 64, 128]);
        let again = greedy_by_size(&items, 64);
        assert_eq!(a, again);
    }

    #[test]
    fn zero_sized_and_empty_sets() {
        assert_eq!(greedy_by_size(&[], 64).arena_bytes, 0);
        assert_eq!(live_peak(&[], 64), 0);
        let items = [iv(0, 3, 0), iv(0, 3, 10), iv(1, 1, 0)];
        let a = assign_checked(&items, 64);
        assert_eq!(a.arena_bytes, 64);
    }

    /// A deterministic pseudo-random generator (SplitMix64).
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn random_interval_sets_are_safe_and_near_the_bound() {
        let mut seed = 42;
        for case in 0..200 {
            let n = 1 + (next(&mut seed) % 60) as usize;
            let items: Vec<Interval> = (0..n)
                .map(|_| {
                    let first = (next(&mut seed) % 40) as usize;
                    let len = (next(&mut seed) % 12) as usize;
                    let bytes = (next(&mut seed) % 5000) as usize;
                    iv(first, first + len, bytes)
                })
                .collect();
            let align = [1, 8, 64][case % 3];
            let a = assign_checked(&items, align);
            let bound = live_peak(&items, align);
            assert!(
                a.arena_bytes <= 2 * bound,
                "case {case}: arena {} vs live peak {bound}",
                a.arena_bytes
            );
        }
    }

    #[test]
    fn checker_catches_a_broken_assignment() {
        let items = [iv(0, 2, 100), iv(2, 4, 100), iv(3, 4, 64)];
        let good = assign_checked(&items, 64);
        assert_eq!(good.offsets, [0, 128, 0]);

        // Two buffers live at position 2 moved onto each other.
        let mut bad = blocks(&items, &good);
        bad[1].offset = 64;
        let err = check_blocks(&bad, good.arena_bytes, 64).unwrap_err();
        assert!(err.contains("#0") && err.contains("#1"), "{err}");

        // A buffer past the end of the arena.
        let mut bad = blocks(&items, &good);
        bad[2].offset = 256;
        let err = check_blocks(&bad, good.arena_bytes, 64).unwrap_err();
        assert!(err.contains("#2") && err.contains("arena"), "{err}");

        // A misaligned offset.
        let mut bad = blocks(&items, &good);
        bad[2].offset = 200;
        let err = check_blocks(&bad, 512, 64).unwrap_err();
        assert!(err.contains("aligned"), "{err}");

        // Disjoint lifetimes may overlap in memory: not an error.
        let mut fine = blocks(&items, &good);
        fine[2].offset = 0;
        fine[0].offset = 0;
        check_blocks(&fine, good.arena_bytes, 64).unwrap();
    }
}
