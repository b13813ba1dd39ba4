//! The README is part of the interface: its settings and dependency tables and
//! its layout must match the code they describe.

use std::collections::BTreeSet;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

fn section(text: &str, heading: &str) -> String {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading}"));
    let rest = &text[start + heading.len() + 5..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

#[test]
fn every_setting_is_in_the_settings_table_with_its_default() {
    let table = section(&readme(), "Settings");
    for k in fieldsync::agent::settings::KEYS {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", k.name)))
            .unwrap_or_else(|| panic!("setting {} is not in the README's table", k.name));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], k.default, "default of {} in the README", k.name);
        assert_eq!(cells[4], k.unit, "unit of {}", k.name);
        assert_eq!(cells[5], k.set_by.as_str(), "who sets {}", k.name);
        let env = k.env.map(|e| format!("`{e}`")).unwrap_or_default();
        assert_eq!(cells[2], env, "environment of {}", k.name);
    }
    let rows = table.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        fieldsync::agent::settings::KEYS.len(),
        "no stale rows"
    );
}

#[test]
fn every_dependency_is_in_the_dependency_table() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let deps = &manifest[manifest.find("[dependencies]").unwrap()..];
    let deps = &deps[..deps[1..].find("\n[").map_or(deps.len(), |i| i + 1)];
    let names: BTreeSet<&str> = deps
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim())
        .collect();
    let table = section(&readme(), "Dependencies");
    for name in names {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("| ") && l.split('|').nth(1).unwrap().contains(name)),
            "dependency {name} is not in the README's table"
        );
    }
}

#[test]
fn the_layout_names_every_module_directory() {
    let table = section(&readme(), "Layout");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        let shown = if path.is_dir() {
            format!("`{name}/`")
        } else {
            format!("`{name}`")
        };
        assert!(
            table.contains(&shown),
            "the README's layout does not name {shown}"
        );
    }
}

/// Issue 29, item 10: the field-staff table and `status`'s light line say the
/// same words for every light.
#[test]
fn every_light_reads_the_same_in_status_and_the_readme() {
    let table = section(&readme(), "For clinic staff");
    for p in fieldsync::field::led::Pattern::ALL {
        let (light, meaning) = p.meaning().split_once(": ").unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {light}")))
            .unwrap_or_else(|| panic!("no row for {light:?} in README's light table"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], meaning, "README's meaning of {light}");
    }
}
