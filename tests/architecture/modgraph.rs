//! Finds cycles in the module dependency graph of a library crate.
//!
//! Every module file reachable from `lib.rs` through `mod x;` is a node (`crate` is the root).
//! Module A depends on module B when A's code names a path into B: a `use` tree, a type, an
//! expression, a pattern, a trait bound, a macro's own path. Paths are resolved from `crate::`,
//! `self::`, `super::` and from a first segment naming a child module declared in the same
//! file, then mapped to the longest module prefix (`crate::worker::step::X` -> `worker::step`).
//! Code under `#[cfg(test)]` is ignored, and so are edges from the root (lib.rs only declares).
//!
//! Limits: macro bodies are not parsed; `#[path]` on `mod` and file modules declared inside
//! inline modules are not followed; inline modules belong to their file's node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::Path;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{Attribute, ImplItem, Item, Meta, Token, TraitItem, UseTree};

/// A module path relative to the crate root; empty for the root.
type ModPath = Vec<String>;

/// One dependency edge between two modules, with the first source path that creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The depending module, e.g. `worker::step`.
    pub from: String,
    /// The module depended upon, e.g. `worker`.
    pub to: String,
    /// The file of `from`, relative to the crate directory, e.g. `src/worker/step.rs`.
    pub file: String,
    /// The path as written (a `use` flattened to one leaf), e.g. `super::Worker`.
    pub text: String,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Edge {
            from,
            to,
            file,
            text,
        } = self;
        write!(f, "{from} -> {to} ({file}: {text})")
    }
}

/// A strongly connected component of more than one module.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// The modules of the component, sorted.
    pub modules: Vec<String>,
    /// One shortest cycle through the component's first module, edge by edge.
    pub path: Vec<Edge>,
    /// Every edge between two modules of the component.
    pub edges: Vec<Edge>,
}

/// `&x.attrs` for the listed variants of a syn enum, `&[]` for the others (e.g. `Verbatim`).
macro_rules! attrs_of {
    ($e:expr, $ty:ident: $($v:ident),*) => {
        match $e { $($ty::$v(i) => &i.attrs[..],)* _ => &[] }
    };
}

/// True when the attributes hold `#[cfg(test)]` or `#[cfg(all(.., test, ..))]`.
fn is_test_only(attrs: &[Attribute]) -> bool {
    fn test_pred(m: &Meta) -> bool {
        match m {
            Meta::Path(p) => p.is_ident("test"),
            Meta::List(l) if l.path.is_ident("all") => l
                .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .is_ok_and(|ms| ms.iter().any(test_pred)),
            _ => false,
        }
    }
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| test_pred(&m)))
}

/// The display name of a module: `crate` for the root, else `a::b`.
fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Flattens a `use` tree into one segment list per leaf (`*` kept, `self` and renames dropped).
fn flatten(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) if n.ident == "self" => out.push(prefix.clone()),
        UseTree::Name(n) => out.push([&prefix[..], &[n.ident.to_string()]].concat()),
        UseTree::Rename(r) if r.ident == "self" => out.push(prefix.clone()),
        UseTree::Rename(r) => out.push([&prefix[..], &[r.ident.to_string()]].concat()),
        UseTree::Glob(_) => out.push([&prefix[..], &["*".to_string()]].concat()),
        UseTree::Group(g) => g.items.iter().for_each(|t| flatten(t, prefix, out)),
    }
}

/// A parsed module file.
struct ModFile {
    path: ModPath,
    /// The file, relative to the crate directory (`src/a/b.rs`), for reports.
    shown: String,
    ast: syn::File,
    /// Child modules declared in this file with `mod x;` (not under `#[cfg(test)]`).
    children: HashSet<String>,
}

/// Parses `lib.rs` and every module file it reaches through `mod x;`, sorted by module path.
fn discover(src_dir: &Path) -> Result<Vec<ModFile>, String> {
    let crate_dir = src_dir.parent().unwrap_or(src_dir);
    let mut out = Vec::new();
    let mut todo = vec![(ModPath::new(), src_dir.join("lib.rs"))];
    while let Some((path, file)) = todo.pop() {
        let shown = file.strip_prefix(crate_dir).unwrap_or(&file);
        let shown = shown.display().to_string();
        let text = fs::read_to_string(&file).map_err(|e| format!("{shown}: {e}"))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{shown}: {e}"))?;
        // Children of lib.rs and a/mod.rs live beside them; those of a/b.rs live in a/b/.
        let dir = match path.is_empty() || file.ends_with("mod.rs") {
            true => file.parent().unwrap_or(src_dir).to_path_buf(),
            false => file.with_extension(""),
        };
        let mut children = HashSet::new();
        for item in &ast.items {
            let Item::Mod(m) = item else { continue };
            if m.content.is_some() || is_test_only(&m.attrs) {
                continue;
            }
            let n = m.ident.to_string();
            let candidates = [dir.join(format!("{n}.rs")), dir.join(&n).join("mod.rs")];
            let Some(child) = candidates.into_iter().find(|f| f.is_file()) else {
                return Err(format!("{shown}: no file for `mod {n};`"));
            };
            todo.push(([&path[..], std::slice::from_ref(&n)].concat(), child));
            children.insert(n);
        }
        out.push(ModFile {
            path,
            shown,
            ast,
            children,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The segments of a path, as strings.
fn segments(path: &syn::Path) -> Vec<String> {
    path.segments.iter().map(|s| s.ident.to_string()).collect()
}

/// Collects the crate-internal paths of one file, resolved to absolute module paths.
struct Collector<'a> {
    /// The current module, including the inline modules entered so far.
    here: ModPath,
    /// How many inline modules deep we are (children are only known at depth 0).
    depth: usize,
    children: &'a HashSet<String>,
    /// Resolved absolute path and the source text it came from.
    found: Vec<(ModPath, String)>,
}

impl Collector<'_> {
    /// Resolves `segs` against the current module and records it when it points into the crate.
    fn record(&mut self, segs: &[String], text: String) {
        let Some(first) = segs.first() else { return };
        let resolved = match first.as_str() {
            "crate" => segs[1..].to_vec(),
            "self" => [&self.here[..], &segs[1..]].concat(),
            "super" => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                let Some(keep) = self.here.len().checked_sub(ups) else {
                    return;
                };
                [&self.here[..keep], &segs[ups..]].concat()
            }
            // A bare `child::X` (Rust 2018+) where `mod child;` is declared in this file.
            s if self.depth == 0 && segs.len() > 1 && self.children.contains(s) => {
                [&self.here[..], segs].concat()
            }
            _ => return,
        };
        self.found.push((resolved, text));
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        let attrs = attrs_of!(item, Item: Const, Enum, ExternCrate, Fn, ForeignMod, Impl, Macro,
            Mod, Static, Struct, Trait, TraitAlias, Type, Union, Use);
        if is_test_only(attrs) {
            return;
        }
        match item {
            Item::Use(u) if u.leading_colon.is_none() => {
                let mut leaves = Vec::new();
                flatten(&u.tree, &mut Vec::new(), &mut leaves);
                for l in leaves {
                    self.record(&l, format!("use {}", l.join("::")));
                }
            }
            Item::Mod(m) if m.content.is_some() => {
                self.here.push(m.ident.to_string());
                self.depth += 1;
                visit::visit_item_mod(self, m);
                self.depth -= 1;
                self.here.pop();
            }
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        if !is_test_only(attrs_of!(item, ImplItem: Const, Fn, Type, Macro)) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast TraitItem) {
        if !is_test_only(attrs_of!(item, TraitItem: Const, Fn, Type, Macro)) {
            visit::visit_trait_item(self, item);
        }
    }

    /// `pub(super)`, `pub(in crate::a)` name a scope, not a dependency.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    /// Only the macro's own path: its body is an unparsed token stream.
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if mac.path.leading_colon.is_none() {
            let segs = segments(&mac.path);
            self.record(&segs, format!("{}!", segs.join("::")));
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segs = segments(path);
            self.record(&segs, segs.join("::"));
        }
        visit::visit_path(self, path); // generic arguments hold more paths
    }
}

/// Breadth-first search from `start` through nodes accepted by `keep`: visit order and parents.
fn bfs(adj: &[Vec<usize>], start: usize, keep: impl Fn(usize) -> bool) -> (Vec<usize>, Parents) {
    let (mut order, mut parent) = (vec![start], vec![None; adj.len()]);
    parent[start] = Some(start);
    let mut i = 0;
    while let Some(&v) = order.get(i) {
        i += 1;
        for &w in &adj[v] {
            if parent[w].is_none() && keep(w) {
                parent[w] = Some(v);
                order.push(w);
            }
        }
    }
    (order, parent)
}

/// BFS parents: `Some(p)` for each reached node (the start is its own parent), `None` otherwise.
type Parents = Vec<Option<usize>>;

/// The module graph: for each (from, to) pair of module indices, the first path text making it.
type Edges = BTreeMap<(usize, usize), String>;

/// Builds the module graph under `src_dir` (the crate's `src/`) and returns its cycles.
pub fn analyze(src_dir: &Path) -> Result<Vec<Cycle>, String> {
    let files = discover(src_dir)?;
    let index: HashMap<&[String], usize> =
        (0..files.len()).map(|i| (&files[i].path[..], i)).collect();
    let mut edges = Edges::new();
    // Index 0 is the root (the sort puts the empty path first): its edges are ignored.
    for (from, f) in files.iter().enumerate().skip(1) {
        let (here, children) = (f.path.clone(), &f.children);
        let mut c = Collector {
            here,
            depth: 0,
            children,
            found: vec![],
        };
        if !is_test_only(&f.ast.attrs) {
            c.visit_file(&f.ast);
        }
        for (target, text) in c.found {
            // The longest prefix that is a module; the root (empty prefix) always is.
            let mut owner = &target[..];
            while !index.contains_key(owner) {
                owner = &owner[..owner.len() - 1];
            }
            if index[owner] != from {
                edges.entry((from, index[owner])).or_insert(text);
            }
        }
    }
    let mut adj = vec![Vec::new(); files.len()];
    edges.keys().for_each(|&(a, b)| adj[a].push(b));
    // Strongly connected components by mutual reachability: O(n * (n + e)), ample for modules.
    let reach: Vec<Parents> = (0..adj.len()).map(|s| bfs(&adj, s, |_| true).1).collect();
    let mut sccs = BTreeSet::new();
    for (v, from_v) in reach.iter().enumerate() {
        let scc: Vec<usize> = (0..adj.len())
            .filter(|&u| from_v[u].and(reach[u][v]).is_some())
            .collect();
        if scc.len() > 1 {
            sccs.insert(scc);
        }
    }
    let mut cycles: Vec<Cycle> = sccs
        .iter()
        .map(|c| cycle(c, &adj, &edges, &files))
        .collect();
    cycles.sort_by(|a, b| a.modules.cmp(&b.modules));
    Ok(cycles)
}

/// The report of one component (sorted node indices): its modules, a loop and all its edges.
fn cycle(scc: &[usize], adj: &[Vec<usize>], edges: &Edges, files: &[ModFile]) -> Cycle {
    let edge = |&(a, b): &(usize, usize)| Edge {
        from: name(&files[a].path),
        to: name(&files[b].path),
        file: files[a].shown.clone(),
        text: edges[&(a, b)].clone(),
    };
    // Shortest loop through the component's first node `s`: s ~> u by BFS, then u -> s.
    let s = scc[0];
    let (order, parent) = bfs(adj, s, |w| scc.contains(&w));
    let mut u = *order
        .iter()
        .find(|&&u| adj[u].contains(&s))
        .expect("s is on a cycle");
    let mut nodes = vec![s, u];
    while u != s {
        u = parent[u].expect("reached");
        nodes.push(u);
    }
    nodes.reverse(); // s, ..., u, s
    let mut modules: Vec<String> = scc.iter().map(|&i| name(&files[i].path)).collect();
    modules.sort();
    let path = nodes.windows(2).map(|w| edge(&(w[0], w[1]))).collect();
    let inside = edges
        .keys()
        .filter(|(a, b)| scc.contains(a) && scc.contains(b));
    Cycle {
        modules,
        path,
        edges: inside.map(edge).collect(),
    }
}

/// The cycles of the module graph under `src_dir`: each strongly connected component of more
/// than one module, as its sorted module paths (`a::b`).
pub fn module_cycles(src_dir: &Path) -> Result<Vec<Vec<String>>, String> {
    Ok(analyze(src_dir)?.into_iter().map(|c| c.modules).collect())
}

/// Panics, listing every cycle and the source paths that make its edges, when the module graph
/// under `src_dir` has a cycle (or cannot be read).
pub fn assert_acyclic(src_dir: &Path) {
    let cycles = analyze(src_dir).unwrap_or_else(|e| panic!("module graph: {e}"));
    if cycles.is_empty() {
        return;
    }
    let mut msg = format!(
        "{} module cycle(s); break one edge of each loop:\n",
        cycles.len()
    );
    for (i, c) in cycles.iter().enumerate() {
        msg += &format!(
            "\ncycle {}: {{{}}}\n  one loop:\n",
            i + 1,
            c.modules.join(", ")
        );
        c.path.iter().for_each(|e| msg += &format!("    {e}\n"));
        msg += &format!("  all {} edges inside it:\n", c.edges.len());
        c.edges.iter().for_each(|e| msg += &format!("    {e}\n"));
    }
    panic!("{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Writes `files` under a fresh `<tmp>/modcheck-<name>-<pid>/src` and returns that crate dir.
    fn fake(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("modcheck-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (rel, text) in files {
            let p = root.join("src").join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        root
    }

    /// The cycles of a fake crate made of `files`.
    fn cycles(name: &str, files: &[(&str, &str)]) -> Vec<Vec<String>> {
        let root = fake(name, files);
        let found = module_cycles(&root.join("src"));
        let _ = fs::remove_dir_all(&root);
        found.unwrap()
    }

    /// `[["a", "b"], ...]` as owned strings.
    fn sccs(groups: &[&[&str]]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn acyclic_tree_passes() {
        let files = [
            ("lib.rs", "pub mod a; pub(crate) mod b; pub use a::X;"),
            ("a.rs", "use crate::b::Y; pub struct X(Y);"),
            ("b.rs", "pub struct Y; fn f() -> crate::Y { todo!() }"),
        ];
        assert!(cycles("acyclic", &files).is_empty());
    }

    #[test]
    fn two_module_cycle_is_found_and_reported() {
        let files = [
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b::Y; pub struct X;"),
            ("b.rs", "use crate::a::X; pub struct Y;"),
        ];
        assert_eq!(cycles("two", &files), sccs(&[&["a", "b"]]));
        let root = fake("two-msg", &files);
        let err = std::panic::catch_unwind(|| assert_acyclic(&root.join("src"))).unwrap_err();
        let _ = fs::remove_dir_all(&root);
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("a -> b (src/a.rs: use crate::b::Y)"), "{msg}");
        assert!(msg.contains("b -> a (src/b.rs: use crate::a::X)"), "{msg}");
    }

    #[test]
    fn parent_child_cycle_is_found() {
        let files = [
            ("lib.rs", "pub mod p;"),
            ("p/mod.rs", "mod child; pub use child::X; pub struct Thing;"),
            ("p/child.rs", "use super::Thing; pub struct X(Thing);"),
        ];
        assert_eq!(cycles("parent", &files), sccs(&[&["p", "p::child"]]));
    }

    #[test]
    fn cfg_test_code_makes_no_edge() {
        let a = "pub struct X;
            #[cfg(test)] mod tests { use crate::b::Y; }
            #[cfg(test)] mod missing_file;
            #[cfg(all(test, unix))] fn f() -> crate::b::Y { todo!() }
            impl X { #[cfg(test)] fn g() { crate::b::Y::new(); } }";
        let files = [
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", a),
            ("b.rs", "use crate::a::X; pub struct Y;"),
        ];
        assert!(cycles("cfgtest", &files).is_empty());
    }

    #[test]
    fn grouped_use_makes_edges_to_every_leaf() {
        let files = [
            ("lib.rs", "mod a; mod b; mod c;"),
            ("a.rs", "pub struct X(crate::c::Z);"),
            ("b.rs", "pub struct Y; impl crate::c::T for Y {}"),
            (
                "c.rs",
                "use crate::{a::X, b::{self, Y}}; pub struct Z; pub trait T {}",
            ),
        ];
        assert_eq!(cycles("group", &files), sccs(&[&["a", "b", "c"]]));
    }

    #[test]
    fn super_super_resolves_to_the_grandparent_level() {
        let files = [
            ("lib.rs", "mod p; mod x;"),
            ("p/mod.rs", "pub mod q;"),
            ("p/q.rs", "pub struct Q; fn f() { super::super::x::m!(); }"),
            ("x.rs", "pub fn g(_: crate::p::q::Q) {}"),
        ];
        assert_eq!(cycles("supsup", &files), sccs(&[&["p::q", "x"]]));
    }

    #[test]
    fn sibling_through_super_is_an_edge_to_the_sibling() {
        let files = [
            ("lib.rs", "pub mod p;"),
            ("p/mod.rs", "mod s1; mod s2; pub use s1::B;"),
            ("p/s1.rs", "use super::s2::A; pub struct B(A);"),
            (
                "p/s2.rs",
                "pub struct A; fn f(b: super::s1::B) { let _ = b; }",
            ),
        ];
        assert_eq!(cycles("sibling", &files), sccs(&[&["p::s1", "p::s2"]]));
    }
}
