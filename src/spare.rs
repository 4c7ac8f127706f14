//! Emptied buffers kept per thread for the next user: a connection's
//! buffers while its client is idle. The next connection to need one takes
//! a warm one instead of a fresh allocation. A few per list and thread, and
//! none that grew large, so the memory they keep is small and bounded.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

/// A per-thread list of spare buffers (declare it with `thread_local!`).
pub type List = LocalKey<RefCell<Vec<BytesMut>>>;

/// Buffers kept per list and thread.
const KEEP: usize = 16;

/// A kept buffer, if the list has one.
pub fn take(list: &'static List) -> Option<BytesMut> {
    list.try_with(|l| l.borrow_mut().pop()).ok().flatten()
}

/// Keeps `item`, emptied, unless it holds no allocation or one larger than
/// `max_capacity` (a big result went through), or the
/// list is full.
pub fn put(list: &'static List, mut item: BytesMut, max_capacity: usize) {
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
