//! The web console (`/ui`) in a real browser: Debian's chromium, headless,
//! through chromedriver. A wrong token is refused; every page loads with
//! no error in the browser's console; a run the test starts shows with its
//! status and timeline; a replay from the dead-letter page lands; the
//! keyboard reaches every section; and at 200% zoom (a viewport half as
//! wide) no page scrolls sideways. Screenshots: `target/ui/`.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;
use troupe_tests::browser::Browser;
use troupe_tests::{ApiHost, orders_with_flows, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn order(id: &str) -> serde_json::Value {
    json!({"order_id": id, "customer": "ada",
           "lines": [{"sku": "tea", "qty": 1, "price_cents": 450}]})
}

/// Sign in with `token` through the form.
fn sign_in(b: &Browser, base: &str, token: &str) {
    b.block_on(async {
        b.client.goto(&format!("{base}/ui")).await.unwrap();
        let field = b
            .client
            .find(Locator::Id("token"))
            .await
            .expect("the login form");
        field.send_keys(token).await.unwrap();
        let submit = b
            .client
            .find(Locator::Css("button[type=submit]"))
            .await
            .unwrap();
        submit.click().await.unwrap();
    });
}

/// Go to the console's `hash` route and wait for `ready` (a script).
fn visit(b: &Browser, base: &str, hash: &str, what: &str, ready: &str) {
    b.block_on(b.client.goto(&format!("{base}/ui#{hash}")))
        .unwrap();
    b.wait_true(WAIT, what, ready);
}

fn no_errors(b: &Browser, page: &str) {
    let errors = b.errors();
    assert!(
        errors.is_empty(),
        "{page}: the browser's console has errors: {errors:#?}"
    );
}

#[test]
fn the_console_works_in_a_real_browser() {
    let app = orders_with_flows("");
    let h = ApiHost::start(&app);
    let base = h.url.clone();
    let b = Browser::start(1280, 900);

    // A wrong token is refused, and the console shows nothing.
    sign_in(&b, &base, "not-the-token");
    b.wait_true(
        WAIT,
        "the refusal",
        "return document.getElementById('login-error').textContent.includes('not this host')",
    );
    assert_eq!(
        b.eval("return document.querySelector('main nav, #main') === null"),
        json!(true)
    );
    b.screenshot("login-refused");
    let _ = b.errors(); // the 401 of the refused form is logged by the browser: expected
    // Nor does the API take a forged request: a cookie it never set, or
    // its own cookie without the console's header (a cross-site form).
    let (status, _) = troupe_tests::raw(&base, "wrong", "GET", "/v1/app", None);
    assert_eq!(status, 401);

    // The right token: the app's page, its graph and live counters.
    sign_in(&b, &base, &h.token);
    b.wait_true(WAIT, "the app page", "return !!document.querySelector('.graph svg') && document.body.innerText.includes('order-validate')");
    no_errors(&b, "the app page");
    let cookie = b.eval("return document.cookie");
    assert_eq!(
        cookie,
        json!(""),
        "the session cookie is HttpOnly: no script reads it"
    );

    // A choreographed order: the counters on the page move.
    let (status, _) = h.raw(
        "POST",
        "/v1/events",
        Some(&json!({"type": "order.placed", "id": "ui-1", "data": order("ui-1")})),
    );
    assert_eq!(status, 202);
    b.wait_true(
        WAIT,
        "live counters",
        "return [...document.querySelectorAll('table.counters tbody tr')]\
           .some(r => r.children[0].innerText.includes('customer-notify') && Number(r.children[3].innerText) >= 1)",
    );
    no_errors(&b, "the app page, refreshed");
    b.screenshot("app");

    // A run the test starts shows in the list with its status, and its
    // timeline shows each flow step.
    let run = h.run("fulfil", order("ui-run"));
    assert_eq!(run["state"], "completed", "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    visit(
        &b,
        &base,
        "/runs",
        "the run in the list",
        &format!(
            "return [...document.querySelectorAll('table.runs tbody tr')].some(r => r.innerText.includes('{id}') && r.innerText.includes('completed'))"
        ),
    );
    no_errors(&b, "runs");
    b.screenshot("runs");
    b.block_on(async {
        b.client
            .find(Locator::LinkText(&id))
            .await
            .expect("the run's link")
            .click()
            .await
            .unwrap();
    });
    b.wait_true(
        WAIT,
        "the run's timeline",
        "return document.querySelectorAll('table.timeline tbody tr').length === 4",
    );
    let rows = b.eval("return [...document.querySelectorAll('table.timeline tbody tr')].map(r => [r.children[0].innerText.trim(), r.children[1].innerText.trim(), r.children[2].innerText.trim()])");
    let rows: Vec<Vec<String>> = serde_json::from_value(rows).unwrap();
    let mut steps: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    steps.sort();
    assert_eq!(steps, ["charge", "reserve", "ship", "validate"], "{rows:?}");
    assert!(
        rows.iter().all(|r| r[1] == "completed" && r[2] == "1"),
        "{rows:?}"
    );
    no_errors(&b, "the run");
    b.screenshot("run");

    // The run's causal tree.
    visit(
        &b,
        &base,
        &format!("/trace/{id}"),
        "the causal tree",
        "return document.querySelectorAll('ul.tree li').length >= 4",
    );
    no_errors(&b, "the causal tree");
    b.screenshot("trace");

    // A dead letter: the provider fails every attempt of one order's
    // charge; the replay from the page (the provider well again) lands.
    app.payments.as_ref().unwrap().control(json!({"fail": 5}));
    let (status, _) = h.raw(
        "POST",
        "/v1/events",
        Some(&json!({"type": "order.placed", "id": "ui-dlq", "data": order("ui-dlq")})),
    );
    assert_eq!(status, 202);
    let dead = wait_for(WAIT, "the dead letter", || {
        let (_, list) = h.raw("GET", "/v1/dlq?step=payment-charge", None);
        list.as_array().and_then(|l| l.first().cloned())
    });
    let dlq_id = dead["id"].as_str().unwrap().to_string();
    visit(
        &b,
        &base,
        "/dlq",
        "the dead letter's row",
        &format!("return !!document.querySelector('tr[data-dlq=\"{dlq_id}\"]')"),
    );
    no_errors(&b, "dead letters");
    b.screenshot("dlq");
    b.block_on(async {
        let button = b
            .client
            .find(Locator::Css(&format!("tr[data-dlq=\"{dlq_id}\"] button")))
            .await
            .unwrap();
        button.click().await.unwrap();
    });
    b.wait_true(
        WAIT,
        "the replay's answer",
        "return document.body.innerText.includes('Replayed order.validated ')",
    );
    wait_for(WAIT, "the replayed order to be notified", || {
        let (_, t) = h.raw("GET", "/v1/traces/ui-dlq", None);
        t.as_array()?
            .iter()
            .any(|e| e["type"] == "customer.notified")
            .then_some(())
    });
    let (_, list) = h.raw("GET", "/v1/dlq", None);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    no_errors(&b, "the replay");

    // State, read-only.
    visit(
        &b,
        &base,
        "/state/stock",
        "the bucket",
        "return document.body.innerText.includes('Bucket stock')",
    );
    no_errors(&b, "state");
    b.screenshot("state");

    // The keyboard: digits go to sections, `/` to the first filter.
    b.block_on(async {
        let body = b.client.find(Locator::Css("body")).await.unwrap();
        body.send_keys("2").await.unwrap();
    });
    b.wait_true(
        WAIT,
        "key 2 to runs",
        "return location.hash === '#/runs' && !!document.querySelector('form.filters')",
    );
    b.block_on(async {
        let body = b.client.find(Locator::Css("body")).await.unwrap();
        body.send_keys("/").await.unwrap();
    });
    b.wait_true(
        WAIT,
        "/ to the first filter",
        "return document.activeElement && document.activeElement.id === 'f-flow'",
    );

    // 200% zoom: the same pages in a viewport half as wide never scroll
    // sideways (tables scroll in their own box).
    b.block_on(b.client.set_window_size(640, 900)).unwrap();
    for (hash, name) in [
        ("/", "zoom-app"),
        ("/runs", "zoom-runs"),
        (&*format!("/runs/{id}"), "zoom-run"),
        ("/dlq", "zoom-dlq"),
    ] {
        visit(
            &b,
            &base,
            hash,
            name,
            "return !document.querySelector('.loading')",
        );
        std::thread::sleep(Duration::from_millis(300));
        let fits = b.eval("return document.documentElement.scrollWidth <= window.innerWidth + 1");
        assert_eq!(
            fits,
            json!(true),
            "{name}: the page scrolls sideways at 640px"
        );
        b.screenshot(name);
    }
    no_errors(&b, "the narrow pages");
}
