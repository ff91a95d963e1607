//! Child flow steps, on each broker, against the order example: parents
//! whose children sleep (parked) when the host (`troupe run` as a child
//! process) is killed each start one child, and each ends once, with its
//! child's output; a cancel after the restart reaches a parked child; and
//! on the host that took over, the example's `order` flow, whose
//! fulfilment is declined, has its completed `pack` child undo its own
//! picks. (One host per broker for all of it: a host's start costs
//! seconds.)

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_tests::process::{HostProcess, troupe_check};
use troupe_tests::{
    ApiHost, Backend, TestApp, example_app_scheduled, on_each_broker_blocking, wait_for,
};

on_each_broker_blocking!(
    each_child_starts_once_and_ends_once_across_a_sigkill_and_is_undone_with_its_parent
);

const STARTUP: Duration = Duration::from_secs(120);
/// How long a child sleeps: long enough for a restart in between.
const NAP_MS: u64 = 15_000;
const PARENTS: usize = 6;

/// A child flow: validate an order, sleep, then pick each of its lines.
fn napper() -> String {
    format!(
        "input = \"order.placed\"\ntimeout_ms = 120000\n\
         [steps.validate]\nstep = \"order-validate\"\n\
         [steps.nap]\nsleep_ms = {NAP_MS}\nafter = [\"validate\"]\n\
         [steps.pick]\nstep = \"line-pick\"\nfor_each = \"validate.lines\"\nafter = [\"nap\"]\n"
    )
}

/// A parent: `first` runs `napper` with the run's input, then `check`
/// validates the input again.
const OUTER: &str = "input = \"order.placed\"\ntimeout_ms = 180000\n\
    [steps.first]\nflow = \"napper\"\n\
    [steps.check]\nstep = \"order-validate\"\nafter = [\"first\"]\n";

fn app(b: Backend) -> TestApp {
    let app = example_app_scheduled(b, "orders", "");
    for (name, text) in [("napper", napper()), ("outer", OUTER.to_string())] {
        std::fs::write(app.path().join("flows").join(format!("{name}.toml")), text).unwrap();
    }
    app
}

fn order(i: usize, customer: &str) -> Value {
    json!({"order_id": format!("o-{i}"), "customer": customer, "lines": [
        {"sku": "cup", "qty": 1, "price_cents": 800},
        {"sku": "pen", "qty": 2, "price_cents": 150},
    ]})
}

fn ended(host: &HostProcess, id: &str, within: Duration) -> Value {
    wait_for(within, "the run ended", || {
        let run = host.client.status(id).ok()?;
        (!matches!(run["state"].as_str(), Some("running" | "compensating"))).then_some(run)
    })
}

fn each_child_starts_once_and_ends_once_across_a_sigkill_and_is_undone_with_its_parent(b: Backend) {
    let app = app(b);
    let host = HostProcess::start(&app, &[], STARTUP);
    let parents: Vec<String> = (0..PARENTS)
        .map(|i| host.client.start("outer", &order(i, "ada")).unwrap())
        .collect();
    // Each parent's child is asleep (parked) when the host is killed.
    let children: Vec<String> = parents
        .iter()
        .map(|id| {
            wait_for(Duration::from_secs(60), "the child sleeps", || {
                let run = host.client.status(id).ok()?;
                let child = run["steps"]["first"]["child"].as_str()?.to_string();
                let c = host.client.status(&child).ok()?;
                (c["steps"]["nap"]["state"] == "sleeping").then_some(child)
            })
        })
        .collect();
    let run = host.client.status(&children[0]).unwrap();
    assert_eq!(
        run["parent"],
        json!({"run": parents[0], "step": "first"}),
        "{run:#}"
    );
    drop(host); // SIGKILL while the children sleep
    let host = HostProcess::start(&app, &[], STARTUP);
    // A cancel of a parent reaches its child, parked in the store.
    let (status, v) = host
        .client
        .post(
            &format!("/v1/runs/{}/cancel", parents[0]),
            Some(&json!({"by": "ops"})),
        )
        .unwrap();
    assert!(status == 200 || status == 202, "{status} {v}");
    let within = Duration::from_secs(180);
    let cancelled = ended(&host, &parents[0], within);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["steps"]["first"]["state"], "failed");
    let child = ended(&host, &children[0], within);
    assert_eq!(child["state"], "cancelled", "{child:#}");
    assert_eq!(child["steps"]["nap"]["state"], "cancelled");
    assert!(
        child["cancelled"]["by"]
            .as_str()
            .unwrap()
            .contains(&parents[0]),
        "{child:#}"
    );
    for (parent, child) in parents.iter().zip(&children).skip(1) {
        let run = ended(&host, parent, within);
        assert_eq!(run["state"], "completed", "{run:#}");
        let first = &run["steps"]["first"];
        assert_eq!(first["attempts"], 1, "{first}");
        assert_eq!(first["child"], child.as_str(), "the same child: {first}");
        // The child's output is the step's: its picks, in order.
        let picked: Vec<&str> = first["output"]
            .as_array()
            .unwrap_or_else(|| panic!("the picks: {first}"))
            .iter()
            .map(|p| p["sku"].as_str().unwrap())
            .collect();
        assert_eq!(picked, ["cup", "pen"]);
        let c = host.client.status(child).unwrap();
        assert_eq!(c["state"], "completed", "{c:#}");
        assert!(c["steps"]["nap"]["duration_ms"].as_u64().unwrap() >= NAP_MS);
    }
    // One child per parent: no start made a second one.
    let listed = host.client.get("/v1/runs?flow=napper&limit=500").unwrap();
    let runs = listed["runs"].as_array().expect("a list of runs");
    let ids: BTreeSet<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want: BTreeSet<&str> = children.iter().map(String::as_str).collect();
    assert_eq!(ids, want, "{listed:#}");
    // On the host that took over: the example's `order` flow, whose
    // compensation reaches its completed child.
    a_parents_compensation_reaches_its_completed_child(&host.client);
}

fn a_parents_compensation_reaches_its_completed_child(h: &troupe::client::Client) {
    // mallory's card is declined: `fulfil` undoes itself and fails, and
    // the `order` run undoes its completed `pack` child.
    let id = h.start("order", &order(1, "mallory")).unwrap();
    let run = h.wait(&id, Duration::from_secs(60), |_| {}).unwrap();
    assert_eq!(run["state"], "compensated", "{run:#}");
    assert_eq!(run["steps"]["fulfil"]["state"], "failed", "{run:#}");
    assert_eq!(run["steps"]["pack"]["state"], "compensated", "{run:#}");
    let fulfil = h
        .status(run["steps"]["fulfil"]["child"].as_str().unwrap())
        .unwrap();
    assert_eq!(fulfil["state"], "compensated", "{fulfil:#}");
    assert!(
        run["steps"]["fulfil"]["errors"][0]
            .as_str()
            .unwrap()
            .contains(fulfil["id"].as_str().unwrap()),
        "{run:#}"
    );
    let pack = h
        .status(run["steps"]["pack"]["child"].as_str().unwrap())
        .unwrap();
    assert_eq!(pack["state"], "compensated", "{pack:#}");
    assert_eq!(pack["parent"]["run"], id.as_str());
    for i in 0..2 {
        assert_eq!(
            pack["steps"][format!("pick[{i}]")]["state"],
            "compensated",
            "{pack:#}"
        );
        let undo = &pack["steps"][format!("pick[{i}]~undo")];
        assert_eq!(undo["state"], "completed", "{pack:#}");
        assert_eq!(undo["output_type"], "line.returned");
    }
    // A customer fulfil serves: the run completes with fulfil's output.
    let id = h.start("order", &order(2, "ada")).unwrap();
    let run = h.wait(&id, Duration::from_secs(60), |_| {}).unwrap();
    assert_eq!(run["state"], "completed", "{run:#}");
    assert_eq!(run["steps"]["pack"]["state"], "completed");
    assert!(
        run["steps"]["fulfil"]["output"]["tracking"].is_string(),
        "{run:#}"
    );
}

#[test]
fn bad_child_flow_steps_are_refused_before_a_host_starts() {
    let flow = |steps: &str| {
        format!("input = \"order.placed\"\n[steps.a]\nstep = \"order-validate\"\n{steps}")
    };
    let cases = [
        (
            "a flow the app has not",
            vec![("broken", flow("[steps.k]\nflow = \"nope\"\n"))],
            "the app has no flow \"nope\"",
        ),
        (
            "flows that call each other",
            vec![
                ("broken", flow("[steps.k]\nflow = \"other\"\n")),
                ("other", flow("[steps.k]\nflow = \"broken\"\n")),
            ],
            "flows call each other in a cycle",
        ),
        (
            "a flow that calls itself",
            vec![("broken", flow("[steps.k]\nflow = \"broken\"\n"))],
            "broken -> broken",
        ),
        (
            "an input of another type",
            vec![(
                "broken",
                flow("[steps.k]\nflow = \"pack\"\ninput = \"a\"\n"),
            )],
            "is not what flow \"pack\" takes (order.placed)",
        ),
        (
            "a child with several last steps",
            vec![
                ("broken", flow("[steps.k]\nflow = \"two\"\n")),
                (
                    "two",
                    "input = \"order.placed\"\n[steps.x]\nstep = \"order-validate\"\n\
                     [steps.y]\nstep = \"order-validate\"\n"
                        .to_string(),
                ),
            ],
            "flow \"two\" has several last steps",
        ),
        (
            "an output that is no step",
            vec![("broken", format!("output = \"zz\"\n{}", flow("")))],
            "`output` \"zz\" is not a step of this flow",
        ),
        (
            "a child step with a compensation",
            vec![(
                "broken",
                flow("[steps.k]\nflow = \"pack\"\ncompensate = \"line-return\"\n"),
            )],
            "it takes no `compensate`",
        ),
        (
            "a child step that is a command too",
            vec![(
                "broken",
                flow("[steps.k]\nflow = \"pack\"\nstep = \"line-pick\"\n"),
            )],
            "a child flow step (`flow`) takes no `step`",
        ),
        (
            "a child step for each element",
            vec![(
                "broken",
                flow("[steps.k]\nflow = \"pack\"\nfor_each = \"a.lines\"\n"),
            )],
            "takes no `for_each`",
        ),
    ];
    for (i, (what, flows, message)) in cases.into_iter().enumerate() {
        let app = example_app_scheduled(Backend::Embedded, "orders", "");
        for (name, text) in &flows {
            std::fs::write(app.path().join("flows").join(format!("{name}.toml")), text).unwrap();
        }
        let (passed, said) = troupe_check(app.path());
        assert!(
            !passed && said.contains(message),
            "{what}: troupe check: {said}"
        );
        assert!(said.contains(".toml:"), "{what}: where: {said}");
        // A host reads the flows with the same code (`Flow::parse_all`):
        // it refuses the first two too (a host's start costs seconds).
        if i < 2 {
            let err = ApiHost::try_start(&app)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"))
                .to_string();
            assert!(err.contains(message), "{what}: {err}");
        }
    }
}
