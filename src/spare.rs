//! Emptied containers kept per thread for the next user: a connection's
//! buffers while its client is idle, a bound stretch's pipeline queue. The
//! next one to need a container takes a warm one instead of a fresh
//! allocation. A few per list and thread, and none that grew large, so the
//! memory they keep is small and bounded.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::thread::LocalKey;

use bytes::BytesMut;

/// A per-thread list of spare containers (declare it with `thread_local!`).
pub type List<T> = LocalKey<RefCell<Vec<T>>>;

/// Containers kept per list and thread.
const KEEP: usize = 16;

/// A container that, emptied, keeps its allocation.
pub trait Reusable {
    fn capacity(&self) -> usize;
    fn clear(&mut self);
}

impl Reusable for BytesMut {
    fn capacity(&self) -> usize {
        BytesMut::capacity(self)
    }
    fn clear(&mut self) {
        BytesMut::clear(self)
    }
}

impl<T> Reusable for VecDeque<T> {
    fn capacity(&self) -> usize {
        VecDeque::capacity(self)
    }
    fn clear(&mut self) {
        VecDeque::clear(self)
    }
}

/// A kept container, if the list has one.
pub fn take<T>(list: &'static List<T>) -> Option<T> {
    list.try_with(|l| l.borrow_mut().pop()).ok().flatten()
}

/// Keeps `item`, emptied, unless it holds no allocation or one larger than
/// `max_capacity` (a big result or a long pipeline went through), or the
/// list is full.
pub fn put<T: Reusable>(list: &'static List<T>, mut item: T, max_capacity: usize) {
    if item.capacity() == 0 || item.capacity() > max_capacity {
        return;
    }
    item.clear();
    let _ = list.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < KEEP {
            l.push(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_few_small_emptied_containers() {
        const MAX: usize = 32 * 1024;
        thread_local! {
            static TEST: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        }
        put(&TEST, BytesMut::with_capacity(MAX + 1), MAX);
        put(&TEST, BytesMut::new(), MAX);
        assert_eq!(
            TEST.with_borrow(Vec::len),
            0,
            "large and empty ones are freed"
        );
        for _ in 0..KEEP + 5 {
            let mut buf = BytesMut::with_capacity(1024);
            buf.extend_from_slice(b"left over");
            put(&TEST, buf, MAX);
        }
        assert_eq!(TEST.with_borrow(Vec::len), KEEP);
        let buf = take(&TEST).expect("kept");
        assert!(buf.is_empty() && buf.capacity() >= 1024);
        for _ in 0..KEEP - 1 {
            take(&TEST).expect("kept");
        }
        assert!(take(&TEST).is_none(), "none left");
    }
}
