//! Shell completions and man pages, generated from the CLI itself by the
//! hidden `pyfw completions SHELL` and `pyfw man DIR` (scripts/package ships
//! them): they cover every subcommand, and generating twice gives the same
//! bytes.

use std::path::Path;
use std::process::Command;

fn pyfw(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pyfw"))
        .args(args)
        .output()
        .expect("pyfw runs");
    assert!(
        out.status.success(),
        "pyfw {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `pyfw --help` lists, except `help`.
fn subcommands() -> Vec<String> {
    let help = pyfw(&["--help"]);
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect();
    for expected in ["plan", "apply", "check", "state", "daemon"] {
        assert!(listed.iter().any(|c| c == expected), "{expected}: {help}");
    }
    listed
}

#[test]
fn completions_know_every_subcommand_and_option() {
    let commands = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = pyfw(&["completions", shell]);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell}: no {c}");
        }
        for option in ["wishes", "backend", "format", "interval"] {
            let spelled = match shell {
                "fish" => format!("-l {option}"),
                _ => format!("--{option}"),
            };
            assert!(script.contains(&spelled), "{shell}: no {spelled}");
        }
        for value in ["iptables-save", "json", "yaml"] {
            assert!(script.contains(value), "{shell}: no --format value {value}");
        }
        assert_eq!(
            script,
            pyfw(&["completions", shell]),
            "{shell}: not reproducible"
        );
    }
    assert!(pyfw(&["completions", "bash"]).contains("complete -F _pyfw"));
    assert!(pyfw(&["completions", "zsh"]).starts_with("#compdef pyfw"));
    assert!(pyfw(&["completions", "fish"]).contains("complete -c pyfw"));
}

#[test]
fn man_pages_for_pyfw_and_each_subcommand() {
    let commands = subcommands();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man8");
    pyfw(&["man", out.to_str().unwrap()]);
    let page = |name: &str| {
        std::fs::read_to_string(out.join(format!("{name}.8")))
            .unwrap_or_else(|e| panic!("{name}.8: {e}"))
    };
    let main = page("pyfw");
    assert!(main.starts_with(".ie"), "roff");
    assert!(main.contains(".TH pyfw 8"), "{main}");
    assert!(main.contains(".SH SUBCOMMANDS"), "{main}");
    for c in &commands {
        assert!(
            main.contains(&format!("pyfw\\-{}(8)", c.replace('-', "\\-"))),
            "pyfw.8 does not list {c}"
        );
        let sub = page(&format!("pyfw-{c}"));
        assert!(sub.contains(&format!(".TH pyfw-{c} 8")), "{sub}");
    }
    assert!(page("pyfw-state").contains("iptables\\-save"));
    assert!(page("pyfw-daemon").contains("\\-\\-interval"));
    // The exit statuses, from the CLI's own help.
    assert!(main.contains("Exit status"), "{main}");

    // Only the pages for visible subcommands: no page for the generators.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = commands.iter().map(|c| format!("pyfw-{c}.8")).collect();
    expected.push("pyfw.8".into());
    expected.sort();
    assert_eq!(names, expected);

    // Reproducible: the same bytes again.
    let again = dir.path().join("again");
    pyfw(&["man", again.to_str().unwrap()]);
    for name in &names {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(again.join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn the_generators_stay_out_of_the_help() {
    let help = pyfw(&["--help"]);
    assert!(!help.contains("completions"), "{help}");
    assert!(!help.contains("\n  man "), "{help}");
}

#[test]
fn man_reports_an_unwritable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pyfw"))
        .arg("man")
        .arg(Path::new(&file).join("man8"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pyfw: error:"));
}
