//! The harnesses behind pgdyno's fuzz targets, one function per target.
//!
//! Each `fuzz_targets/<name>.rs` is a one-line libFuzzer entry point that
//! calls the function of the same name here, so the same harness also runs
//! as a plain `cargo test` over the committed seeds and regressions (see
//! the tests below): a smoke check that needs neither nightly nor
//! cargo-fuzz.
//!
//! - [`protocol`]: the startup packet, client-message and backend-message
//!   framing ([`pgdyno::protocol::frame::Scanner`]) and the bodies pgdyno
//!   decodes;
//! - [`relay`]: the relay's own translation of a client and a backend
//!   stream, interleaved ([`pgdyno::relay::fuzzing`]);
//! - [`scram`]: both sides of SCRAM-SHA-256;
//! - [`config`]: `userlist.txt`, upstream URLs / key=value strings, and
//!   the TOML config file through `Config::load`.
//!
//! A harness panics only when pgdyno's code does, or when one of its
//! invariants (written as `assert!`s here) fails.

mod config;
mod protocol;
mod scram;

pub use config::{config_toml, upstream_url, userlist};
pub use protocol::{backend_messages, client_messages, startup};
pub use scram::{scram_client, scram_server};

/// See [`pgdyno::relay::fuzzing::exchange`].
pub fn relay(data: &[u8]) {
    pgdyno::relay::fuzzing::exchange(data);
}

/// Every target, by name, for the tests and for `examples/replay.rs`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("startup", startup),
    ("client_messages", client_messages),
    ("backend_messages", backend_messages),
    ("relay", relay),
    ("scram_server", scram_server),
    ("scram_client", scram_client),
    ("userlist", userlist),
    ("upstream_url", upstream_url),
    ("config_toml", config_toml),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs every target over its seeds and its regressions.
    #[test]
    fn seeds_and_regressions_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut ran = 0;
        for (name, harness) in super::TARGETS {
            for dir in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    let result = std::panic::catch_unwind(|| harness(&data));
                    assert!(result.is_ok(), "{name}: {} panics", path.display());
                    ran += 1;
                }
            }
        }
        assert!(ran > 0, "no seeds found");
    }

    /// A short fuzz run on stable, without libFuzzer: every target gets
    /// `MUTANTS` inputs made from its seeds by random byte flips, inserts,
    /// deletions, truncations and splices (a fixed RNG seed, so a failure
    /// repeats). CI's fuzz smoke run; scripts/fuzz.sh is the real one.
    #[test]
    fn mutated_seeds_pass() {
        const MUTANTS: usize = 20_000;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, harness) in super::TARGETS {
            let Ok(entries) = std::fs::read_dir(root.join("seeds").join(name)) else {
                continue;
            };
            let mut seeds: Vec<Vec<u8>> = entries
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect();
            seeds.sort();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
            for _ in 0..MUTANTS {
                let mut data = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    let other = &seeds[rng.below(seeds.len())];
                    mutate(&mut data, other, &mut rng);
                }
                let result = std::panic::catch_unwind(|| harness(&data));
                assert!(
                    result.is_ok(),
                    "{name} fails on this input (save it in fuzz/regressions/{name}/): {data:02x?}"
                );
            }
        }
    }

    /// xorshift64*
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Bytes that matter to the parsers: message tags, lengths' edges.
    const INTERESTING: &[u8] = &[0, 1, 4, 5, 0x7f, 0x80, 0xff, b'P', b'B', b'Q', b'S', b'Z'];

    fn mutate(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => data.insert(at, rng.next() as u8),
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 => data.truncate(at),
            _ => {
                let from = rng.below(other.len() + 1);
                let len = rng.below(other.len() - from + 1).min(256);
                let piece = other[from..from + len].to_vec();
                data.splice(at..at, piece);
            }
        }
    }
}
