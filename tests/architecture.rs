//! The crate's modules depend on each other one way: from the entry points (`cli`, `commands`,
//! `startup`) down to the stages, with no import cycle anywhere. This test fails the build on a
//! cycle and names every `use` that closes it (the checker is `architecture/modgraph.rs`).

#[path = "architecture/modgraph.rs"]
#[allow(dead_code)]
mod modgraph;

use std::path::Path;

#[test]
fn the_module_graph_has_no_cycle() {
    modgraph::assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}
