//! `onlyone man`: a page for onlyone and one per subcommand (issue 10,
//! defect 4: only the top page existed, and it pointed at pages that
//! nothing made).

use std::collections::BTreeSet;

use crate::util::{TestEnv, assert_exit, code, stderr};

fn page(env: &TestEnv, args: &[&str]) -> String {
    let out = env.run(args);
    assert_eq!(code(out.status), 0, "{args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_run_documents_the_flags_of_run() {
    let env = TestEnv::new();
    let run = page(&env, &["man", "run"]);
    assert!(run.contains(".TH onlyone-run 1"), "{run}");
    for flag in [
        "wait",
        "timeout",
        "postgres",
        "max",
        "replace",
        "kill\\-grace",
    ] {
        assert!(run.contains(&format!("\\fB\\-\\-{flag}\\fR")), "--{flag}");
    }
    let top = page(&env, &["man"]);
    assert!(top.contains(".TH onlyone 1"), "{top}");
    assert_ne!(top, run);

    let out = env.run(&["man", "nope"]);
    assert_exit(&out, 64);
    assert!(stderr(&out).contains("no such page; the pages are run, status"));
}

/// Every page that a page names exists, and is written by `man --dir`.
#[test]
fn man_dir_writes_every_page_that_the_pages_name() {
    let env = TestEnv::new();
    let dir = env.path("man1");
    let out = env.run(&["man", "--dir", dir.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(out.stdout, b"");
    let written: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    for subcommand in ["run", "status", "stop", "wait", "completions", "man"] {
        assert!(
            written.contains(&format!("onlyone-{subcommand}.1")),
            "{written:?}"
        );
    }
    assert!(written.contains("onlyone.1"));
    for file in &written {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for named in referenced_pages(&text) {
            assert!(
                written.contains(&format!("{named}.1")),
                "{file} names {named}(1), which is not among {written:?}"
            );
        }
        // What `onlyone man SUBCOMMAND` prints is the page written.
        let args: Vec<&str> = match file.strip_prefix("onlyone-") {
            Some(sub) => vec!["man", sub.strip_suffix(".1").unwrap()],
            None => vec!["man"],
        };
        assert_eq!(page(&env, &args), text, "{file}");
    }
    let top = std::fs::read_to_string(dir.join("onlyone.1")).unwrap();
    assert!(!top.contains("onlyone\\-help"), "{top}");
}

/// The pages `onlyone-NAME(1)` and `onlyone(1)` that `text` refers to.
fn referenced_pages(text: &str) -> BTreeSet<String> {
    let text = text.replace("\\-", "-");
    text.match_indices("(1)")
        .filter_map(|(end, _)| {
            let start = text[..end]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(0, |i| i + 1);
            let name = &text[start..end];
            name.starts_with("onlyone").then(|| name.to_owned())
        })
        .collect()
}

/// The help's exit codes are the library's table (`onlyone::exit`), not a
/// second copy of it that could drift.
#[test]
fn help_lists_every_exit_code_of_the_one_table() {
    let env = TestEnv::new();
    for args in [&["--help"][..], &["run", "--help"], &["status", "--help"]] {
        let help = page(&env, args);
        let listed = help.split("Exit codes:").nth(1).unwrap_or_default();
        for (code, meaning) in onlyone::exit::TABLE {
            let code = code.map_or("(command's own)".to_owned(), |c| c.to_string());
            assert!(
                listed.contains(&format!("  {code} ")) && listed.contains(meaning),
                "{args:?} lacks exit code {code}: {help}"
            );
        }
    }
}
