//! Every guest fixture in `tests/guests/` is a workspace member with a
//! directory of its own, and is used by at least one test.

#[test]
fn every_fixture_has_a_test() {
    let root = troupe_tests::repo().join("tests");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("guests/Cargo.toml")).unwrap()).unwrap();
    let mut members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    members.sort();
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("guests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs, members,
        "fixture directories and workspace members differ"
    );

    let mut sources = String::new();
    for f in std::fs::read_dir(root.join("it")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "rs") && p.file_name().unwrap() != "fixtures.rs" {
            sources += &std::fs::read_to_string(&p).unwrap();
        }
    }
    for m in &members {
        // By name, or through the helper of its own (`puppet(&...)`).
        assert!(
            sources.contains(&format!("guest(\"{m}\")")) || sources.contains(&format!("{m}(&")),
            "fixture {m} is used by no test"
        );
    }
}
