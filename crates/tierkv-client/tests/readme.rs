//! The README's Rust example is `examples/readme.rs`, which `cargo test`
//! compiles: this keeps the README's copy identical to it.

/// The README shows the example file verbatim.
#[test]
fn the_readme_shows_the_compiled_example() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../examples/readme.rs");
    assert!(
        readme.contains(&format!("```rust\n{example}```\n")),
        "README.md's \"Using tierkv from Rust\" must show crates/tierkv-client/examples/readme.rs verbatim"
    );
}
