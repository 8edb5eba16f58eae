//! The kernel-column cache of the SMO solver: the columns of Q used lately, kept within a byte
//! budget, least recently used first out (libsvm's design).
//!
//! A column is kept as a prefix: the solver asks for the first `len` entries (the rows still
//! active); a longer request later fills in the rest. When the solver swaps two rows, every kept
//! column swaps its two entries, or is dropped when it holds only one of them.

/// One cached column: its entries so far and its place in the LRU list.
#[derive(Debug, Default)]
struct Slot {
    data: Vec<f32>,
    prev: usize,
    next: usize,
    linked: bool,
}

/// Columns of Q, indexed by (permuted) row, within a budget of f32 entries.
#[derive(Debug)]
pub struct ColumnCache {
    slots: Vec<Slot>,
    /// Entries that may still be allocated.
    free: usize,
    /// The sentinel of the LRU list is `slots.len()`-th entry, kept outside `slots`.
    head_prev: usize,
    head_next: usize,
}

impl ColumnCache {
    /// A cache for `rows` columns of up to `rows` entries, holding at most `budget_bytes` of
    /// them (but always at least two full columns, the pair one step needs).
    pub fn new(rows: usize, budget_bytes: u64) -> Self {
        let entries = (budget_bytes / 4) as usize;
        let sentinel = rows;
        Self {
            slots: (0..rows).map(|_| Slot::default()).collect(),
            free: entries.max(2 * rows),
            head_prev: sentinel,
            head_next: sentinel,
        }
    }

    fn sentinel(&self) -> usize {
        self.slots.len()
    }

    fn next_of(&self, i: usize) -> usize {
        if i == self.sentinel() {
            self.head_next
        } else {
            self.slots[i].next
        }
    }

    fn set_next(&mut self, i: usize, v: usize) {
        if i == self.sentinel() {
            self.head_next = v;
        } else {
            self.slots[i].next = v;
        }
    }

    fn set_prev(&mut self, i: usize, v: usize) {
        if i == self.sentinel() {
            self.head_prev = v;
        } else {
            self.slots[i].prev = v;
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        self.set_next(prev, next);
        self.set_prev(next, prev);
        self.slots[i].linked = false;
    }

    /// Links `i` as the most recently used.
    fn link_last(&mut self, i: usize) {
        let sentinel = self.sentinel();
        let last = self.head_prev;
        self.slots[i].prev = last;
        self.slots[i].next = sentinel;
        self.set_next(last, i);
        self.head_prev = i;
        self.slots[i].linked = true;
    }

    fn evict(&mut self, i: usize) {
        self.unlink(i);
        self.free += self.slots[i].data.len();
        self.slots[i].data = Vec::new();
    }

    /// Makes column `i` hold at least `len` entries, most recently used, evicting the least
    /// recently used others (never `keep`). Returns the entries already there: the caller fills
    /// `column_mut(i)[filled..len]`.
    pub fn prepare(&mut self, i: usize, len: usize, keep: Option<usize>) -> usize {
        if self.slots[i].linked {
            self.unlink(i);
        }
        let filled = self.slots[i].data.len();
        if filled < len {
            let more = len - filled;
            while self.free < more {
                let victim = self.next_of(self.sentinel());
                let victim = if Some(victim) == keep {
                    self.next_of(victim)
                } else {
                    victim
                };
                if victim == self.sentinel() {
                    break;
                }
                self.evict(victim);
            }
            self.free = self.free.saturating_sub(more);
            self.slots[i].data.resize(len, 0.0);
        }
        self.link_last(i);
        filled.min(len)
    }

    /// Column `i` (as many entries as prepared).
    pub fn column(&self, i: usize) -> &[f32] {
        &self.slots[i].data
    }

    /// Column `i`, to fill.
    pub fn column_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.slots[i].data
    }

    /// Rows `i` and `j` trade places: their columns trade slots, and every column swaps its two
    /// entries (or is dropped when it holds only the lower one).
    pub fn swap_rows(&mut self, i: usize, j: usize) {
        if i == j {
            return;
        }
        let (i, j) = (i.min(j), i.max(j));
        let (li, lj) = (self.slots[i].linked, self.slots[j].linked);
        if li {
            self.unlink(i);
        }
        if lj {
            self.unlink(j);
        }
        self.slots.swap(i, j);
        if lj {
            self.link_last(i);
        }
        if li {
            self.link_last(j);
        }
        let mut h = self.next_of(self.sentinel());
        while h != self.sentinel() {
            let next = self.slots[h].next;
            let len = self.slots[h].data.len();
            if len > j {
                self.slots[h].data.swap(i, j);
            } else if len > i {
                self.evict(h);
            }
            h = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(cache: &mut ColumnCache, i: usize, len: usize) -> usize {
        let filled = cache.prepare(i, len, None);
        for (t, v) in cache.column_mut(i)[filled..len].iter_mut().enumerate() {
            *v = (i * 100 + filled + t) as f32;
        }
        filled
    }

    #[test]
    fn columns_are_kept_extended_and_evicted_least_recent_first() {
        // Room for 2 full columns of 4 rows plus one more entry... at least 2 * rows.
        let mut cache = ColumnCache::new(4, 8 * 4);
        assert_eq!(fill(&mut cache, 0, 4), 0);
        assert_eq!(fill(&mut cache, 1, 2), 0);
        assert_eq!(fill(&mut cache, 0, 4), 4, "kept");
        assert_eq!(fill(&mut cache, 1, 4), 2, "extended from its prefix");
        assert_eq!(cache.column(1), &[100.0, 101.0, 102.0, 103.0]);
        // Column 0 is now the least recently used: a third column evicts it, not column 1.
        assert_eq!(fill(&mut cache, 2, 4), 0);
        assert_eq!(cache.column(0).len(), 0);
        assert_eq!(cache.column(1).len(), 4);
        // Unless it is the one to keep.
        fill(&mut cache, 1, 4);
        assert_eq!(cache.prepare(3, 4, Some(2)), 0);
        assert_eq!(cache.column(2).len(), 4);
        assert_eq!(cache.column(1).len(), 0);
    }

    #[test]
    fn swapping_rows_swaps_entries_and_slots() {
        let mut cache = ColumnCache::new(4, 1 << 20);
        fill(&mut cache, 0, 4);
        fill(&mut cache, 3, 2);
        cache.swap_rows(1, 3);
        // Column 0 swapped its entries 1 and 3; column 3 moved to slot 1 and, holding only
        // entries 0..2 (entry 1 but not entry 3), it was dropped.
        assert_eq!(cache.column(0), &[0.0, 3.0, 2.0, 1.0]);
        assert_eq!(cache.column(1).len(), 0);
        assert_eq!(cache.column(3).len(), 0);
        assert_eq!(fill(&mut cache, 1, 4), 0);
    }
}
