//! A bounded ring: the newest items up to a capacity, the oldest dropped first. It allocates
//! nothing until the first push, so an Executor that never changes costs a few words.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            items: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Adds `item`, dropping the oldest ones beyond the capacity.
    pub fn push(&mut self, item: T) {
        while self.items.len() >= self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Changes the capacity; a smaller one drops the oldest items now and gives their memory
    /// back.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
        if self.items.len() > self.cap {
            let extra = self.items.len() - self.cap;
            self.items.drain(..extra);
            self.items.shrink_to_fit();
        }
    }

    /// Drops the items at the front for which `old` holds (the ones past the time window).
    pub fn drop_front_while(&mut self, old: impl Fn(&T) -> bool) {
        while self.items.front().is_some_and(&old) {
            self.items.pop_front();
        }
    }

    pub fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter()
    }

    /// Bytes held by the ring's buffer (not by what its items point to).
    pub fn buffer_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_items_up_to_its_capacity() {
        let mut r = Ring::new(3);
        assert_eq!(
            r.buffer_bytes(),
            0,
            "nothing is allocated before the first push"
        );
        for i in 0..10 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [7, 8, 9]);
        r.set_cap(2);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [8, 9]);
        r.drop_front_while(|&i| i < 9);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [9]);
        assert_eq!(r.last(), Some(&9));
    }
}
