//! The conformance kit against the cases in `tests/conformance/`: each case
//! directory holds a real guest (Rust, Python, JavaScript or C) that breaks
//! one rule, and `expect.toml` says which rules must fail. Every rule has a
//! case, and every plugin shipped in `plugins/` conforms.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use troupe::conformance::{Rule, check};
use troupe::runtime::Runtime;
use troupe_tests::{CompileCache, build, repo, troupe_bin};

fn cases() -> Vec<(String, PathBuf, BTreeSet<String>)> {
    let root = repo().join("tests/conformance");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let dir = e.unwrap().path();
        if !dir.is_dir() || dir.file_name().unwrap() == "target" {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(dir.join("expect.toml"))
            .unwrap_or_else(|_| panic!("case {name} has no expect.toml"));
        let expect: toml::Value = toml::from_str(&text).unwrap();
        let fails: BTreeSet<String> = expect["fails"]
            .as_array()
            .unwrap_or_else(|| panic!("case {name}: `fails` must be a list"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for f in &fails {
            assert!(Rule::parse(f).is_some(), "case {name}: unknown rule {f:?}");
        }
        out.push((name, dir, fails));
    }
    out.sort();
    out
}

#[test]
fn each_case_fails_exactly_the_rules_it_expects() {
    let rt = Runtime::new().unwrap();
    let cache = CompileCache::new();
    let cases = cases();
    assert!(cases.len() >= Rule::ALL.len());
    for (name, dir, expected) in &cases {
        let component = build(dir);
        let report = check(&rt, &component, cache.path()).unwrap();
        let failed: BTreeSet<String> = report.failed().iter().map(|r| r.id().to_string()).collect();
        assert_eq!(&failed, expected, "case {name}: {:#?}", report.checks);
    }
}

#[test]
fn every_rule_has_a_case_that_breaks_it() {
    let broken: BTreeSet<String> = cases().into_iter().flat_map(|(_, _, f)| f).collect();
    for rule in Rule::ALL {
        assert!(
            broken.contains(rule.id()),
            "no case breaks rule {}",
            rule.id()
        );
    }
}

#[test]
fn every_shipped_plugin_conforms() {
    let rt = Runtime::new().unwrap();
    let cache = CompileCache::new();
    let mut checked = 0;
    for e in std::fs::read_dir(repo().join("plugins")).unwrap() {
        let dir = e.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !dir.is_dir() || ["sdk-rust", "target"].contains(&name.as_str()) || name.starts_with('.')
        {
            continue;
        }
        let report = check(&rt, &build(&dir), cache.path()).unwrap();
        assert!(report.passed(), "plugin {name}: {:#?}", report.checks);
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} plugins found");
}

#[test]
fn a_step_whose_data_is_text_conforms_on_text_samples() {
    let rt = Runtime::new().unwrap();
    let cache = CompileCache::new();
    let report = check(&rt, &troupe_tests::guest("shout"), cache.path()).unwrap();
    assert!(report.passed(), "{:#?}", report.checks);
    let samples = report
        .checks
        .iter()
        .find(|c| c.rule == Rule::Samples)
        .unwrap();
    assert!(
        samples.detail.contains("handled samples of text.said"),
        "{:#?}",
        report.checks
    );
}

#[test]
fn the_cli_reports_each_rule_and_fails_with_the_broken_one() {
    let component = build(&repo().join("tests/conformance/emits-undeclared"));
    let out = Command::new(troupe_bin())
        .arg("conformance")
        .arg(&component)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  emits-declared     test.work -> secret.leaked"),
        "{text}"
    );
    assert!(text.contains("PASS  world"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not conform: emits-declared"));
    let out = Command::new(troupe_bin())
        .args(["--json", "conformance"])
        .arg(&component)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"], "emits-undeclared");
    assert_eq!(v["checks"].as_array().unwrap().len(), Rule::ALL.len());
}
