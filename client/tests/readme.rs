//! Every `rust` block of the README is in `examples/readme.rs`, which `cargo
//! test` compiles: an example that stops compiling, or a README that drifts
//! from the compiled copy, fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

const README: &str = include_str!("../../README.md");
const EXAMPLE: &str = include_str!("../examples/readme.rs");

fn rust_blocks(text: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some((_, after)) = rest.split_once("```rust\n") {
        let (body, next) = after.split_once("```").unwrap();
        blocks.push(body.lines().map(str::trim).collect());
        rest = next;
    }
    blocks
}

#[test]
fn every_readme_example_is_compiled() {
    let example: Vec<&str> = EXAMPLE.lines().map(str::trim).collect();
    let blocks = rust_blocks(README);
    assert!(
        blocks.len() >= 2,
        "the README's rust blocks: {}",
        blocks.len()
    );
    for block in blocks {
        let found = example.windows(block.len()).any(|w| w == block.as_slice());
        assert!(
            found,
            "this README block is not in client/examples/readme.rs verbatim:\n{}",
            block.join("\n")
        );
    }
}
