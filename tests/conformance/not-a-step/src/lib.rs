//! A valid component that exports some other world.
wit_bindgen::generate!({
    inline: "package test:other; world other { export run: func(x: u32) -> u32; }",
});

struct Other;

impl Guest for Other {
    fn run(x: u32) -> u32 {
        x + 1
    }
}

export!(Other);
