//! A per-thread xorshift64* generator: request ids and non-sticky splits need fast, evenly
//! spread numbers, not secrets, and must not take a lock or make a syscall per request.

use std::cell::Cell;
use std::time::SystemTime;

/// The next pseudo-random number of this thread.
pub fn next_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let thread = std::thread::current().id();
    // The thread id's hash separates threads started in the same nanosecond. This hash only
    // seeds a generator; routing never depends on it across processes.
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&thread, &mut h);
    (nanos ^ std::hash::Hasher::finish(&h).rotate_left(17)) | 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_differ_and_spread() {
        let draws: Vec<u64> = (0..1000).map(|_| super::next_u64() % 100).collect();
        let low = draws.iter().filter(|d| **d < 50).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 50");
    }
}
