#![no_main]
// Generated shape: every target is one function in pixgate::fuzzing (see its docs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| pixgate::fuzzing::jwks(data));
