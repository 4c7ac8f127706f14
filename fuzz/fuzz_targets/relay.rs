#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgdyno_fuzz::relay(data));
