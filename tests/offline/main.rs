//! The offline tests: everything that needs neither root nor the netfilter
//! tools. They read fixtures and recorded dumps, run the planner, the
//! parsers and the `pyfw` binary on files (`plan --iptables-save`), and
//! check the documents, the schema, the README and the unit files.
//!
//! `cargo test --test offline` runs them as any user; `tests/kernel/` holds
//! the tests against real netfilter in network namespaces. A module of the
//! same name in both holds each half of what was one test file. Four
//! offline tests stay with the namespace tests of their file, whose helpers
//! they share, and run (never skip) in `tests/kernel/` without root too:
//! `security::{control_characters_in_rule_text_are_refused,
//! insecure_wishes_are_refused_unless_allowed,
//! an_oversized_wishes_file_is_refused}` and
//! `nftables::metrics_say_which_owned_table_drifted`.

#[path = "../common/mod.rs"]
#[allow(dead_code, unused_macros)] // the namespace harness in it is tests/kernel/'s
mod common;
#[path = "../fuzz_model/mod.rs"]
mod fuzz_model;

mod assets;
mod daemon;
mod docker_nft_story;
mod formats;
mod fuzz_props;
mod golden;
mod lint_real_hosts;
mod metrics;
mod netns;
mod nft_wishes;
mod ordering;
mod parsers_props;
mod planner_props;
mod scale;
mod schema;
mod unreached_chains;
mod wishes_errors;

/// proptest's settings for `cases` cases, keeping the failures it finds
/// beside each test's source, as `tests/offline/NAME.proptest-regressions`
/// (its default would look for `tests/proptest-regressions/NAME.txt`, this
/// directory having a `main.rs`), and running the kept ones first.
fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, FileFailurePersistence};
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}
