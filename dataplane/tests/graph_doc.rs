//! docs/architecture.md draws the stage graph; this fails when the drawing and the
//! graph the stages register differ (`scripts/stage-graph.sh` rewrites the doc
//! from the registry).
use podpath_dataplane::pipeline::registry::{graph_mermaid, graph_text};

fn block(doc: &str, tag: &str) -> String {
    let open = format!("```{tag}\n");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("docs/architecture.md has no ```{tag} block"))
        + open.len();
    let len = doc[start..].find("```").expect("unterminated block");
    doc[start..start + len].to_string()
}

#[test]
fn the_documented_stage_graph_is_the_registered_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/architecture.md");
    let doc = std::fs::read_to_string(path).expect("read docs/architecture.md");
    let text = graph_text();
    assert_eq!(
        block(&doc, "text stage-graph"),
        text,
        "docs/architecture.md's stage graph is stale; the registered one is:\n{text}"
    );
    let mermaid = graph_mermaid();
    assert_eq!(
        block(&doc, "mermaid"),
        mermaid,
        "docs/architecture.md's drawing is stale; the registered one is:\n{mermaid}"
    );
}

/// `cargo test --test graph_doc print_graph -- --ignored --nocapture` prints both.
#[test]
#[ignore]
fn print_graph() {
    print!(
        "<<MERMAID\n{}MERMAID\n<<TEXT\n{}TEXT\n",
        graph_mermaid(),
        graph_text()
    );
}
