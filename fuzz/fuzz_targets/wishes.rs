//! cargo-fuzz target `wishes`: the body is shared with the test suite
//! (`tests/fuzz_model/mod.rs`, run by `tests/offline/fuzz_props.rs`).
#![no_main]

#[path = "../../tests/fuzz_model/mod.rs"]
#[allow(dead_code)] // this target uses one entry point of it
mod fuzz_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_model::wishes_target(data));
