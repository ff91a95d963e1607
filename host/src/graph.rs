//! `troupe graph`: who consumes and produces what, as Mermaid or Graphviz.
//!
//! Steps are boxes, event types are rounded nodes; an edge runs from an
//! event type to each step that consumes it and from each step to what it
//! produces (dotted for a step that takes commands only). Each flow is a
//! subgraph of its flow steps, with an edge per
//! dependency, and a dotted edge to the app step each one commands. What a
//! step may call outside the app (its `grants.http`) is a hexagon, with a
//! dotted edge from the step.

use std::fmt::Write;

use crate::contract::StepView;
use crate::flow::{Action, Flow, Wake};

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

/// What a node stands for; it decides the node's shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Step,
    Event,
    FlowStep,
    /// Somewhere outside the app a step may call (a `grants.http` url).
    External,
}

struct Node {
    id: String,
    label: String,
    kind: Kind,
}

/// The graph once, whatever the format: nodes, edges (from, to, dotted),
/// and one cluster of flow-step nodes per flow.
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<(String, String, bool)>,
    clusters: Vec<(String, String, Vec<Node>)>,
}

fn build(steps: &[impl StepView], flows: &[Flow]) -> Graph {
    let mut kinds: Vec<String> = steps
        .iter()
        .flat_map(|s| {
            s.contract()
                .consumes
                .iter()
                .chain(&s.contract().produces)
                .map(|t| t.kind.clone())
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut g = Graph {
        nodes: Vec::new(),
        edges: Vec::new(),
        clusters: Vec::new(),
    };
    for s in steps {
        g.nodes.push(Node {
            id: id("s", s.name()),
            label: s.name().to_string(),
            kind: Kind::Step,
        });
        // A commands-only step is not subscribed: a dotted edge.
        let subscribed = s.choreography();
        for t in &s.contract().consumes {
            g.edges
                .push((id("e", &t.kind), id("s", s.name()), !subscribed));
        }
        for t in &s.contract().produces {
            g.edges.push((id("s", s.name()), id("e", &t.kind), false));
        }
    }
    for k in kinds {
        g.nodes.push(Node {
            id: id("e", &k),
            label: k,
            kind: Kind::Event,
        });
    }
    for f in flows {
        let prefix = format!("f_{}", f.name);
        let members = f
            .steps
            .iter()
            .map(|s| Node {
                id: id(&prefix, &s.id),
                label: match &s.action {
                    Action::Signal { name, .. } => format!("{} (signal {name})", s.id),
                    Action::Sleep(Wake::After(ms)) => format!("{} (sleep {ms} ms)", s.id),
                    Action::Sleep(Wake::Until(p)) => format!("{} (sleep until {})", s.id, p.text),
                    Action::Child { flow } => format!("{} (runs flow {flow})", s.id),
                    _ => match &s.fan {
                        Some(f) => format!(
                            "{} (for each {}, {} at once)",
                            s.id, f.over.text, f.max_parallel
                        ),
                        None => s.id.clone(),
                    },
                },
                kind: Kind::FlowStep,
            })
            .collect();
        g.clusters
            .push((id("flow", &f.name), format!("flow {}", f.name), members));
        for s in &f.steps {
            let me = id(&prefix, &s.id);
            for dep in &s.after {
                g.edges.push((id(&prefix, dep), me.clone(), false));
            }
            let target = match &s.action {
                Action::Command { step } => id("s", step),
                Action::Hybrid { kind, .. } => id("e", kind),
                // Into the child flow: to each of its first steps.
                Action::Child { flow } => {
                    let callee = flows.iter().find(|c| &c.name == flow);
                    let prefix = format!("f_{flow}");
                    for first in callee.iter().flat_map(|c| &c.steps) {
                        if first.after.is_empty() {
                            g.edges.push((me.clone(), id(&prefix, &first.id), true));
                        }
                    }
                    continue;
                }
                // Waits for the outside, not for a step or an event.
                Action::Signal { .. } | Action::Sleep(_) => continue,
            };
            g.edges.push((me, target, true));
        }
    }
    g
}

/// The graph of `steps` and `flows` in `format`.
pub fn render(steps: &[impl StepView], flows: &[Flow], format: Format) -> String {
    render_with_calls(steps, flows, &[], format)
}

/// The same, with what each step may call outside the app: `(step, the
/// urls of its grants.http)`, drawn as hexagons with a dotted edge.
pub fn render_with_calls(
    steps: &[impl StepView],
    flows: &[Flow],
    calls: &[(String, Vec<String>)],
    format: Format,
) -> String {
    let mut g = build(steps, flows);
    let mut urls: Vec<&String> = calls.iter().flat_map(|(_, us)| us).collect();
    urls.sort();
    urls.dedup();
    for u in urls {
        g.nodes.push(Node {
            id: id("x", u),
            label: u.clone(),
            kind: Kind::External,
        });
    }
    for (step, us) in calls {
        for u in us {
            g.edges.push((id("s", step), id("x", u), true));
        }
    }
    let mut out = String::new();
    match format {
        Format::Mermaid => {
            let node = |n: &Node| match n.kind {
                Kind::Event => format!("{}([\"{}\"])", n.id, n.label),
                Kind::External => format!("{}{{{{\"{}\"}}}}", n.id, n.label),
                Kind::Step | Kind::FlowStep => format!("{}[\"{}\"]", n.id, n.label),
            };
            out.push_str("flowchart LR\n");
            for n in &g.nodes {
                let _ = writeln!(out, "  {}", node(n));
            }
            for (cluster, label, members) in &g.clusters {
                let _ = writeln!(out, "  subgraph {cluster}[\"{label}\"]");
                for n in members {
                    let _ = writeln!(out, "    {}", node(n));
                }
                out.push_str("  end\n");
            }
            for (a, b, dotted) in &g.edges {
                let arrow = if *dotted { "-.->" } else { "-->" };
                let _ = writeln!(out, "  {a} {arrow} {b}");
            }
        }
        Format::Dot => {
            let node = |n: &Node| {
                let shape = match n.kind {
                    Kind::Step => "shape=box",
                    Kind::Event => "shape=ellipse",
                    Kind::FlowStep => "shape=box, style=rounded",
                    Kind::External => "shape=hexagon",
                };
                format!("{} [label=\"{}\", {shape}];", n.id, n.label)
            };
            out.push_str("digraph troupe {\n  rankdir=LR;\n");
            for n in &g.nodes {
                let _ = writeln!(out, "  {}", node(n));
            }
            for (cluster, label, members) in &g.clusters {
                let _ = writeln!(
                    out,
                    "  subgraph cluster_{cluster} {{\n    label=\"{label}\";"
                );
                for n in members {
                    let _ = writeln!(out, "    {}", node(n));
                }
                out.push_str("  }\n");
            }
            for (a, b, dotted) in &g.edges {
                let style = if *dotted { " [style=dotted]" } else { "" };
                let _ = writeln!(out, "  {a} -> {b}{style};");
            }
            out.push_str("}\n");
        }
    }
    out
}
