//! The documents that map the code stay true to it: every module of the library has its row
//! in ARCHITECTURE.md's module map (and every file of a module folder is named in its row),
//! every row names a module that exists, and lib.rs's own list names every module.

use std::collections::BTreeSet;
use std::path::Path;

use crate::helpers::repo;

/// The `pub mod` names declared in a file.
fn declared_modules(file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// The module map's rows: the module's name and the row's text.
fn map_rows() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let map = text
        .split("## Module map")
        .nth(1)
        .expect("ARCHITECTURE.md has a module map")
        .split("\n## ")
        .next()
        .unwrap()
        .to_owned();
    map.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, rest)| (name.to_owned(), rest.to_owned()))
        .collect()
}

#[test]
fn every_module_has_its_row_in_the_module_map_and_every_row_a_module() {
    let modules = declared_modules(&repo().join("src/lib.rs"));
    let rows: BTreeSet<String> = map_rows().into_iter().map(|(name, _)| name).collect();
    let missing: Vec<_> = modules.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&modules).collect();
    assert!(
        missing.is_empty(),
        "modules without a row in ARCHITECTURE.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows naming no module of src/lib.rs: {stale:?}"
    );
}

#[test]
fn every_file_of_a_module_folder_is_named_in_its_row() {
    let mut unnamed = Vec::new();
    for (module, row) in map_rows() {
        let folder = repo().join("src").join(&module);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if matches!(stem.as_str(), "mod" | "tests") {
                continue;
            }
            if ![
                format!("`{stem}"),
                format!("::{stem}"),
                format!("{stem}.rs"),
            ]
            .iter()
            .any(|name| row.contains(name.as_str()))
            {
                unnamed.push(format!("src/{module}/{stem}"));
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "files the module map does not name: {unnamed:?}"
    );
}

#[test]
fn lib_rs_lists_every_module_it_declares() {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    let unlisted: Vec<_> = declared_modules(&repo().join("src/lib.rs"))
        .into_iter()
        .filter(|m| !lib.contains(&format!("[`{m}`]")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "lib.rs's module list omits {unlisted:?}"
    );
}
