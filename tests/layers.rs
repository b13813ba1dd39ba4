//! The layers of `src/` import only downward (README "Layout"): every
//! `crate::<module>` named in a file of one layer — outside comments — must be
//! that layer itself or one below it. With one order for all, no import circle
//! is possible.

use std::path::Path;

/// Each top-level module and the modules below it that it may use.
const BELOW: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("clock", &[]),
    ("legacy", &["error", "clock"]),
    ("store", &["error", "clock", "legacy"]),
    ("wire", &["error", "clock", "legacy"]),
    ("sync", &["error", "clock", "legacy", "store", "wire"]),
    ("central", &["error", "clock", "legacy", "wire"]),
    (
        "field",
        &["error", "clock", "legacy", "store", "wire", "sync"],
    ),
    (
        "agent",
        &[
            "error", "clock", "legacy", "store", "wire", "sync", "field", "central",
        ],
    ),
];

/// The modules a file names as `crate::<module>`, outside comments and its
/// unit tests (which may use the test kit).
fn named(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if (t == "#[cfg(test)]" || t.starts_with("#[cfg(all(test"))
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
            rest = after;
        }
    }
    out
}

/// The macros a file exports (`#[macro_export]` then `macro_rules! name`).
fn exported_macros(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[macro_export]" {
            if let Some(name) = lines
                .next()
                .and_then(|n| n.trim().strip_prefix("macro_rules! "))
            {
                out.push(name.trim_end_matches(" {").trim().to_string());
            }
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_layer_imports_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (layer, below) in BELOW {
        let mut all = Vec::new();
        let dir = src.join(layer);
        if dir.is_dir() {
            files(&dir, &mut all);
        }
        let file = src.join(format!("{layer}.rs"));
        if file.exists() {
            all.push(file);
        }
        assert!(!all.is_empty(), "no source for layer {layer}");
        // `#[macro_export]` puts a layer's macro at the crate's root.
        let exported: Vec<String> = all
            .iter()
            .flat_map(|f| exported_macros(&std::fs::read_to_string(f).unwrap()))
            .collect();
        for f in all {
            checked += 1;
            for m in named(&std::fs::read_to_string(&f).unwrap()) {
                if m != *layer && !below.contains(&m.as_str()) && !exported.contains(&m) {
                    wrong.push(format!("{} names crate::{m}", f.display()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} files read");
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_catches_an_upward_import() {
    assert_eq!(
        named("use crate::sync::Report; // crate::agent in a comment"),
        ["sync"]
    );
}
