//! The kernel contract of batched apply, against real netfilter in network
//! namespaces, on both iptables backends:
//!
//! - **all or nothing per table**: a plan whose k-th command in a table
//!   fails in the kernel leaves that table exactly as it was, because the
//!   table's commands go to the kernel as one `iptables-restore --noflush`
//!   transaction (nothing of it needs undoing), and the tables changed
//!   before it are rolled back;
//! - **foreign chains are never flushed**: under `--noflush`, a `:CHAIN`
//!   line flushes CHAIN, so no transaction pyfw sends ever declares a chain
//!   that existed before it ran; a chain full of another program's rules
//!   keeps every one of them.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Backend, Netns, Out, PYFW, assert_text_eq, normalize_ipsets, normalize_rules};

on_both_backends!(
    a_failure_inside_a_table_leaves_that_table_as_it_was,
    foreign_chains_are_never_flushed,
);

/// A new set is filled under a temporary name and renamed into place, so
/// its name never holds a half-filled set: when the kernel refuses the
/// 5,000th member (`0.0.0.0`: `Null-valued element`), the apply fails with
/// the kernel's words, no set of that name (and no temporary set) is left,
/// and nothing of it needed undoing member by member. Without it, all
/// 5,000 members arrive.
#[test]
fn a_new_set_appears_whole_or_not_at_all() {
    let Some(ns) = Netns::new("new_set", Backend::Nft) else {
        return;
    };
    ns.ok(&["ipset", "create", "theirs", "hash:ip"], "ipset create");
    let dir = tempfile::tempdir().unwrap();
    let members: String = (0..4999u32)
        .map(|i| format!("      - 10.1.{}.{}\n", i >> 8, i & 255))
        .collect();
    let wishes = |last: &str| {
        write_wishes(
            dir.path(),
            &format!(
                "pyfw_wishes:\n  ipsets:\n    allowed:\n      type: hash:ip\n      \
                 header: maxelem 8192\n      members_equal:\n{members}      - {last}\n"
            ),
        )
    };
    let before = ns.ipset_save();
    let out = ns.run_pyfw(&wishes("0.0.0.0"), &["apply"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("(a new set is filled under a temporary name, then renamed)"),
        "{out}"
    );
    assert!(out.stderr.contains("Null-valued element"), "{out}");
    assert!(
        !out.stdout.contains("Rolling back: ipset destroy allowed")
            && !out.stdout.contains("Rolling back: ipset del allowed"),
        "the set never existed under its name: nothing of it is undone\n{out}"
    );
    assert_text_eq(
        &ns.ipset_save(),
        &before,
        &format!("sets after the failure\n{out}"),
    );

    let out = ns.run_pyfw(&wishes("10.2.0.1"), &["apply"]);
    out.expect_ok("apply with every member storable");
    let sets = pyfw::state::parse_ipset_save(&ns.ipset_save()).unwrap();
    assert_eq!(sets["allowed"].members.len(), 5000);
    assert!(
        !sets.keys().any(|k| k.starts_with("_pyfw_")),
        "{:?}",
        sets.keys()
    );
    assert!(sets.contains_key("theirs"));
}

/// A directory with an `iptables-restore` that appends its arguments and
/// its input to `log`, then runs the real one (the next on `PATH`).
struct Recorder {
    dir: tempfile::TempDir,
}

impl Recorder {
    fn new() -> Recorder {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("restore.log");
        let script = format!(
            "#!/bin/sh\n\
             log={log}\n\
             input=$(cat)\n\
             printf '=== iptables-restore %s in %s\\n%s\\n' \"$*\" \"$(readlink /proc/self/ns/net)\" \"$input\" >> \"$log\"\n\
             PATH=${{PATH#*:}}\n\
             printf '%s\\n' \"$input\" | exec iptables-restore \"$@\"\n",
            log = log.display()
        );
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("iptables-restore");
        std::fs::write(&tool, script).unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Recorder { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Every input pyfw gave `iptables-restore`, each headed by its
    /// arguments and its network namespace (`in net:[INODE]`).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("restore.log")).unwrap_or_default()
    }

    /// `pyfw --wishes WISHES ARGS` in `ns`, with this recorder first on
    /// `PATH`.
    fn pyfw(&self, ns: &Netns, wishes: &Path, args: &[&str]) -> Out {
        let bin = self.bin();
        let mut argv = vec![
            "sh",
            "-c",
            "PATH=\"$0:$PATH\" exec \"$@\"",
            bin.to_str().unwrap(),
            PYFW,
            "--wishes",
            wishes.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        ns.run(&argv)
    }
}

/// The chains an `iptables-save` dump declares, as `table/chain`.
fn chains(save: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rest) = line.strip_prefix(':') {
            out.push(format!("{table}/{}", rest.split(' ').next().unwrap_or("")));
        }
    }
    out
}

fn write_wishes(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `iptables-save -t TABLE` without counters and `#` lines.
fn table(ns: &Netns, name: &str) -> String {
    normalize_rules(&ns.ok(&["iptables-save", "-t", name], "iptables-save -t"))
}

/// Wishes in two tables. In `nat`, the second of three new rules in the
/// DOCKER chain is one the kernel refuses only when it is committed:
/// MASQUERADE belongs to POSTROUTING, and another program's rule jumps to
/// DOCKER from PREROUTING. Learning the rule's form, in a private namespace
/// (where DOCKER is a chain of its own, reached from nowhere) or in pyfw's
/// unhooked scratch chain, cannot see that jump, so the failure comes from
/// the kernel, at the second command of the nat transaction, after the
/// filter transaction committed. (MASQUERADE written in PREROUTING itself
/// is refused before anything runs: `tests/kernel/kernel_refusals.rs`.) Then:
/// - nat is exactly as before, and no nat command is rolled back (there was
///   nothing to undo: its transaction changed nothing);
/// - filter, whose transaction had committed, is rolled back to exactly as
///   before; so are the sets.
fn a_failure_inside_a_table_leaves_that_table_as_it_was(backend: Backend) {
    let Some(ns) = Netns::new("all_or_nothing", backend) else {
        return;
    };
    ns.iptables_restore(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A DOCKER -i docker0 -j RETURN\nCOMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A INPUT -s 198.51.100.7/32 -j DROP\n-A FORWARD -o docker0 -j ACCEPT\nCOMMIT\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  ipsets:\n    trusted:\n      type: hash:ip\n      members_equal: [10.0.0.1]\n  \
         iptables:\n    filter:\n      INPUT:\n        default_action: DROP\n        rules:\n        \
         - allow_ssh: -p tcp --dport 22 -j ACCEPT\n        \
         - allow_trusted: -m set --match-set trusted src -j ACCEPT\n      FORWARD:\n        rules:\n        \
         - allow_established: -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n    \
         nat:\n      DOCKER:\n        rules:\n        \
         - first: -p tcp --dport 81 -j ACCEPT\n        \
         - refused_on_commit: -p tcp --dport 82 -j MASQUERADE\n        \
         - third: -p tcp --dport 83 -j ACCEPT\n",
    );
    let (nat, filter, sets) = (
        table(&ns, "nat"),
        table(&ns, "filter"),
        normalize_ipsets(&ns.ipset_save()),
    );

    let out = ns.run_pyfw(&wishes, &["apply"]);
    assert_eq!(out.code(), Some(1), "the apply must fail\n{out}");
    // The nat transaction carried three commands and failed as one: none
    // of them is shown as run, and the error names the one refused, with
    // its wish and line.
    let nat_commands: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Executing command") && l.contains(" -t nat "))
        .collect();
    assert_eq!(nat_commands.len(), 0, "{out}");
    let line = 1 + std::fs::read_to_string(&wishes)
        .unwrap()
        .lines()
        .position(|l| l.contains("refused_on_commit"))
        .unwrap();
    // iptables-nft names the refused input line; legacy iptables-restore
    // names only the line of COMMIT (the kernel refused the table whole),
    // and the error says so.
    let named = match backend {
        Backend::Nft => format!(
            "{}:{line}: nat/DOCKER/refused_on_commit: command 8/9 failed: ",
            wishes.display()
        ),
        Backend::Legacy => "refused the transaction without saying which of its commands".into(),
    };
    assert!(out.stderr.contains(&named), "want `{named}`\n{out}");
    if backend == Backend::Nft {
        for words in [
            "`-j MASQUERADE` belongs in nat/POSTROUTING: nat/DOCKER must be reached from there only",
            "its transaction (commands 7-9) changed nothing",
        ] {
            assert!(out.stderr.contains(words), "want `{words}`\n{out}");
        }
    }
    assert!(
        !out.stderr.contains("line 3") && !out.stderr.contains("line 5"),
        "no line numbers of the restore input\n{out}"
    );
    assert!(
        out.stdout.contains("# transaction") && out.stdout.contains("iptables-restore --noflush"),
        "{out}"
    );
    let rolled_back: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Rolling back:"))
        .collect();
    assert!(
        !rolled_back.iter().any(|l| l.contains(" -t nat ")),
        "nothing of the failed nat transaction took effect, so nothing of it is undone\n{out}"
    );
    assert!(
        rolled_back.iter().any(|l| l.contains(" -t filter ")),
        "the committed filter transaction is undone\n{out}"
    );
    assert_text_eq(
        &table(&ns, "nat"),
        &nat,
        &format!("nat after the failure\n{out}"),
    );
    assert_text_eq(
        &table(&ns, "filter"),
        &filter,
        &format!("filter after the rollback\n{out}"),
    );
    assert_text_eq(
        &normalize_ipsets(&ns.ipset_save()),
        &sets,
        &format!("sets after the rollback\n{out}"),
    );

    // Without the refused rule the same plan applies whole.
    let fixed = std::fs::read_to_string(&wishes)
        .unwrap()
        .replace("-j MASQUERADE", "-j ACCEPT");
    std::fs::write(&wishes, fixed).unwrap();
    ns.run_pyfw(&wishes, &["apply"]).expect_ok("apply");
    ns.run_pyfw(&wishes, &["check"]).expect_code(0, "check");
}

/// Another program's chains, one of them a wished chain and one of them
/// large, and wishes that create a chain, insert into the foreign ones and
/// set a policy: no `iptables-restore` input pyfw writes declares a chain
/// that existed before, and every foreign rule is still there, in order.
fn foreign_chains_are_never_flushed(backend: Backend) {
    let Some(ns) = Netns::new("no_flush", backend) else {
        return;
    };
    let mut host = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :DOCKER - [0:0]\n:KUBE-SERVICES - [0:0]\n\
         -A INPUT -j KUBE-SERVICES\n-A FORWARD -o docker0 -j DOCKER\n\
         -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT\n",
    );
    for i in 0..2000u32 {
        host.push_str(&format!(
            "-A KUBE-SERVICES -d 10.96.{}.{}/32 -p tcp -m comment --comment \"ns/svc-{i}:http\" -m tcp --dport 80 -j ACCEPT\n",
            i >> 8,
            i & 255
        ));
    }
    host.push_str("COMMIT\n");
    ns.iptables_restore(&host);
    let before = ns.iptables_save();
    let existing = chains(&before);
    assert!(existing.contains(&"filter/KUBE-SERVICES".to_string()));

    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        default_action: DROP\n        rules:\n        \
         - allow_ssh: -p tcp --dport 22 -j ACCEPT\n        \
         - to_mine: -p tcp --dport 2222 -j MINE\n      \
         DOCKER:\n        rules:\n        \
         - allowed_only: '! -i docker0 -o docker0 -s 192.0.2.0/24 -j ACCEPT'\n      \
         MINE:\n        rules:\n        - log_it: -j RETURN\n",
    );
    let recorder = Recorder::new();
    recorder
        .pyfw(&ns, &wishes, &["apply"])
        .expect_ok("apply through the recorder");
    let log = recorder.log();
    assert!(
        log.contains("=== iptables-restore") && log.contains("--noflush"),
        "pyfw must have written through iptables-restore --noflush:\n{log}"
    );
    // What pyfw sends in the host's namespace; it learns rule forms in a
    // private one of its own, whose tables hold nothing of anyone's.
    let own = ns.ok(&["readlink", "/proc/self/ns/net"], "readlink");
    let mut declared = Vec::new();
    let mut elsewhere = 0;
    for input in log.split("=== iptables-restore").skip(1) {
        let head = input.lines().next().unwrap_or("");
        match head.ends_with(&format!(" in {}", own.trim())) {
            true => declared.extend(chains(input)),
            false => elsewhere += 1,
        }
    }
    assert!(
        elsewhere > 0,
        "rule forms are learned in a private namespace\n{log}"
    );
    let foreign: Vec<&String> = declared.iter().filter(|c| existing.contains(c)).collect();
    assert!(
        foreign.is_empty(),
        "pyfw declared chains that existed before it ran (under --noflush that flushes \
         them): {foreign:?}\n{log}"
    );

    // Every foreign rule is still there, in its order.
    let after = ns.iptables_save();
    let rules = |save: &str, chain: &str| -> Vec<String> {
        let prefix = format!("-A {chain} ");
        save.lines()
            .filter(|l| l.starts_with(&prefix) && !l.contains("--comment allowed_only"))
            .map(String::from)
            .collect()
    };
    for chain in ["KUBE-SERVICES", "DOCKER"] {
        assert_eq!(
            rules(&after, chain),
            rules(&before, chain),
            "{chain}: foreign rules must all stay, in order"
        );
    }
    assert_eq!(rules(&after, "KUBE-SERVICES").len(), 2000);
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "check after apply");
}
