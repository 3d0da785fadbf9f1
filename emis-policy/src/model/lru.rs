//! A bounded table that pushes out its least recently used entry when full: the model's
//! stand-in for the kernel's LRU hash maps, so its flow and fragment tables hold no more
//! than the kernel's do.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

pub struct Lru<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, u64)>,
    /// Entries by the tick they were last written, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry under `key`, without making it more recent.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Stores `value` under `key` and makes it the most recent; returns whether another
    /// entry was pushed out to make room.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        self.tick += 1;
        if let Some((_, old)) = self.entries.insert(key, (value, self.tick)) {
            self.order.remove(&old);
            self.order.insert(self.tick, key);
            return false;
        }
        self.order.insert(self.tick, key);
        if self.entries.len() <= self.capacity {
            return false;
        }
        if let Some((_, oldest)) = self.order.pop_first() {
            self.entries.remove(&oldest);
        }
        true
    }

    /// Rewrites an entry that is present (as the kernel writes in place); absent, nothing.
    pub fn update(&mut self, key: &K, value: V) {
        if self.entries.contains_key(key) {
            self.insert(*key, value);
        }
    }

    pub fn remove(&mut self, key: &K) {
        if let Some((_, tick)) = self.entries.remove(key) {
            self.order.remove(&tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_written_goes_first() {
        let mut lru = Lru::new(2);
        assert!(!lru.insert(1, 'a'));
        assert!(!lru.insert(2, 'b'));
        lru.update(&1, 'A');
        assert!(lru.insert(3, 'c'));
        assert_eq!(
            (lru.peek(&1), lru.peek(&2), lru.peek(&3)),
            (Some(&'A'), None, Some(&'c'))
        );
        lru.remove(&1);
        lru.update(&1, 'x');
        assert_eq!((lru.len(), lru.peek(&1)), (1, None));
    }
}
