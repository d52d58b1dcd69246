//! iptables' own extension tests as data: every rule iptables' test suite
//! marks as accepted (`;OK`), and this kernel accepts, is wished for, and
//! after one `pyfw apply` it is in sync (`pyfw check` exits 0), and
//! `iptables -C` with the wish's own text finds it.
//!
//! The `.t` files are not in this repository: `scripts/iptables-tests`
//! fetches them from Debian's source package of the installed iptables
//! into `target/iptables-tests/` (or `$PYFW_IPTABLES_TESTS`), with a file
//! `ORIGIN` saying where from (see tests/data/iptables-extensions/SOURCE.md).
//! Without them the test fails under `PYFW_REQUIRE_NETNS=1`, else skips.
//!
//! The format (iptables-test.py): `:CHAIN,CHAIN` names the chains of the
//! rules that follow, `*table` their table, `@`/`%` lines are commands to
//! run, and `RULE;RESULT;OK|FAIL[;VARIANT;RESULT]` a test. `libxt_*` files
//! hold rules for both families, `libipt_*` (and `iptables.t`) for IPv4,
//! `libip6t_*` for IPv6. Here each rule goes in the first chain of its
//! `:` line, in its table: one wish per rule and family.
//!
//! Some rules need a module or a set-up (`@nfacct add`, a set, a rate
//! estimator) this host or this test lacks: the kernel refuses them, and
//! they are counted as skipped, by the kernel's words. The summary says
//! how many rules were accepted, skipped and in sync; the test fails
//! listing every accepted rule that is not in sync or not found by `-C`.

use crate::common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Backend, Netns, unavailable};
use pyfw::state::Family;
use pyfw::state::rule::Rule;

on_both_backends!(every_rule_iptables_accepts_is_in_sync_after_one_apply);

/// One `;OK` line of a `.t` file, for one family.
#[derive(Clone, Debug)]
struct Case {
    file: String,
    line: usize,
    family: Family,
    table: String,
    chain: String,
    text: String,
}

impl Case {
    fn cmd(&self) -> &'static str {
        match self.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn at(&self) -> String {
        format!(
            "{}:{} [{}] -t {} {} {}",
            self.file,
            self.line,
            self.cmd(),
            self.table,
            self.chain,
            self.text
        )
    }

    /// The wish's name, unless the rule names itself with a comment.
    fn name(&self) -> String {
        format!("t{}", self.line)
    }
}

/// Where the `.t` files are.
fn corpus_dir() -> PathBuf {
    match std::env::var_os("PYFW_IPTABLES_TESTS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/iptables-tests"),
    }
}

/// The families a file's rules are for, by its name.
fn families(file: &str) -> &'static [Family] {
    if file.starts_with("libxt_") {
        &[Family::V4, Family::V6]
    } else if file.starts_with("libipt_") || file == "iptables.t" {
        &[Family::V4]
    } else if file.starts_with("libip6t_") {
        &[Family::V6]
    } else {
        // arptables and ebtables.
        &[]
    }
}

/// The result a test expects on `backend`: its own, or, when scoped to
/// the other variant, the alternative given or the opposite
/// (iptables-test.py's `variant_res`).
fn expected(fields: &[&str], backend: Backend) -> String {
    let res = fields[2].trim().to_string();
    let Some(variant) = fields.get(3).map(|v| v.trim()) else {
        return res;
    };
    let ours = match backend {
        Backend::Nft => "NFT",
        Backend::Legacy => "LEGACY",
    };
    if variant == ours {
        return res;
    }
    if let Some(alt) = fields.get(4) {
        return alt.trim().to_string();
    }
    match res.as_str() {
        "OK" => "FAIL".into(),
        _ => "OK".into(),
    }
}

/// The rules of one `.t` file that `backend` should accept: `OK`, and
/// `NOMATCH` (accepted, printed otherwise than the test expects).
fn parse_t(file: &str, text: &str, backend: Backend) -> Vec<Case> {
    let mut out = Vec::new();
    let mut table = "filter".to_string();
    let mut chains: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') || line.starts_with(['@', '%']) {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        if let Some(c) = line.strip_prefix(':') {
            chains = c.split(',').map(String::from).collect();
            continue;
        }
        let fields: Vec<&str> = line.split(';').collect();
        let Some(chain) = chains.first() else {
            continue;
        };
        if fields.len() < 3 || !matches!(expected(&fields, backend).as_str(), "OK" | "NOMATCH") {
            continue;
        }
        for &family in families(file) {
            out.push(Case {
                file: file.to_string(),
                line: n + 1,
                family,
                table: table.clone(),
                chain: chain.clone(),
                text: fields[0].trim().to_string(),
            });
        }
    }
    out
}

/// What became of each case.
#[derive(Default)]
struct Tally {
    marked: usize,
    /// Refused by this kernel, by the first line of what it said.
    skipped: BTreeMap<String, Vec<String>>,
    /// Refused by pyfw at load (its own checks), with the message.
    refused_at_load: Vec<String>,
    /// Not expressible as a wish: a comment of its own that is no rule
    /// name, or one used twice.
    not_wishes: Vec<String>,
    accepted: usize,
    in_sync: usize,
    found: usize,
    /// Accepted, and not in sync or not found: what fails the test.
    failures: Vec<String>,
}

fn every_rule_iptables_accepts_is_in_sync_after_one_apply(backend: Backend) {
    let test = format!("iptables_extensions[{backend:?}]");
    let dir = corpus_dir();
    let origin = match std::fs::read_to_string(dir.join("ORIGIN")) {
        Ok(o) => o,
        Err(e) => {
            unavailable(
                &test,
                &format!(
                    "iptables' extension tests are not in {} ({e}); run `python3 \
                     scripts/iptables-tests` (scripts/test does)",
                    dir.display()
                ),
            );
            return;
        }
    };
    let Some(probe) = Netns::new("ipt_ext_probe", backend) else {
        return;
    };
    let version = probe.ok(&["iptables", "-V"], "iptables -V");
    drop(probe);
    let upstream = origin
        .lines()
        .find_map(|l| l.strip_prefix("upstream-version: "))
        .unwrap_or("?");
    assert!(
        version.contains(&format!("v{upstream} ")),
        "{}: the tests are iptables {upstream}'s, but `iptables -V` says {version}; run `python3 \
         scripts/iptables-tests` again",
        dir.display()
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "t"))
        .collect();
    files.sort();
    // For a look at some files alone: `PYFW_IPTABLES_TESTS_ONLY=libxt_tcp`.
    if let Ok(only) = std::env::var("PYFW_IPTABLES_TESTS_ONLY") {
        files.retain(|p| p.to_string_lossy().contains(&only));
    }
    let started = Instant::now();
    let mut tally = Tally::default();
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let cases = parse_t(&file, &text, backend);
        if cases.is_empty() {
            continue;
        }
        tally.marked += cases.len();
        run_file(backend, &file, cases, &mut tally);
    }
    let summary = summary(backend, &origin, &tally, started.elapsed());
    // Past the harness's capture: the counts show in every run.
    let _ = std::io::stderr().write_all(summary.as_bytes());
    assert!(tally.accepted > 0, "no rule was accepted\n{summary}");
    assert!(
        tally.failures.is_empty(),
        "{} accepted rule(s) not in sync after one apply or not found by `iptables -C`:\n{}\n{summary}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
}

/// One file's rules in a namespace of their own: which the kernel takes,
/// then all of those as wishes, one apply, `check`, and `-C` for each.
fn run_file(backend: Backend, file: &str, cases: Vec<Case>, tally: &mut Tally) {
    let Some(ns) = Netns::new("ipt_ext", backend) else {
        panic!("{file}: no namespace");
    };
    let mut taken = Vec::new();
    for case in cases {
        let Some(args) = shlex::split(&case.text) else {
            panic!("{}: cannot split the rule", case.at());
        };
        let mut argv = vec![case.cmd(), "-w", "-t", &case.table, "-A", &case.chain];
        argv.extend(args.iter().map(String::as_str));
        let out = ns.run(&argv);
        if !out.success() {
            let said = out
                .stderr
                .lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with("Try `"))
                .unwrap_or("(nothing)")
                .replace(&format!("{} v", case.cmd()), "v");
            tally.skipped.entry(said).or_default().push(case.at());
            continue;
        }
        taken.push(case);
    }
    // Back to empty tables for pyfw.
    for case in &taken {
        ns.ok(&[case.cmd(), "-w", "-t", &case.table, "-F"], "flush");
    }
    let wishes = named(taken, tally);
    let wishes = loadable(wishes, tally);
    if wishes.is_empty() {
        return;
    }
    tally.accepted += wishes.len();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wishes.yaml");
    std::fs::write(&path, wishes_text(&wishes)).unwrap();
    let applied = ns.run_pyfw(&path, &["apply"]);
    if !applied.success() {
        for (case, _) in &wishes {
            tally
                .failures
                .push(format!("{}: the apply failed:\n{applied}", case.at()));
        }
        return;
    }
    let check = ns.run_pyfw(&path, &["check"]);
    for (case, name) in &wishes {
        let label = format!(
            "{}{}/{}: {name} ",
            if case.family == Family::V6 {
                "ip6tables:"
            } else {
                ""
            },
            case.table,
            case.chain
        );
        let drift: Vec<&str> = check
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("# {label}")))
            .collect();
        match check.code() {
            Some(0) => tally.in_sync += 1,
            Some(2) if drift.is_empty() => tally.in_sync += 1,
            _ => tally.failures.push(format!(
                "{}: not in sync after one apply: {}",
                case.at(),
                if drift.is_empty() {
                    check.to_string()
                } else {
                    drift.join("; ")
                }
            )),
        }
        let rule = Rule::parse(&case.text).unwrap().with_comment(name);
        let mut argv = vec![case.cmd(), "-w", "-t", &case.table, "-C", &case.chain];
        argv.extend(rule.args().iter().map(String::as_str));
        let found = ns.run(&argv);
        if found.success() {
            tally.found += 1;
        } else {
            tally.failures.push(format!(
                "{}: `{} -C` with the wish's text does not find it: {}",
                case.at(),
                case.cmd(),
                found.stderr.trim()
            ));
        }
    }
    let named_any = tally.failures.iter().any(|f| f.starts_with(file));
    if check.code() == Some(2) && !named_any {
        tally.failures.push(format!(
            "{file}: `pyfw check` found drift, in no wished rule:\n{check}"
        ));
    }
}

/// Each case with its wish's name: `tN` for line N, or the rule's own
/// comment, which pyfw takes as its name.
fn named(cases: Vec<Case>, tally: &mut Tally) -> Vec<(Case, String)> {
    let mut out: Vec<(Case, String)> = Vec::new();
    for case in cases {
        let own = Rule::parse(&case.text)
            .ok()
            .and_then(|r| r.comment().map(String::from));
        let name = match own {
            None => case.name(),
            Some(c) => {
                let taken = out.iter().any(|(o, n)| {
                    *n == c
                        && o.family == case.family
                        && o.table == case.table
                        && o.chain == case.chain
                });
                let why = if taken {
                    "names an earlier wish of the chain already"
                } else if pyfw::wishes::check_rule_name(&c).is_err() {
                    "is no rule name (1-64 characters of A-Z a-z 0-9 _ . : -)"
                } else {
                    ""
                };
                if !why.is_empty() {
                    tally.not_wishes.push(format!(
                        "{}: its own comment {why}; pyfw names each rule by its comment",
                        case.at()
                    ));
                    continue;
                }
                c
            }
        };
        out.push((case, name));
    }
    out
}

/// The wishes pyfw loads: a rule its own checks refuse (with file and
/// line) is counted and left out.
fn loadable(mut wishes: Vec<(Case, String)>, tally: &mut Tally) -> Vec<(Case, String)> {
    loop {
        if wishes.is_empty() {
            return wishes;
        }
        let text = wishes_text(&wishes);
        let Err(e) = pyfw::wishes::parse(&text, Path::new("w.yaml")) else {
            return wishes;
        };
        let before = wishes.len();
        wishes.retain(|(case, name)| {
            let label = format!(
                "{}{}/{}/{name}: ",
                if case.family == Family::V6 {
                    "ip6tables:"
                } else {
                    ""
                },
                case.table,
                case.chain
            );
            let why: Vec<&str> = e
                .errors
                .iter()
                .filter(|w| w.wish.as_deref().is_some_and(|l| format!("{l}: ") == label))
                .map(|w| w.message.as_str())
                .collect();
            if why.is_empty() {
                return true;
            }
            tally
                .refused_at_load
                .push(format!("{}: {}", case.at(), why.join("; ")));
            false
        });
        assert!(
            wishes.len() < before,
            "pyfw refuses the wishes as a whole: {e}\n{text}"
        );
    }
}

/// The wishes file: each rule in its family, table and chain, in order.
fn wishes_text(wishes: &[(Case, String)]) -> String {
    // Family, table and chain: the rules of each, in order.
    type Place<'a> = (&'a str, &'a str, &'a str);
    let mut by: BTreeMap<Place, Vec<(&Case, &str)>> = BTreeMap::new();
    for (case, name) in wishes {
        let family = match case.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        by.entry((family, &case.table, &case.chain))
            .or_default()
            .push((case, name));
    }
    let mut out = String::from("pyfw_wishes:\n");
    let mut last_family = "";
    let mut last_table = "";
    for ((family, table, chain), rules) in by {
        if family != last_family {
            let _ = writeln!(out, "  {family}:");
            last_family = family;
            last_table = "";
        }
        if table != last_table {
            let _ = writeln!(out, "    {table}:");
            last_table = table;
        }
        let _ = writeln!(out, "      {chain}:\n        rules:");
        for (case, name) in rules {
            let _ = writeln!(
                out,
                "        - {}: {}",
                serde_json::to_string(name).unwrap(),
                serde_json::to_string(&case.text).unwrap()
            );
        }
    }
    out
}

fn summary(backend: Backend, origin: &str, t: &Tally, took: std::time::Duration) -> String {
    let mut s = String::new();
    let source = origin
        .lines()
        .filter(|l| l.starts_with("debian-version") || l.starts_with("tarball"))
        .collect::<Vec<_>>()
        .join(", ");
    let skipped: usize = t.skipped.values().map(Vec::len).sum();
    let _ = writeln!(
        s,
        "iptables extension tests on {backend:?} ({source}), in {:.1}s:",
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  {} rules marked OK (per family); {} refused by this kernel (skipped); {} refused at \
         load by pyfw; {} not expressible as a wish; {} accepted and wished",
        t.marked,
        skipped,
        t.refused_at_load.len(),
        t.not_wishes.len(),
        t.accepted
    );
    let _ = writeln!(
        s,
        "  {} of {} in sync after one apply; {} of {} found by `iptables -C`",
        t.in_sync, t.accepted, t.found, t.accepted
    );
    let _ = writeln!(s, "  skipped, by what the kernel tools said:");
    for (why, cases) in &t.skipped {
        let _ = writeln!(s, "    {:4}  {why}", cases.len());
    }
    for (what, list) in [
        ("refused at load", &t.refused_at_load),
        ("not expressible as a wish", &t.not_wishes),
    ] {
        if !list.is_empty() {
            let _ = writeln!(s, "  {what}:");
            for l in list {
                let _ = writeln!(s, "    {l}");
            }
        }
    }
    s
}
