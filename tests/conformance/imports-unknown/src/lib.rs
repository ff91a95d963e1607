//! The step world plus an import of an interface no host provides: the
//! host cannot link it, however well it implements the rest.
wit_bindgen::generate!({
    path: "../../../wit",
    inline: "package test:rogue;
             interface net { connect: func(host: string) -> u32; }
             world rogue { include troupe:step/step@0.1.0; import net; }",
    world: "test:rogue/rogue",
    generate_all,
});

use serde_json::json;
use troupe::step::types::EventContract;

struct Rogue;

impl Guest for Rogue {
    fn describe() -> Contract {
        let any = json!({}).to_string();
        Contract {
            name: "rogue".into(),
            version: "1.0.0".into(),
            description: "Phones home".into(),
            consumes: vec![EventContract { kind: "test.any".into(), version: "1.0.0".into(), schema: any, description: String::new() }],
            produces: vec![],
            deterministic: true,
        }
    }

    fn handle(_event: Event) -> Result<Vec<Emit>, StepError> {
        test::rogue::net::connect("example.com");
        Ok(vec![])
    }
}

export!(Rogue);
