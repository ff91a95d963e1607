//! The contract gates, driven with hand-made contracts and events.

use super::*;

/// A contract that consumes `a.b` with `schema` (the text as given).
pub(crate) fn contract(schema: &str) -> world::Contract {
    world::Contract {
        name: "s".into(),
        version: "1.0.0".into(),
        description: String::new(),
        consumes: vec![world::EventContract {
            kind: "a.b".into(),
            version: "1.0.0".into(),
            schema: schema.into(),
            description: String::new(),
        }],
        produces: vec![],
        deterministic: true,
    }
}

#[test]
fn schemas_are_enforced() {
    let c = StepContract::compile(contract(r#"{"type":"object","required":["x"]}"#)).unwrap();
    let ok = Event::new("a.b", "t", br#"{"x":1}"#.to_vec());
    assert!(c.check_input(&ok).is_ok());
    let bad = Event::new("a.b", "t", br#"{"y":1}"#.to_vec());
    let err = c.check_input(&bad).unwrap_err().to_string();
    assert!(err.contains("\"x\" is a required property"), "{err}");
    let junk = Event::new("a.b", "t", b"{".to_vec());
    assert!(matches!(
        c.check_input(&junk),
        Err(Violation::NotJson { .. })
    ));
    let other = Event::new("c.d", "t", b"{}".to_vec());
    assert!(matches!(
        c.check_input(&other),
        Err(Violation::NotConsumed(_))
    ));
    assert!(matches!(
        c.check_output("a.b", None, "application/json", b"{}"),
        Err(Violation::Undeclared(_))
    ));
}

fn with_content_type(ct: &str, data: &[u8]) -> Event {
    let mut e = Event::new("a.b", "t", data.to_vec());
    e.content_type = ct.into();
    e
}

#[test]
fn json_is_recognised_as_media_types_are_and_anything_else_is_refused() {
    let c = StepContract::compile(contract(r#"{"type":"object","required":["x"]}"#)).unwrap();
    for ct in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/vnd.acme+json",
    ] {
        assert!(
            c.check_input(&with_content_type(ct, br#"{"x":1}"#)).is_ok(),
            "{ct}"
        );
        let bad = c.check_input(&with_content_type(ct, br#"{"y":1}"#));
        assert!(
            matches!(bad, Err(Violation::Schema { .. })),
            "{ct}: {bad:?}"
        );
    }
    for ct in [
        "text/plain",
        "application/xml",
        "",
        "json",
        "application/json/x",
        "a b/c",
    ] {
        let v = c
            .check_input(&with_content_type(ct, br#"{"x":1}"#))
            .unwrap_err();
        assert!(matches!(v, Violation::ContentType { .. }), "{ct}: {v}");
        assert!(v.to_string().contains("declares application/json"), "{v}");
    }
}

#[test]
fn a_contract_may_declare_another_media_type_and_its_schema_still_holds() {
    let text = r#"{"type":"string","contentMediaType":"text/plain","maxLength":5}"#;
    let c = StepContract::compile(contract(text)).unwrap();
    assert_eq!(c.consumes[0].format.media_type(), "text/plain");
    assert!(
        c.check_input(&with_content_type("text/plain; charset=utf-8", b"hello"))
            .is_ok()
    );
    let long = c.check_input(&with_content_type("text/plain", b"hello!"));
    assert!(matches!(long, Err(Violation::Schema { .. })), "{long:?}");
    let binary = c.check_input(&with_content_type("text/plain", b"\xff\xfe"));
    assert!(
        matches!(binary, Err(Violation::NotText { .. })),
        "{binary:?}"
    );
    let json = c.check_input(&with_content_type("application/json", b"\"hi\""));
    assert!(
        matches!(json, Err(Violation::ContentType { .. })),
        "{json:?}"
    );
    assert!(
        c.check_input_value("a.b", &serde_json::json!("hi"))
            .is_err()
    );

    let png = r#"{"type":"string","contentMediaType":"image/png","contentEncoding":"base64","maxLength":8}"#;
    let c = StepContract::compile(contract(png)).unwrap();
    assert!(
        c.check_input(&with_content_type("image/png", b"\x89PNG"))
            .is_ok()
    );
    let big = c.check_input(&with_content_type("image/png", b"\x89PNG\r\n\x1a\n"));
    assert!(matches!(big, Err(Violation::Schema { .. })), "{big:?}");

    let e = |schema: &str| {
        StepContract::compile(contract(schema))
            .unwrap_err()
            .to_string()
    };
    assert!(e(r#"{"contentMediaType":"application/json"}"#).contains("leave it out"));
    assert!(e(r#"{"contentMediaType":"not a type"}"#).contains("not a media type"));
    assert!(e(r#"{"contentMediaType":"text/csv","contentEncoding":"base32"}"#).contains("base64"));
}

#[test]
fn host_types_and_bad_subjects_are_refused() {
    let mut c = contract("{}");
    c.consumes[0].kind = "troupe.alert.contract".into();
    let e = StepContract::compile(c).unwrap_err().to_string();
    assert!(
        e.contains("belongs to the host") && e.contains("consumes"),
        "{e}"
    );
    let mut c = contract("{}");
    c.produces = c.consumes.clone();
    c.produces[0].kind = "troupe.step.completed".into();
    assert!(
        StepContract::compile(c)
            .unwrap_err()
            .to_string()
            .contains("produces")
    );

    let mut c = contract("{}");
    c.produces = c.consumes.clone();
    let c = StepContract::compile(c).unwrap();
    assert!(
        c.check_output("a.b", Some("o-1"), "application/json", b"{}")
            .is_ok()
    );
    let v = c.check_output("a.b", Some("o-1\n\u{1b}[2J"), "application/json", b"{}");
    assert!(
        matches!(
            v,
            Err(Violation::Attribute {
                attribute: "subject",
                ..
            })
        ),
        "{v:?}"
    );
}

#[test]
fn broken_contracts_are_refused() {
    let e = |c| StepContract::compile(c).unwrap_err().to_string();
    assert!(e(contract("{not json")).contains("not JSON"));
    assert!(e(contract(r#"{"type": 12}"#)).contains("not a valid JSON Schema"));
    let mut c = contract("{}");
    c.version = "1.0".into();
    assert!(e(c).contains("semver"));
    let mut c = contract("{}");
    c.name = "Bad Name".into();
    assert!(e(c).contains("step name"));
    let mut c = contract("{}");
    c.consumes[0].kind = "Order Placed".into();
    assert!(e(c).contains("event type"));
}

#[test]
fn a_cloudevents_envelope_type_is_never_a_datas_content_type() {
    let mut c = contract(r#"{"type":"object"}"#);
    c.produces = c.consumes.clone();
    let c = StepContract::compile(c).unwrap();
    for ct in [
        "application/cloudevents+json",
        "Application/CloudEvents+JSON; charset=utf-8",
        "application/cloudevents-batch+json",
    ] {
        let v = c.check_output("a.b", None, ct, b"{}").unwrap_err();
        assert!(
            v.to_string().contains("CloudEvents envelope type"),
            "{ct}: {v}"
        );
        assert!(
            c.check_input(&with_content_type(ct, b"{}")).is_err(),
            "{ct}"
        );
    }
    assert!(
        c.check_output("a.b", None, "application/json", b"{}")
            .is_ok()
    );
}

/// Types each within the bound of one still add up: a contract's schemas
/// are bounded together too, before any is compiled.
#[test]
fn a_contract_is_bounded_as_a_whole() {
    let one = format!(r#"{{"description": "{}"}}"#, "d".repeat(100 * 1024));
    let mut c = contract(&one);
    let t = c.consumes[0].clone();
    c.consumes = (0..11)
        .map(|i| world::EventContract {
            kind: format!("a.b{i}"),
            ..t.clone()
        })
        .collect();
    let e = StepContract::compile(c).unwrap_err().to_string();
    assert!(
        e.contains("bytes long together, the limit is 1048576"),
        "{e}"
    );
}
