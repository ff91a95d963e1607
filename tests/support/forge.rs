//! Components written by hand (WebAssembly text), for the shapes no guest
//! toolchain produces: a step whose one component instance holds many core
//! instances, each with a linear memory of its own.
//!
//! The component implements the `troupe:step` world's exports directly
//! with the canonical ABI: `describe` returns a contract laid out in a data
//! segment, `handle` returns `ok([])`. It imports nothing.

/// A `troupe:step` component named `multimem` that consumes `test.mem`,
/// with `extra` more core instances, each with a memory of `pages` 64 KiB
/// pages whose every page it writes when it starts (at instantiation).
pub fn many_memories(extra: usize, pages: u32) -> Vec<u8> {
    let (data, describe_at, handle_at) = layout();
    let mut wat = String::from("(component\n");
    wat += &format!(
        r#"  (core module $Main
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      ;; bump allocation, aligned; grow memory 0 as needed
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (block $fits
        (br_if $fits (i32.le_u (global.get $bump) (i32.shl (memory.size) (i32.const 16))))
        (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $bump)
                                                        (i32.shl (memory.size) (i32.const 16)))
                                               (i32.const 16))
                                    (i32.const 1)))))
      (local.get $p))
    (func (export "describe") (result i32) (i32.const {describe_at}))
    (func (export "handle") (param i32) (result i32) (i32.const {handle_at}))
    (data (i32.const 0) "{data}"))
  (core module $Big
    (memory {pages})
    (func $touch (local $i i32)
      (loop $next
        (i32.store8 (local.get $i) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 4096)))
        (br_if $next (i32.lt_u (local.get $i) (i32.const {bytes})))))
    (start $touch))
  (core instance $main (instantiate $Main))
"#,
        data = escape(&data),
        bytes = u64::from(pages) * 65536,
    );
    for i in 0..extra {
        wat += &format!("  (core instance $big{i} (instantiate $Big))\n");
    }
    wat += r#"  (type $ec (record (field "kind" string) (field "version" string)
                   (field "schema" string) (field "description" string)))
  (export $ec2 "event-contract" (type $ec))
  (type $contract (record (field "name" string) (field "version" string)
                         (field "description" string) (field "consumes" (list $ec2))
                         (field "produces" (list $ec2)) (field "deterministic" bool)))
  (export $contract2 "contract" (type $contract))
  (type $event (record (field "id" string) (field "source" string) (field "kind" string)
                      (field "subject" (option string)) (field "time" string)
                      (field "content-type" string) (field "schema" (option string))
                      (field "data" (list u8)) (field "extensions" (list (tuple string string)))
                      (field "attempt" u32)))
  (export $event2 "event" (type $event))
  (type $emit (record (field "kind" string) (field "subject" (option string))
                     (field "content-type" (option string)) (field "data" (list u8))))
  (export $emit2 "emit" (type $emit))
  (type $error (variant (case "retry" string) (case "reject" string)))
  (export $error2 "step-error" (type $error))
  (alias core export $main "memory" (core memory $memory))
  (alias core export $main "realloc" (core func $realloc))
  (alias core export $main "describe" (core func $describe-core))
  (alias core export $main "handle" (core func $handle-core))
  (func $describe (result $contract2)
    (canon lift (core func $describe-core) (memory $memory) (realloc $realloc)))
  (export "describe" (func $describe))
  (func $handle (param "event" $event2) (result (result (list $emit2) (error $error2)))
    (canon lift (core func $handle-core) (memory $memory) (realloc $realloc)))
  (export "handle" (func $handle))
)
"#;
    wat::parse_str(&wat).expect("the forged component is valid text")
}

/// Memory 0 of `$Main`: the strings, the one event contract, the contract
/// record (`describe`'s result) and `ok([])` (`handle`'s), canonical ABI
/// layout (a string or list is a pointer and a length, 4 bytes each).
fn layout() -> (Vec<u8>, usize, usize) {
    let mut m = vec![0u8; 16];
    let string = |m: &mut Vec<u8>, s: &str| {
        let at = m.len();
        m.extend_from_slice(s.as_bytes());
        (at as u32, s.len() as u32)
    };
    let strings: Vec<(u32, u32)> = [
        "multimem",
        "1.0.0",
        "Many core instances, a memory each",
        "test.mem",
        "1.0.0",
        "{}",
        "Anything",
    ]
    .iter()
    .map(|s| string(&mut m, s))
    .collect();
    let align = |m: &mut Vec<u8>| m.resize(m.len().next_multiple_of(8), 0);
    let put = |m: &mut Vec<u8>, (p, l): (u32, u32)| {
        m.extend_from_slice(&p.to_le_bytes());
        m.extend_from_slice(&l.to_le_bytes());
    };
    align(&mut m);
    let event_contract = m.len() as u32;
    for s in &strings[3..7] {
        put(&mut m, *s);
    }
    align(&mut m);
    let contract = m.len();
    put(&mut m, strings[0]);
    put(&mut m, strings[1]);
    put(&mut m, strings[2]);
    put(&mut m, (event_contract, 1)); // consumes
    put(&mut m, (0, 0)); // produces
    m.push(0); // deterministic
    align(&mut m);
    let ok_empty = m.len();
    m.extend_from_slice(&[0, 0, 0, 0]); // `ok`, padding
    put(&mut m, (0, 0));
    (m, contract, ok_empty)
}

fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}
