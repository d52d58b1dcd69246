//! The README's wishes for Docker's nftables backend are the ones
//! `tests/kernel/docker_nft_story.rs` proves with packets, word for word.

use std::path::{Path, PathBuf};

use crate::common;

/// A file of `tests/data/docker-nft/`.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/docker-nft")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The wishes this story proves with packets are the README's, for Docker's
/// nftables backend, word for word.
#[test]
fn the_readme_shows_the_wishes_this_story_proves() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let at = readme
        .find("```yaml\npyfw_wishes:\n  nftables:\n")
        .expect("the README's nftables story");
    let block = &readme[at..];
    let start = block.find("```yaml\n").expect("a yaml block") + 8;
    let end = start + block[start..].find("```").expect("the block's end");
    common::assert_text_eq(
        &block[start..end],
        &read(&data("wishes.yaml")),
        "README's wishes for Docker's nftables backend vs tests/data/docker-nft/wishes.yaml",
    );
}
