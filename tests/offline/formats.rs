//! `pyfw state --format yaml|json|iptables-save` and `pyfw plan --format
//! text|json`, from the spec's saved dumps: no kernel, no root. The
//! documents are snapshots (tests/offline/snapshots/offline__formats__*.snap):
//! a change to them is a change to a documented, stable format
//! (docs/formats.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs pyfw on the spec's dumps (after a Docker restart, unless `save`
/// names another) with the spec's wishes.
fn pyfw_on(save: &str, args: &[&str]) -> Output {
    let spec = root().join("tests/data/spec");
    Command::new(env!("CARGO_BIN_EXE_pyfw"))
        .current_dir(root())
        .args(["--wishes", "tests/data/spec/wishes.yaml"])
        .arg("--iptables-save")
        .arg(spec.join(save))
        .arg("--ipset-save")
        .arg(spec.join("ipset.save"))
        .args(args)
        .output()
        .expect("pyfw runs")
}

fn stdout(out: Output) -> String {
    assert!(
        out.status.success(),
        "pyfw failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn pyfw(args: &[&str]) -> String {
    stdout(pyfw_on("after-docker-restart.save", args))
}

#[test]
fn state_json_snapshot() {
    insta::assert_snapshot!("state_json", pyfw(&["state", "--format", "json"]));
}

#[test]
fn state_yaml_snapshot() {
    insta::assert_snapshot!("state_yaml", pyfw(&["state", "--format", "yaml"]));
}

#[test]
fn state_yaml_and_json_hold_the_same_document() {
    let json: Value = serde_json::from_str(&pyfw(&["state", "--format", "json"])).unwrap();
    let yaml: Value = serde_saphyr::from_str(&pyfw(&["state", "--format", "yaml"])).unwrap();
    assert_eq!(json, yaml);
    assert_eq!(json["format"], "pyfw-state");
    assert_eq!(json["version"], 1);
    let forward = json["iptables"]["filter"]["FORWARD"]["rules"]
        .as_array()
        .unwrap();
    assert_eq!(forward.len(), 6);
    assert_eq!(forward[5]["comment"], "allow_established");
    assert_eq!(forward[0]["comment"], Value::Null);
    assert_eq!(json["iptables"]["filter"]["DOCKER"]["policy"], Value::Null);
    assert_eq!(
        json["ipsets"]["allowed_hosts"]["members"],
        serde_json::json!(["192.168.122.193"])
    );
    assert_eq!(json["ip6tables"], serde_json::json!({}));
}

#[test]
fn state_default_is_iptables_save_text() {
    let default = pyfw(&["state"]);
    assert_eq!(default, pyfw(&["state", "--format", "iptables-save"]));
    assert!(
        default.starts_with("# iptables\n*filter\n:INPUT DROP\n"),
        "{default}"
    );
    assert!(
        default.contains("\n# ipset\ncreate allowed_hosts hash:ip"),
        "{default}"
    );
}

#[test]
fn plan_json_snapshot() {
    insta::assert_snapshot!("plan_json", pyfw(&["plan", "--format", "json"]));
}

#[test]
fn plan_json_says_what_the_text_plan_says() {
    let doc: Value = serde_json::from_str(&pyfw(&["plan", "--format", "json"])).unwrap();
    let text = pyfw(&["plan"]);
    assert_eq!(text, pyfw(&["plan", "--format", "text"]));
    let from_text: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let commands = doc["commands"].as_array().unwrap();
    let from_json: Vec<&str> = commands
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(from_json, from_text);
    for c in commands {
        let argv: Vec<String> = c["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let words = shlex::split(c["command"].as_str().unwrap()).unwrap();
        assert_eq!(argv, words, "argv is the command line, split");
        let reason = format!("# {}", c["reason"].as_str().unwrap());
        assert!(text.lines().any(|l| l == reason), "{reason} not in {text}");
    }
    assert_eq!(doc["in_sync"], false);
    assert_eq!(doc["offline"], true);
    assert_eq!(doc["comparison"], "builtin");
    assert_eq!(doc["wishes"], "tests/data/spec/wishes.yaml");
    assert_eq!(commands[0]["target"], "filter/DOCKER");
    assert_eq!(commands[0]["wish"], "allowed_hosts_only");
}

#[test]
fn plan_json_when_in_sync() {
    let out = stdout(pyfw_on("after-apply.save", &["plan", "--format", "json"]));
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["in_sync"], true);
    assert_eq!(doc["commands"], serde_json::json!([]));
}

#[test]
fn unknown_formats_are_usage_errors() {
    for args in [
        &["state", "--format", "xml"][..],
        &["plan", "--format", "yaml"][..],
    ] {
        let out = pyfw_on("after-docker-restart.save", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid value"), "{err}");
    }
}

/// Every field name of both documents is described in docs/formats.md.
#[test]
fn every_field_is_documented() {
    let docs = std::fs::read_to_string(root().join("docs/formats.md")).unwrap();
    let state: Value = serde_json::from_str(&pyfw(&["state", "--format", "json"])).unwrap();
    let plan: Value = serde_json::from_str(&pyfw(&["plan", "--format", "json"])).unwrap();
    let mut fields = BTreeSet::new();
    let keys = |v: &Value, fields: &mut BTreeSet<String>| {
        fields.extend(v.as_object().unwrap().keys().cloned());
    };
    keys(&state, &mut fields);
    let chain = &state["iptables"]["filter"]["INPUT"];
    keys(chain, &mut fields);
    keys(&chain["rules"][0], &mut fields);
    keys(&state["ipsets"]["allowed_hosts"], &mut fields);
    keys(&plan, &mut fields);
    keys(&plan["commands"][0], &mut fields);
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !docs.contains(&format!("`{f}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/formats.md: {missing:?}");
    assert!(fields.len() >= 20, "{fields:?}");
}

#[test]
fn the_wishes_path_is_shown_as_given() {
    let out = Command::new(env!("CARGO_BIN_EXE_pyfw"))
        .args(["--wishes"])
        .arg(root().join("config/wishes.yaml"))
        .args(["--iptables-save", "/dev/null", "plan", "--format", "json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_str(&stdout(out)).unwrap();
    assert_eq!(
        Path::new(doc["wishes"].as_str().unwrap()),
        root().join("config/wishes.yaml")
    );
}
