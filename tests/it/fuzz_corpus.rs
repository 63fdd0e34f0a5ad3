//! Every seed of `fuzz/corpus/` replayed through the fuzz targets' own
//! bodies (`fuzz/src/lib.rs`), so the corpus runs on every CI on stable.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod targets;

use std::path::Path;

#[test]
fn every_corpus_file_replays_through_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, run) in targets::TARGETS {
        let dir = corpus.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus files", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("read corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} breaks a promise",
                file.display()
            );
        }
    }
}

#[test]
fn every_fuzz_binary_has_a_body_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut bins: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .expect("fuzz_targets")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    bins.sort();
    let mut named: Vec<String> = targets::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    named.sort();
    assert_eq!(
        bins, named,
        "fuzz_targets/ and postern_fuzz::TARGETS disagree"
    );
}
