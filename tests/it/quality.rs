//! The analyzer against universal-ctags on fixture repositories in five languages.
//! Target (DESIGN.md): definition recall and precision ≥ 95%.

use pylon::fanout::quality;

#[test]
fn definitions_agree_with_ctags() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quality");
    let q = quality::compare(&root).expect("ctags runs (scripts/test.sh installs universal-ctags)");
    eprintln!("{}", serde_json::to_string_pretty(&q).expect("json"));
    for lang in ["rust", "python", "javascript", "typescript", "go"] {
        let s = q
            .languages
            .get(lang)
            .unwrap_or_else(|| panic!("{lang} measured"));
        assert!(s.matched >= 10, "{lang}: a meaningful sample ({s:?})");
        assert!(
            s.recall >= 0.95 && s.precision >= 0.95,
            "{lang}: {s:?}\n{:#?}",
            q.disagreements
        );
    }
    assert!(
        q.overall.recall >= 0.95 && q.overall.precision >= 0.95,
        "{:?}",
        q.overall
    );
}
