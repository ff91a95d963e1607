//! `troupe graph`: who consumes and produces what, as Mermaid or Graphviz.
//!
//! Steps are boxes, event types are rounded nodes; an edge runs from an
//! event type to each step that consumes it and from each step to what it
//! produces (dotted for a step that takes commands only). Each flow is a
//! subgraph of its flow steps, with an edge per
//! dependency, and a dotted edge to the app step each one commands.

use std::fmt::Write;
use std::sync::Arc;

use crate::flow::{Action, Flow};
use crate::runtime::step::LoadedStep;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mermaid,
    Dot,
}

fn id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{clean}")
}

/// The graph of `steps` and `flows` in `format`.
pub fn render(steps: &[Arc<LoadedStep>], flows: &[Flow], format: Format) -> String {
    let mut kinds: Vec<String> = steps
        .iter()
        .flat_map(|s| {
            s.contract
                .consumes
                .iter()
                .chain(&s.contract.produces)
                .map(|t| t.kind.clone())
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for s in steps {
        nodes.push((id("s", s.name()), s.name().to_string(), true));
        // A commands-only step is not subscribed: a dotted edge.
        let subscribed = s.sandbox.config.choreography;
        for t in &s.contract.consumes {
            edges.push((id("e", &t.kind), id("s", s.name()), !subscribed));
        }
        for t in &s.contract.produces {
            edges.push((id("s", s.name()), id("e", &t.kind), false));
        }
    }
    for k in &kinds {
        nodes.push((id("e", k), k.clone(), false));
    }
    let mut out = String::new();
    match format {
        Format::Mermaid => {
            out.push_str("flowchart LR\n");
            for (n, label, is_step) in &nodes {
                let _ = if *is_step {
                    writeln!(out, "  {n}[\"{label}\"]")
                } else {
                    writeln!(out, "  {n}([\"{label}\"])")
                };
            }
            for (a, b, dotted) in &edges {
                let arrow = if *dotted { "-.->" } else { "-->" };
                let _ = writeln!(out, "  {a} {arrow} {b}");
            }
            for f in flows {
                let _ = writeln!(
                    out,
                    "  subgraph {}[\"flow {}\"]",
                    id("flow", &f.name),
                    f.name
                );
                for s in &f.steps {
                    let _ = writeln!(
                        out,
                        "    {}[\"{}\"]",
                        id(&format!("f_{}", f.name), &s.id),
                        s.id
                    );
                }
                out.push_str("  end\n");
                for s in &f.steps {
                    let me = id(&format!("f_{}", f.name), &s.id);
                    for dep in &s.after {
                        let _ = writeln!(out, "  {} --> {me}", id(&format!("f_{}", f.name), dep));
                    }
                    match &s.action {
                        Action::Command { step } => {
                            let _ = writeln!(out, "  {me} -.-> {}", id("s", step));
                        }
                        Action::Hybrid { kind, .. } => {
                            let _ = writeln!(out, "  {me} -.-> {}", id("e", kind));
                        }
                    }
                }
            }
        }
        Format::Dot => {
            out.push_str("digraph troupe {\n  rankdir=LR;\n");
            for (n, label, is_step) in &nodes {
                let shape = if *is_step { "box" } else { "ellipse" };
                let _ = writeln!(out, "  {n} [label=\"{label}\", shape={shape}];");
            }
            for (a, b, dotted) in &edges {
                let style = if *dotted { " [style=dotted]" } else { "" };
                let _ = writeln!(out, "  {a} -> {b}{style};");
            }
            for f in flows {
                let _ = writeln!(
                    out,
                    "  subgraph cluster_{} {{\n    label=\"flow {}\";",
                    id("flow", &f.name),
                    f.name
                );
                for s in &f.steps {
                    let _ = writeln!(
                        out,
                        "    {} [label=\"{}\", shape=box, style=rounded];",
                        id(&format!("f_{}", f.name), &s.id),
                        s.id
                    );
                }
                out.push_str("  }\n");
                for s in &f.steps {
                    let me = id(&format!("f_{}", f.name), &s.id);
                    for dep in &s.after {
                        let _ = writeln!(out, "  {} -> {me};", id(&format!("f_{}", f.name), dep));
                    }
                    let target = match &s.action {
                        Action::Command { step } => id("s", step),
                        Action::Hybrid { kind, .. } => id("e", kind),
                    };
                    let _ = writeln!(out, "  {me} -> {target} [style=dotted];");
                }
            }
            out.push_str("}\n");
        }
    }
    out
}
