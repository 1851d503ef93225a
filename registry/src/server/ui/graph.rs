//! A Repository's upstream chain drawn as a small graph (inline SVG, styled by the UI's
//! stylesheet): the Repository, its upstream Repositories by depth, and the external
//! connections they hold. Repositories the viewer may not read are drawn unnamed.

use std::collections::HashMap;
use std::fmt::Write;

use wharf_api::DomainConfig;
use wharf_formats::markup::escape;

const COLUMN: u32 = 180;
const NODE_WIDTH: u32 = 150;
const ROW: u32 = 44;
const NODE_HEIGHT: u32 = 30;
/// Characters of a name drawn in a node; the full name is in its tooltip.
const LABEL_CHARS: usize = 20;

struct Node {
    label: String,
    detail: &'static str,
    external: bool,
    column: u32,
    row: u32,
}

/// The SVG for `repository`'s chain. `id` makes the arrow marker's id unique on the page.
pub fn chain_svg(config: &DomainConfig, repository: &str, readable: impl Fn(&str) -> bool, id: usize) -> String {
    let order = wharf_core::policy::resolution_order(config, repository).repositories;
    let mut depth: HashMap<&str, u32> = HashMap::from([(repository, 0)]);
    // Breadth-first, so each Repository sits one column right of its nearest downstream.
    let mut queue = std::collections::VecDeque::from([repository]);
    while let Some(name) = queue.pop_front() {
        let Some(repo) = config.repository(name) else { continue };
        for upstream in repo.upstream_names() {
            if order.iter().any(|o| o == upstream) && !depth.contains_key(upstream) {
                depth.insert(upstream, depth[name] + 1);
                queue.push_back(upstream);
            }
        }
    }
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut rows: HashMap<u32, u32> = HashMap::new();
    let mut place = |column: u32| {
        let row = rows.entry(column).or_default();
        *row += 1;
        *row - 1
    };
    for name in &order {
        let column = depth.get(name.as_str()).copied().unwrap_or(0);
        let label = if readable(name) { name.clone() } else { "private Repository".to_owned() };
        index.insert(name, nodes.len());
        nodes.push(Node { label, detail: "Repository", external: false, column, row: place(column) });
    }
    let mut edges: Vec<(usize, usize, bool)> = Vec::new();
    for name in &order {
        let Some(repo) = config.repository(name) else { continue };
        for upstream in repo.upstream_names() {
            if let (Some(&from), Some(&to)) = (index.get(name.as_str()), index.get(upstream)) {
                edges.push((from, to, false));
            }
        }
        let connection = repo.spec.external_connection.as_deref();
        if let Some(connection) = connection.and_then(|c| config.domain.spec.external_connection(c)) {
            let column = nodes[index[name.as_str()]].column + 1;
            let row = place(column);
            edges.push((index[name.as_str()], nodes.len(), true));
            nodes.push(Node {
                label: connection.name.clone(),
                detail: connection.format.as_str(),
                external: true,
                column,
                row,
            });
        }
    }
    let columns = nodes.iter().map(|n| n.column + 1).max().unwrap_or(1);
    let height = nodes.iter().map(|n| n.row + 1).max().unwrap_or(1) * ROW;
    let width = columns * COLUMN - (COLUMN - NODE_WIDTH);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chain" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-labelledby="chain-title-{id}"><title id="chain-title-{id}">Upstream chain of {}</title><defs><marker id="arrow-{id}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L8,4 L0,8 z" class="arrowhead"/></marker></defs>"#,
        escape(repository)
    );
    for (from, to, external) in &edges {
        let (a, b) = (&nodes[*from], &nodes[*to]);
        let (x1, y1) = (a.column * COLUMN + NODE_WIDTH, a.row * ROW + NODE_HEIGHT / 2);
        let (x2, y2) = (b.column * COLUMN, b.row * ROW + NODE_HEIGHT / 2);
        let class = if *external { "edge external" } else { "edge" };
        let _ = write!(
            svg,
            r#"<line class="{class}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" marker-end="url(#arrow-{id})"/>"#
        );
    }
    for node in &nodes {
        let (x, y) = (node.column * COLUMN, node.row * ROW);
        let class = if node.external { "node external" } else { "node" };
        let short: String = node.label.chars().take(LABEL_CHARS).collect();
        let short = if short.len() < node.label.len() { format!("{short}…") } else { short };
        let _ = write!(
            svg,
            r#"<g class="{class}"><title>{} ({})</title><rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="5"/><text x="{}" y="{}">{}</text></g>"#,
            escape(&node.label),
            node.detail,
            x + 8,
            y + 19,
            escape(&short),
        );
    }
    svg.push_str("</svg>");
    svg
}
