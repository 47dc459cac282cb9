//! Golden tests for docs/rules.md: every example in the SQL reference is run through
//! the built binary's `fieldgate rules test` (or `rules check`), so the documentation
//! cannot drift from what the gateway does.
//!
//! An example starts with `<!-- example: NAME -->` and ends at the next example marker
//! or heading. Its fenced blocks, by info string: `sql` (the rule file), `jsonl input`
//! (events), `jsonl expected` (expected result rows), `text diff` (the exact output of
//! a failing `--expect`), `text check` (the exact output of `rules check`), `text file
//! NAME` (a file beside the rule file, such as a lookup table).

use std::path::{Path, PathBuf};
use std::process::Command;

use fieldgate_e2e::fieldgate_binary;

const MARKER: &str = "<!-- example:";

#[derive(Debug, Default)]
struct Example {
    name: String,
    /// Line of the marker in the document, for messages.
    line: usize,
    sql: Option<String>,
    input: Option<String>,
    expected: Option<String>,
    diff: Option<String>,
    check: Option<String>,
    /// Files the rules read (a lookup table), by name: ` ```text file NAME `.
    files: Vec<(String, String)>,
}

impl Example {
    fn set(slot: &mut Option<String>, kind: &str, name: &str, body: String) {
        assert!(
            slot.is_none(),
            "example `{name}` has two ```{kind} blocks; start a new example for the second"
        );
        *slot = Some(body);
    }
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rules.md")
}

/// Extracts the examples of a Markdown document.
fn extract(doc: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut current: Option<Example> = None;
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix(MARKER) {
            if let Some(e) = current.take() {
                examples.push(e);
            }
            let name = rest.trim().trim_end_matches("-->").trim().to_string();
            assert!(
                !name.is_empty(),
                "docs/rules.md:{}: example without a name",
                n + 1
            );
            current = Some(Example {
                name,
                line: n + 1,
                ..Example::default()
            });
            continue;
        }
        if line.starts_with('#') {
            if let Some(e) = current.take() {
                examples.push(e);
            }
            continue;
        }
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let info = info.trim().to_string();
        let mut body = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim_end() == "```" {
                closed = true;
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        assert!(closed, "docs/rules.md:{}: unclosed code block", n + 1);
        let Some(e) = current.as_mut() else {
            continue;
        };
        let name = e.name.clone();
        match info.as_str() {
            "sql" => Example::set(&mut e.sql, &info, &name, body),
            "jsonl input" => Example::set(&mut e.input, &info, &name, body),
            "jsonl expected" => Example::set(&mut e.expected, &info, &name, body),
            "text diff" => Example::set(&mut e.diff, &info, &name, body),
            "text check" => Example::set(&mut e.check, &info, &name, body),
            other => {
                if let Some(file) = other.strip_prefix("text file ") {
                    e.files.push((file.trim().to_string(), body));
                }
            }
        }
    }
    if let Some(e) = current.take() {
        examples.push(e);
    }
    examples
}

fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fieldgate_binary())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "off")
        .output()
        .expect("cannot run the fieldgate binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs one example; returns what is wrong with it.
fn check_example(e: &Example) -> Result<(), String> {
    let sql = e.sql.as_ref().ok_or("no ```sql block")?;
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).map_err(|err| format!("{name}: {err}"))
    };
    write("rules.sql", sql)?;
    for (name, body) in &e.files {
        write(name, body)?;
    }
    if let Some(want) = &e.check {
        if e.input.is_some() || e.expected.is_some() {
            return Err("a ```text check example takes no input or expected blocks".into());
        }
        let (ok, stdout, stderr) = run(dir.path(), &["rules", "check", "rules.sql"]);
        let got = format!("{stdout}{stderr}");
        let should_pass = want.starts_with("ok:");
        if got.trim_end() != want.trim_end() || ok != should_pass {
            return Err(format!(
                "`fieldgate rules check rules.sql` {}:\n{got}\nexpected ({}):\n{want}",
                if ok { "succeeded" } else { "failed" },
                if should_pass { "success" } else { "failure" },
            ));
        }
        return Ok(());
    }
    let input = e.input.as_ref().ok_or("no ```jsonl input block")?;
    let expected = e.expected.as_ref().ok_or("no ```jsonl expected block")?;
    write("input.jsonl", input)?;
    write("expected.jsonl", expected)?;
    let args = [
        "rules",
        "test",
        "rules.sql",
        "--input",
        "input.jsonl",
        "--expect",
        "expected.jsonl",
    ];
    let command = format!("fieldgate {}", args.join(" "));
    let (ok, stdout, stderr) = run(dir.path(), &args);
    // A clean run reports only its summary: every line used, no rule failed.
    let clean = stderr.trim().lines().all(|l| {
        l.starts_with("summary: ") && l.contains(" 0 rejected,") && l.contains(" 0 rule errors;")
    });
    match &e.diff {
        None if ok && clean => Ok(()),
        None => Err(format!(
            "`{command}` {}:\n{stdout}{stderr}",
            if ok {
                "succeeded but reported problems"
            } else {
                "failed"
            }
        )),
        Some(want) if !ok && stdout.trim_end() == want.trim_end() => Ok(()),
        Some(want) => Err(format!(
            "`{command}` should fail and print exactly:\n{want}\nbut it {}:\n{stdout}{stderr}",
            if ok { "succeeded" } else { "printed" }
        )),
    }
}

#[test]
fn every_example_in_the_rules_reference_gives_the_documented_results() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let examples = extract(&doc);
    assert!(
        !examples.is_empty(),
        "found no `{MARKER} NAME -->` examples in {}",
        path.display()
    );
    let mut names: Vec<&str> = examples.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), examples.len(), "example names must be unique");
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|e| {
            check_example(e)
                .err()
                .map(|why| format!("example `{}` (docs/rules.md:{}): {why}", e.name, e.line))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} examples differ:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
    eprintln!("{} examples checked", examples.len());
}

#[test]
fn the_extractor_finds_blocks_and_stops_at_headings() {
    let doc = "# T\n<!-- example: a -->\ntext\n```sql\nSELECT 1;\n```\n```jsonl input\n{}\n```\n\
               ## Next\n```jsonl expected\n{}\n```\n<!-- example: b -->\n```text check\nok\n```\n";
    let ex = extract(doc);
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].name, "a");
    assert_eq!(ex[0].sql.as_deref(), Some("SELECT 1;\n"));
    assert_eq!(ex[0].input.as_deref(), Some("{}\n"));
    assert_eq!(ex[0].expected, None, "a heading ends the example");
    assert_eq!(ex[1].name, "b");
    assert_eq!(ex[1].check.as_deref(), Some("ok\n"));
}
