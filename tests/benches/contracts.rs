//! What bounding a contract costs on the happy path: the order example's
//! `order.placed` schema checked on a valid order, compiled as the host
//! compiles it (bounded, linear-time patterns, the budget keyword in every
//! subschema, each check within a budget) against the same schema compiled
//! plainly (`jsonschema::validator_for`), in turns within one process.
//!
//!   cargo bench -p troupe-tests --bench contracts
//!
//! `BENCH_ROUNDS` (default 7) rounds of `BENCH_CHECKS` (default 200,000)
//! checks each way; prints each round's ns per check and the median ratio.

use std::time::Instant;

use serde_json::json;

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (rounds, checks) = (env("BENCH_ROUNDS", 7), env("BENCH_CHECKS", 200_000));
    let line = json!({
        "type": "object",
        "required": ["sku", "qty", "price_cents"],
        "properties": {
            "sku": {"type": "string", "minLength": 1, "pattern": "^[A-Z0-9-]+$"},
            "qty": {"type": "integer", "minimum": 0},
            "price_cents": {"type": "integer", "minimum": 0}
        }
    });
    let schema = json!({
        "type": "object",
        "required": ["order_id", "customer", "lines"],
        "properties": {
            "order_id": {"type": "string", "minLength": 1},
            "customer": {"type": "string"},
            "lines": {"type": "array", "items": line},
            "receipt_url": {"type": "string"}
        }
    });
    let order = json!({
        "order_id": "o-1", "customer": "ada",
        "lines": [
            {"sku": "LAMP-1", "qty": 2, "price_cents": 1999},
            {"sku": "DESK-7", "qty": 1, "price_cents": 24900},
            {"sku": "PEN-3", "qty": 10, "price_cents": 99}
        ]
    });
    let plain = jsonschema::validator_for(&schema).expect("a schema");
    let bounded = troupe::contract::compile_schema(&schema).expect("within bounds");
    let budget = troupe::contract::budget::CHECK_BUDGET;
    let mut ratios = Vec::new();
    println!("round  plain ns/check  bounded ns/check  ratio");
    for r in 1..=rounds {
        let t = Instant::now();
        for _ in 0..checks {
            assert!(plain.is_valid(std::hint::black_box(&order)));
        }
        let p = t.elapsed().as_nanos() as f64 / checks as f64;
        let t = Instant::now();
        for _ in 0..checks {
            let ok = troupe::contract::budget::within(budget, || {
                bounded.is_valid(std::hint::black_box(&order))
            });
            assert_eq!(ok, Some(true));
        }
        let b = t.elapsed().as_nanos() as f64 / checks as f64;
        println!("{r:>5}  {p:>14.0}  {b:>16.0}  {:.3}", b / p);
        ratios.push(b / p);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median bounded / plain: {:.3}", ratios[ratios.len() / 2]);
}
