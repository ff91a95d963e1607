//! The decision on a request, with no network: which grant allows it and
//! what the host adds.

use super::*;

fn spec(url: &str, headers: &[(&str, &str)]) -> HttpGrantSpec {
    HttpGrantSpec {
        url: url.into(),
        methods: None,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        private: false,
    }
}

fn request(method: &str, uri: &str) -> http::Request<WasiBody> {
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|_| unreachable!())
        .boxed_unsync();
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap()
}

use http_body_util::BodyExt;

#[test]
fn grant_headers_must_be_valid_and_name_known_secrets() {
    let secrets = Secrets::from_values([("KEY", "sk_canary")]);
    let ok = Outbound::new(
        "pay",
        &[spec(
            "https://api.example",
            &[("authorization", "Bearer ${secrets.KEY}")],
        )],
        &HttpLimits::default(),
        &secrets,
    )
    .unwrap();
    assert!(!format!("{ok:?}").contains("sk_canary"));
    let e = Outbound::new(
        "pay",
        &[spec("https://api.example", &[("host", "x")])],
        &HttpLimits::default(),
        &secrets,
    )
    .unwrap_err();
    assert!(e.contains("sets this header itself"), "{e}");
    let e = Outbound::new(
        "pay",
        &[spec(
            "https://api.example",
            &[("x-key", "${secrets.OTHER}")],
        )],
        &HttpLimits::default(),
        &secrets,
    )
    .unwrap_err();
    assert!(e.contains("OTHER"), "{e}");
}

#[test]
fn requests_are_decided_by_the_grants_and_never_outside_handle() {
    let out = Arc::new(
        Outbound::new(
            "pay",
            &[spec("http://127.0.0.1:8080/v1", &[])],
            &HttpLimits::default(),
            &Secrets::default(),
        )
        .unwrap(),
    );
    let mut h = StepHttp::new(out);
    let allowed = request("POST", "http://127.0.0.1:8080/v1/charges");
    assert!(h.decide(&allowed).unwrap_err().contains("outside `handle`"));
    h.begin(Invocation {
        handling: true,
        key_basis: "event\nsrc\nid".into(),
        trace_id: None,
        event_id: "id".into(),
    });
    assert!(h.decide(&allowed).is_ok());
    assert!(
        h.decide(&request("POST", "http://127.0.0.1:8081/v1"))
            .is_err()
    );
    assert!(
        h.decide(&request("POST", "http://localhost:8080/v1"))
            .is_err()
    );
    assert!(
        h.decide(&request("POST", "https://127.0.0.1:8080/v1"))
            .is_err()
    );
    assert!(
        h.decide(&request("POST", "http://127.0.0.1:8080/v2"))
            .is_err()
    );
}
