//! Emptied buffers kept per thread for the next user: a connection's read
//! and write buffers while its client is idle. The next connection to need
//! them takes a warm pair instead of two fresh allocations. A few pairs per
//! list and thread, and none that grew large, so the memory they keep is
//! small and bounded.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

/// A connection's read and write buffers, kept and taken together (one
/// thread-local access each way, per idle spell of a client).
pub type Pair = (BytesMut, BytesMut);

/// A per-thread list of spare pairs (declare it with `thread_local!`).
pub type List = LocalKey<RefCell<Vec<Pair>>>;

/// Pairs kept per list and thread.
const KEEP: usize = 16;

/// A kept pair, if the list has one.
pub fn take(list: &'static List) -> Option<Pair> {
    list.try_with(|l| l.borrow_mut().pop()).ok().flatten()
}

/// Keeps `pair`, emptied, unless either buffer holds no allocation or one
/// larger than `max_capacity` (a big result went through), or the list is
/// full.
pub fn put(list: &'static List, mut pair: Pair, max_capacity: usize) {
    let fits = |b: &BytesMut| (1..=max_capacity).contains(&b.capacity());
    if !fits(&pair.0) || !fits(&pair.1) {
        return;
    }
    pair.0.clear();
    pair.1.clear();
    let _ = list.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < KEEP {
            l.push(pair);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_few_small_emptied_pairs() {
        const MAX: usize = 32 * 1024;
        thread_local! {
            static TEST: RefCell<Vec<Pair>> = const { RefCell::new(Vec::new()) };
        }
        let small = || BytesMut::with_capacity(1024);
        put(&TEST, (BytesMut::with_capacity(MAX + 1), small()), MAX);
        put(&TEST, (small(), BytesMut::with_capacity(MAX + 1)), MAX);
        put(&TEST, (BytesMut::new(), small()), MAX);
        put(&TEST, (small(), BytesMut::new()), MAX);
        assert_eq!(
            TEST.with_borrow(Vec::len),
            0,
            "pairs with a large or an empty buffer are freed"
        );
        for _ in 0..KEEP + 5 {
            let mut read = small();
            read.extend_from_slice(b"left over");
            let mut write = small();
            write.extend_from_slice(b"left over too");
            put(&TEST, (read, write), MAX);
        }
        assert_eq!(TEST.with_borrow(Vec::len), KEEP);
        let (read, write) = take(&TEST).expect("kept");
        assert!(read.is_empty() && read.capacity() >= 1024);
        assert!(write.is_empty() && write.capacity() >= 1024);
        for _ in 0..KEEP - 1 {
            take(&TEST).expect("kept");
        }
        assert!(take(&TEST).is_none(), "none left");
    }
}
