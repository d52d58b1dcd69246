//! cargo-fuzz target `wishes`: the body is shared with the test suite
//! (`tests/fuzz_model/mod.rs`, run by `tests/fuzz_props.rs`).
#![no_main]

#[path = "../../tests/fuzz_model/mod.rs"]
mod fuzz_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_model::wishes_target(data));
