//! Events: attributes, ids and media types.

use super::*;

#[test]
fn json_round_trip_keeps_every_attribute() {
    let mut e = Event::new("order.placed", "troupe://test", br#"{"a":1}"#.to_vec());
    e.subject = Some("o-1".into());
    e.extensions.insert("tenant".into(), "acme".into());
    let back = Event::from_json(e.to_json(), "x").unwrap();
    assert_eq!(back, e);
}

#[test]
fn data_is_json_when_it_can_be_and_base64_otherwise() {
    let mut e = Event::new("a.b", "troupe://test", br#"{"a": [1, "x"]}"#.to_vec());
    let written: Value = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
    assert_eq!(written, e.to_json());
    assert_eq!(written["data"], serde_json::json!({"a": [1, "x"]}));
    for (ct, data) in [
        ("application/json", &b"not json"[..]),
        ("image/png", b"\x89PNG"),
    ] {
        e.content_type = ct.into();
        e.data = data.to_vec();
        let v = e.to_json();
        assert!(v.get("data").is_none(), "{ct}");
        assert_eq!(Event::from_json(v, "x").unwrap().data, data, "{ct}");
    }
}

#[test]
fn the_hosts_sources_are_uri_references_whatever_the_apps_name() {
    assert_eq!(source("orders", "api"), "troupe://orders/api");
    let odd = source("Team A's orders/ü", "step/x");
    assert_eq!(odd, "troupe://Team%20A%27s%20orders%2F%C3%BC/step/x");
    assert!(check_attributes(None, Some(&odd), None, None).is_ok());
}

#[test]
fn data_comes_back_as_the_bytes_that_went_in() {
    let doc = |ct: &str, data: Value| serde_json::json!({"type": "a.b", "datacontenttype": ct, "data": data});
    let text = Event::from_json(doc("text/plain", Value::from("hello")), "s").unwrap();
    assert_eq!(text.data, b"hello", "the text, not a JSON string");
    assert_eq!(text.to_json()["data"], "hello");
    let xml = Event::from_json(doc("application/xml", Value::from("<a>ü</a>")), "s").unwrap();
    assert_eq!(
        Event::from_json(xml.to_json(), "s").unwrap().data,
        "<a>ü</a>".as_bytes()
    );
    let json = Event::from_json(doc("application/json", serde_json::json!("hi")), "s").unwrap();
    assert_eq!(json.data, b"\"hi\"", "JSON data is JSON");
    let mut binary = Event::new("a.b", "s", vec![0xff, 0, 1]);
    binary.content_type = "application/octet-stream".into();
    let v = binary.to_json();
    assert!(v.get("data").is_none() && v["data_base64"] == "/wAB", "{v}");
    assert_eq!(Event::from_json(v, "s").unwrap().data, [0xff, 0, 1]);
}

#[test]
fn caused_events_inherit_correlation_and_get_stable_ids() {
    let first = Event::new("a", "s", b"1".to_vec());
    let out = |i| {
        let emitted = Emitted {
            kind: "b".into(),
            subject: None,
            content_type: None,
            data: b"2".to_vec(),
            schema: None,
        };
        first.caused("step", "src", i, emitted)
    };
    let (x, y, z) = (out(0), out(0), out(1));
    assert_eq!(x.id, y.id, "redelivery gives the same id");
    assert_ne!(x.id, z.id);
    assert_eq!(x.correlation_id(), first.id);
    assert_eq!(x.causation_id(), Some(first.id.as_str()));
    assert_eq!(x.trace_id(), first.trace_id());
    assert!(x.trace_id().is_some());
}

#[test]
fn data_comes_back_as_text_when_it_is_text_whichever_way_it_came() {
    let sent = |data: Value| {
        let mut v = serde_json::json!({"type": "a.b", "id": "1", "source": "urn:x",
            "specversion": "1.0", "datacontenttype": "text/plain"});
        v.as_object_mut()
            .unwrap()
            .extend(data.as_object().unwrap().clone());
        Event::from_json(v, "urn:x").unwrap()
    };
    let as_base64 = sent(serde_json::json!({"data_base64": "aMOpbGxv"}));
    let as_text = sent(serde_json::json!({"data": "h\u{e9}llo"}));
    assert_eq!(as_base64.data, as_text.data, "the same bytes");
    assert_eq!(as_base64.to_json()["data"], "h\u{e9}llo");
    let binary = sent(serde_json::json!({"data_base64": "/w=="}));
    assert_eq!(binary.to_json()["data_base64"], "/w==");
}

#[test]
fn emitted_ids_tell_apart_ids_and_sources_that_hold_slashes() {
    let out = || Emitted {
        kind: "a.b".into(),
        subject: None,
        content_type: None,
        data: b"{}".to_vec(),
        schema: None,
    };
    let victim = Event {
        id: "victim-1".into(),
        source: "https://shop.example/orders".into(),
        ..Event::new("order.placed", "x", b"{}".to_vec())
    };
    let attacker = Event {
        id: "victim-1/https:".into(),
        source: "/shop.example/orders".into(),
        ..victim.clone()
    };
    let v = victim.caused("pay", "troupe://shop/pay", 0, out());
    let a = attacker.caused("pay", "troupe://shop/pay", 0, out());
    assert_ne!(v.id, a.id);
    // Deterministic still.
    assert_eq!(v.id, victim.caused("pay", "troupe://shop/pay", 0, out()).id);
    assert_ne!(
        derived_id_of("a", &["b:c", "d"]),
        derived_id_of("a", &["b", "c:d"])
    );
}

#[test]
fn derived_ids_are_deterministic_and_sort_with_their_cascade() {
    let parent = Uuid::now_v7().to_string();
    let a = derived_id(&parent, "step/0");
    assert_eq!(a, derived_id(&parent, "step/0"));
    assert_ne!(a, derived_id(&parent, "step/1"));
    assert_eq!(
        a[..13],
        parent[..13],
        "the time prefix is kept: {a} {parent}"
    );
    // ... through generations, and not from ids of other kinds.
    assert_eq!(derived_id(&a, "next/0")[..13], parent[..13]);
    let v4 = Uuid::new_v4().to_string();
    assert_ne!(derived_id(&v4, "x")[..13], v4[..13]);
    assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 8);
}

#[test]
fn malformed_envelopes_are_refused_with_the_reason() {
    let err = |v: Value| Event::from_json(v, "s").unwrap_err().to_string();
    assert!(err(serde_json::json!([1])).contains("object"));
    assert!(err(serde_json::json!({"data": 1})).contains("`type`"));
    assert!(err(serde_json::json!({"type": 5})).contains("string"));
    assert!(err(serde_json::json!({"type": "a", "Bad-Name": "x"})).contains("Bad-Name"));
    assert!(err(serde_json::json!({"type": "a", "specversion": "0.3"})).contains("0.3"));
    assert!(err(serde_json::json!({"type": "a", "id": "x\ny"})).contains("`id` holds control"));
    assert!(err(serde_json::json!({"type": "a", "id": ""})).contains("`id` must not be empty"));
    assert!(err(serde_json::json!({"type": "a", "source": ""})).contains("`source` must not"));
    assert!(err(serde_json::json!({"type": "a", "source": "a b"})).contains("URI reference"));
    assert!(err(serde_json::json!({"type": "a", "dataschema": "%zz"})).contains("`dataschema`"));
    assert!(err(serde_json::json!({"type": "a", "time": "yesterday"})).contains("RFC 3339"));
    let t = |time: &str| Event::from_json(serde_json::json!({"type": "a", "time": time}), "s");
    assert!(t("2026-12-01T10:00:00+02:00").is_ok() && t("2026-12-01T08:00:00.123456Z").is_ok());
    assert!(
        err(serde_json::json!({"type": "a", "datacontenttype": "text/plain", "data": {"a": 1}}))
            .contains("must be a string")
    );
    assert!(err(serde_json::json!({"type": "a", "subject": "\u{1b}[2J"})).contains("`subject`"));
    assert!(err(serde_json::json!({"type": "a", "tenant": "a\rb"})).contains("`tenant`"));
    assert!(
        err(serde_json::json!({"type": "a", "data": 1, "data_base64": "QQ=="}))
            .contains("not both")
    );
    assert!(err(serde_json::json!({"type": "a", "datacontenttype": ""})).contains("media type"));
    let long = "x".repeat(MAX_SUBJECT + 1);
    assert!(err(serde_json::json!({"type": "a", "subject": long})).contains("at most 1024"));
    assert!(err(serde_json::json!({"type": "a", "n": 1.5})).contains("extension `n`"));
    assert!(err(serde_json::json!({"type": "a", "n": 3_000_000_000u64})).contains("`n`"));
}

/// Extension values keep their JSON type; a null attribute is unset, as
/// the JSON format says.
#[test]
fn typed_extensions_round_trip_and_nulls_are_unset() {
    let e = Event::from_json(
        serde_json::json!({"type": "a", "n": 5, "m": -7.0, "b": true, "s": "5", "gone": null,
                           "time": null, "data": null}),
        "s",
    )
    .unwrap();
    assert_eq!(e.extensions["m"], "-7");
    assert!(!e.extensions.contains_key("gone"));
    assert_eq!(e.data, b"null");
    let v = e.to_json();
    assert_eq!(
        (&v["n"], &v["m"], &v["b"], &v["s"]),
        (
            &serde_json::json!(5),
            &serde_json::json!(-7),
            &serde_json::json!(true),
            &serde_json::json!("5")
        )
    );
    let stored = extensions_to_json(&e);
    let (ext, typed) = extensions_from_json(&stored).unwrap();
    assert_eq!((ext, typed), (e.extensions.clone(), e.typed.clone()));
    // All strings: stored as strings, read back as such.
    let mut plain = e.clone();
    plain.typed.clear();
    let stored = extensions_to_json(&plain);
    assert!(stored.contains(r#""n":"5""#), "{stored}");
    let (ext, typed) = extensions_from_json(&stored).unwrap();
    assert_eq!((ext, typed.len()), (plain.extensions.clone(), 0));
}
