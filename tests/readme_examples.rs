//! The README's examples run as written: every `sh` block of README.md and
//! docs/patterns.md holding a `grpcurl` or `tierkv` command is run, in file
//! order, against the real binary serving examples/dev.toml (its directories
//! and ports moved to temporary ones) and the real example origin the README
//! starts (`python3 -m http.server` over examples/origin/), and each command
//! is checked for the outcome documented under it. The convention (which
//! blocks run, how outcomes are written) is docs/readme-test.md.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{server_command, spawn_server, ServerProcess};
use common::tools;
use serde_json::Value;

/// The documents whose examples run, in this order.
const DOCUMENTS: [&str; 2] = ["README.md", "docs/patterns.md"];

/// The addresses the examples are written against.
const GRPC_ADDR: &str = "127.0.0.1:50051";
const METRICS_ADDR: &str = "127.0.0.1:50052";
const ORIGIN_ADDR: &str = "127.0.0.1:50053";

/// How long one document's commands may take together. Generous: a loaded
/// 2-core CI machine starts each grpcurl slowly; the examples themselves
/// sleep about 10 s in all (session expiry).
const DOCUMENT_DEADLINE: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Extraction

/// What a command's documentation says must happen.
#[derive(Debug, Clone, PartialEq, Default)]
struct Outcome {
    /// `# {…}` lines: JSON the output must contain.
    json: Option<String>,
    /// `# ERROR: Code: X  Message: m` (grpcurl): the code and the message, if shown.
    grpc_error: Option<(String, Option<String>)>,
    /// `# error: … [CODE]` (the CLI): a line of its stderr.
    cli_error: Option<String>,
    /// `# exit N`.
    exit: Option<i32>,
}

/// One command of a block, and its documented outcome.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    /// Where it is, `README.md:123`, for messages.
    at: String,
    /// The shell text, continuation lines included.
    command: String,
    outcome: Outcome,
}

/// Whether a quote is open at the end of `text` (shell rules, enough for
/// examples: single quotes are literal, double quotes honour backslashes).
fn quote_open(text: &str) -> bool {
    let mut single = false;
    let mut double = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                chars.next();
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double => {
                // A comment runs to the end of its line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    single || double
}

/// Whether a block is run: it is a shell block with a grpcurl or tierkv command.
fn runnable(lines: &[&str]) -> bool {
    lines.iter().any(|line| {
        let line = line.trim_start();
        !line.starts_with('#')
            && line
                .split(|c: char| c.is_whitespace() || c == '(' || c == '|' || c == ';')
                .any(|word| word == "grpcurl" || word == "tierkv")
    })
}

/// The examples of one document, in order, with the block-level expectation
/// of a `<!-- readme-test: expect=CODE -->` comment applied.
fn extract(document: &str, text: &str) -> Vec<Example> {
    let lines: Vec<&str> = text.lines().collect();
    let mut examples = Vec::new();
    let mut annotation: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix("<!-- readme-test:") {
            let rest = rest.trim_end_matches("-->").trim();
            let expect = rest
                .strip_prefix("expect=")
                .unwrap_or_else(|| panic!("{document}:{}: unknown readme-test annotation {rest:?} (only expect=CODE exists; there is no skip)", i + 1));
            annotation = Some(expect.trim().to_string());
            i += 1;
            continue;
        }
        let shell = matches!(line, "```sh" | "```bash" | "```shell");
        if !line.starts_with("```") {
            if !line.is_empty() {
                annotation = None;
            }
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with("```") {
            end += 1;
        }
        let block = &lines[start..end];
        let expect = annotation.take();
        i = end + 1;
        if !shell || !runnable(block) {
            assert!(
                expect.is_none(),
                "{document}:{start}: a readme-test annotation before a block that does not run"
            );
            continue;
        }
        let mut examples_of_block = parse_block(document, start + 1, block);
        if let Some(code) = expect {
            for example in &mut examples_of_block {
                example.outcome.grpc_error = Some((code.clone(), None));
            }
        }
        examples.extend(examples_of_block);
    }
    examples
}

/// Splits a block into commands and the outcome lines under each.
fn parse_block(document: &str, first_line: usize, block: &[&str]) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    // Whether the lines since the last command are still "directly under" it.
    let mut under_command = false;
    let mut pending_json: Option<String> = None;
    let mut i = 0;
    while i < block.len() {
        let line = block[i];
        let trimmed = line.trim();
        if trimmed.is_empty() {
            under_command = false;
            assert!(
                pending_json.is_none(),
                "{document}:{}: unfinished JSON outcome",
                first_line + i
            );
            i += 1;
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim();
            if let Some(json) = pending_json.as_mut() {
                json.push(' ');
                json.push_str(comment);
                if expected_json(json).is_ok() {
                    examples.last_mut().unwrap().outcome.json = pending_json.take();
                }
            } else if under_command {
                let outcome = &mut examples.last_mut().unwrap().outcome;
                if comment.starts_with('{') {
                    if expected_json(comment).is_ok() {
                        outcome.json = Some(comment.to_string());
                    } else {
                        pending_json = Some(comment.to_string());
                    }
                } else if let Some(rest) = comment.strip_prefix("ERROR:") {
                    outcome.grpc_error = Some(parse_grpc_error(rest));
                } else if comment.starts_with("error:") {
                    outcome.cli_error = Some(comment.to_string());
                } else if let Some(code) = comment.strip_prefix("exit ") {
                    outcome.exit = Some(code.trim().parse().unwrap_or_else(|_| {
                        panic!("{document}:{}: `# exit N` needs a number", first_line + i)
                    }));
                }
                // Anything else is prose.
            }
            i += 1;
            continue;
        }
        // A command: this line and its continuations.
        let at = format!("{document}:{}", first_line + i);
        let mut command = line.to_string();
        while (command.trim_end().ends_with('\\') || quote_open(&command)) && i + 1 < block.len() {
            i += 1;
            command.push('\n');
            command.push_str(block[i]);
        }
        assert!(!quote_open(&command), "{at}: a quote is never closed");
        examples.push(Example {
            at,
            command,
            outcome: Outcome::default(),
        });
        under_command = true;
        i += 1;
    }
    assert!(
        pending_json.is_none(),
        "{document}: unfinished JSON outcome at the end of the block at line {first_line}"
    );
    examples
}

/// `Code: NotFound  Message: text` → ("NotFound", Some("text")).
fn parse_grpc_error(text: &str) -> (String, Option<String>) {
    let text = text.trim();
    let text = text.strip_prefix("Code:").unwrap_or(text).trim();
    match text.split_once("Message:") {
        Some((code, message)) => (code.trim().to_string(), Some(message.trim().to_string())),
        None => (text.to_string(), None),
    }
}

// ---------------------------------------------------------------------------
// Matching

const ELLIPSIS: char = '…';

/// Stands for "any further elements" at the end of an expected array (`,…]`).
const MORE: &str = "…more…";

/// The documented JSON with its wildcards made valid JSON: a bare `…` becomes
/// the string "…" (any value), `{…}` and `[…]` too, a trailing `,…}` means
/// "more fields" (dropped: fields not shown are ignored anyway) and a
/// trailing `,…]` "more elements".
fn expected_json(text: &str) -> Result<Value, serde_json::Error> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            continue;
        }
        if c != ELLIPSIS {
            out.push(c);
            continue;
        }
        let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
        let prev = out.trim_end().chars().last();
        match (prev, next) {
            (Some('{'), Some('}')) | (Some('['), Some(']')) => {
                // `{…}` / `[…]`: any object / array.
                let trimmed = out.trim_end().len() - 1;
                out.truncate(trimmed);
                out.push_str("\"…\"");
                while chars[i] != '}' && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            (Some(','), Some('}')) => {
                let trimmed = out.trim_end().len() - 1;
                out.truncate(trimmed);
            }
            (Some(','), Some(']')) => out.push_str(&format!("\"{MORE}\"")),
            _ => out.push_str("\"…\""),
        }
    }
    serde_json::from_str(&out)
}

/// `pattern` with `…` standing for any text, against `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split(ELLIPSIS).collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `actual` holds everything `expected` shows.
fn contains(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(pattern), _) if pattern == "…" => true,
        (Value::String(pattern), Value::String(text)) => glob(pattern, text),
        (Value::Object(expected), Value::Object(actual)) => expected
            .iter()
            .all(|(key, value)| actual.get(key).is_some_and(|found| contains(value, found))),
        (Value::Array(expected), Value::Array(actual)) => {
            let open = expected.last().is_some_and(|last| last == MORE);
            let shown = if open {
                &expected[..expected.len() - 1]
            } else {
                &expected[..]
            };
            (if open {
                actual.len() >= shown.len()
            } else {
                actual.len() == shown.len()
            }) && shown.iter().zip(actual).all(|(e, a)| contains(e, a))
        }
        (expected, actual) => expected == actual,
    }
}

/// `NOT_FOUND`, `NotFound` and `not found` name the same code.
fn same_code(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// What a command did.
#[derive(Debug)]
struct Ran {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Checks one command's run against its documented outcome; the reason it
/// does not match, if it does not.
fn check(outcome: &Outcome, ran: &Ran) -> Result<(), String> {
    let fails = outcome.grpc_error.is_some() || outcome.cli_error.is_some();
    match outcome.exit {
        Some(code) if ran.status != code => {
            return Err(format!("exit code {} (documented: {code})", ran.status))
        }
        None if !fails && ran.status != 0 => {
            return Err(format!("exit code {} (documented: success)", ran.status))
        }
        _ if fails && ran.status == 0 => return Err("succeeded (documented: an error)".to_string()),
        _ => {}
    }
    if let Some((code, message)) = &outcome.grpc_error {
        // grpcurl: "ERROR:\n  Code: NotFound\n  Message: …"; the CLI: "error: … [NOT_FOUND]".
        let grpcurl_code = ran
            .stderr
            .lines()
            .find_map(|line| line.trim().strip_prefix("Code:"))
            .map(str::trim);
        let cli_code = ran.stderr.lines().find_map(|line| {
            let line = line.trim_end();
            line.starts_with("error:")
                .then(|| line.rsplit_once('[')?.1.strip_suffix(']'))
                .flatten()
        });
        let actual = grpcurl_code.or(cli_code).unwrap_or("");
        if !same_code(code, actual) {
            return Err(format!("code {actual:?} (documented: {code})"));
        }
        if let Some(message) = message {
            let actual = ran
                .stderr
                .lines()
                .find_map(|line| line.trim().strip_prefix("Message:"))
                .map(str::trim)
                .unwrap_or("");
            if !glob(message, actual) {
                return Err(format!("message {actual:?} (documented: {message:?})"));
            }
        }
    }
    if let Some(line) = &outcome.cli_error {
        if !ran
            .stderr
            .lines()
            .any(|actual| glob(line, actual.trim_end()))
        {
            return Err(format!("no stderr line like {line:?}"));
        }
    }
    if let Some(json) = &outcome.json {
        let expected =
            expected_json(json).map_err(|error| format!("bad documented JSON: {error}"))?;
        let printed: Vec<Value> = serde_json::Deserializer::from_str(&ran.stdout)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect();
        if !printed.iter().any(|value| contains(&expected, value)) {
            return Err(format!("output does not contain the documented {json}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running

/// Kills a child process when dropped, so a failing test leaves nothing behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the server when dropped.
struct ServerGuard(ServerProcess);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// The example origin as the README starts it (`make origin`), on a free port.
fn start_origin() -> (Killed, String) {
    let mut child = Command::new(tools::python())
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(repo().join("examples/origin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server starts");
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split_once(" port ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
            {
                let _ = tx.send(port.to_string());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the origin announces its port");
    (child, format!("127.0.0.1:{port}"))
}

/// examples/dev.toml with its directories moved into `dir` and its origin
/// moved to `origin`; everything else as shipped.
fn dev_config(dir: &Path, origin: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/dev.toml")).unwrap();
    assert!(
        text.contains(ORIGIN_ADDR),
        "examples/dev.toml's origin is the one `make origin` starts, on {ORIGIN_ADDR}"
    );
    let mut table: toml::Table = text
        .replace(ORIGIN_ADDR, origin)
        .parse()
        .expect("examples/dev.toml parses");
    table.insert(
        "data_dir".into(),
        dir.join("data").display().to_string().into(),
    );
    table.insert(
        "backup_dir".into(),
        dir.join("backups").display().to_string().into(),
    );
    let path = dir.join("dev.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path
}

/// Runs a document's examples in one bash session (variables carry over),
/// each command's output to files, and returns what each did. A command that
/// never ran (the session hit its deadline) has no entry.
fn run_document(
    examples: &[Example],
    work: &Path,
    bin: &Path,
    addresses: &[(&str, String)],
    endpoint: &str,
) -> Vec<Option<Ran>> {
    let out = work.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut script = String::from("cd \"$WORK\"\n");
    for (index, example) in examples.iter().enumerate() {
        let mut command = example.command.clone();
        for (from, to) in addresses {
            command = command.replace(from, to);
        }
        script.push_str(&format!(
            "{{ {command}\n}} >\"$OUT/{index}.out\" 2>\"$OUT/{index}.err\" </dev/null\necho $? >\"$OUT/{index}.rc\"\n"
        ));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("WORK", work)
        .env("OUT", &out)
        .env("PATH", format!("{}:{path}", bin.display()))
        .env("TIERKV_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash runs");
    let mut child = Killed(child);
    let deadline = Instant::now() + DOCUMENT_DEADLINE;
    loop {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            break; // dropped below: killed; the commands left have no result
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    (0..examples.len())
        .map(|index| {
            let read = |ext: &str| std::fs::read_to_string(out.join(format!("{index}.{ext}")));
            let status = read("rc").ok()?.trim().parse().ok()?;
            Some(Ran {
                status,
                stdout: read("out").unwrap_or_default(),
                stderr: read("err").unwrap_or_default(),
            })
        })
        .collect()
}

/// The metrics address the server announced in its "serving" line.
fn metrics_addr(server: &ServerProcess) -> String {
    server
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|json| json["message"] == "serving")
        .and_then(|json| json["metrics_addr"].as_str().map(str::to_string))
        .expect("the serving line names the metrics address")
}

/// Every runnable example of README.md and docs/patterns.md, in order,
/// against one server and origin, has its documented outcome.
#[test]
fn readme_examples_run_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_origin, origin) = start_origin();
    let config = dev_config(dir.path(), &origin);
    let mut command = server_command(&dir.path().join("data"));
    command.arg("--config").arg(&config);
    let server = ServerGuard(spawn_server(command));
    let server = &server.0;
    let endpoint = server.endpoint();
    let addresses = [
        (GRPC_ADDR, server.addr.to_string()),
        (METRICS_ADDR, metrics_addr(server)),
        (ORIGIN_ADDR, origin.clone()),
    ];
    // `tierkv` is the binary under test, `grpcurl` the set-up's.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(common::process::BINARY, bin.join("tierkv")).unwrap();
    std::os::unix::fs::symlink(tools::tool("grpcurl"), bin.join("grpcurl")).unwrap();

    let mut failures = Vec::new();
    let mut ran_total = 0;
    for document in DOCUMENTS {
        let text = std::fs::read_to_string(repo().join(document)).unwrap();
        let examples = extract(document, &text);
        assert!(
            examples.len() >= 5,
            "{document}: only {} runnable examples found",
            examples.len()
        );
        let work = dir.path().join(document.replace('/', "_"));
        std::fs::create_dir_all(&work).unwrap();
        let results = run_document(&examples, &work, &bin, &addresses, &endpoint);
        for (example, ran) in examples.iter().zip(results) {
            let Some(ran) = ran else {
                failures.push(format!(
                    "{}: did not run (deadline)\n  {}",
                    example.at, example.command
                ));
                continue;
            };
            ran_total += 1;
            if let Err(why) = check(&example.outcome, &ran) {
                failures.push(format!(
                    "{}: {why}\n  command: {}\n  stdout: {}\n  stderr: {}",
                    example.at,
                    example.command,
                    ran.stdout.trim(),
                    ran.stderr.trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran_total} examples do not do what their documents say:\n\n{}\n\nserver log:\n{}",
        failures.len(),
        failures.join("\n\n"),
        server.logs()
    );
}

// ---------------------------------------------------------------------------
// The checker itself: it must catch what it exists to catch.

/// Commands, continuation lines, outcome lines and prose are told apart.
#[test]
fn blocks_split_into_commands_and_outcomes() {
    let doc = "text\n\n```sh\n# prose\ngrpcurl -d '{\"a\":\n  1}' \\\n  host/M\n# {\"found\":true,\n#  \"n\":\"1\"}\n# more prose\n\ntierkv kv get x\n# error: not found […] [NOT_FOUND]\n# exit 1\n```\n\n```sh\nmake run\n```\n\n<!-- readme-test: expect=NOT_FOUND -->\n```sh\ngrpcurl x\n```\n";
    let examples = extract("doc", doc);
    assert_eq!(examples.len(), 3, "{examples:#?}");
    assert_eq!(
        examples[0].command,
        "grpcurl -d '{\"a\":\n  1}' \\\n  host/M"
    );
    assert_eq!(examples[0].at, "doc:5");
    assert_eq!(
        examples[0].outcome.json.as_deref(),
        Some("{\"found\":true, \"n\":\"1\"}")
    );
    assert_eq!(examples[1].outcome.exit, Some(1));
    assert_eq!(
        examples[1].outcome.cli_error.as_deref(),
        Some("error: not found […] [NOT_FOUND]")
    );
    assert_eq!(
        examples[2].outcome.grpc_error,
        Some(("NOT_FOUND".to_string(), None))
    );
}

/// There is no way to skip an example.
#[test]
#[should_panic(expected = "there is no skip")]
fn skip_annotations_are_refused() {
    extract(
        "doc",
        "<!-- readme-test: skip-reason=slow -->\n```sh\ngrpcurl x\n```\n",
    );
}

/// Documented JSON with wildcards matches what contains it, and nothing else.
#[test]
fn json_outcomes_match_only_what_they_show() {
    let expected = expected_json(
        r#"{"token":"Yf3…Q.x9…k","data":{…},"expireTime":…,"version":"12","list":[…],…}"#,
    )
    .unwrap();
    let actual: Value = serde_json::from_str(
        r#"{"token":"Yf3abcQ.x9defk","data":{"a":1},"expireTime":"2030","version":"12","list":[1,2],"extra":true}"#,
    )
    .unwrap();
    assert!(contains(&expected, &actual));
    let wrong_version: Value = serde_json::from_str(
        r#"{"token":"Yf3abcQ.x9defk","data":{},"expireTime":"x","version":"13","list":[]}"#,
    )
    .unwrap();
    assert!(!contains(&expected, &wrong_version));
    let missing_field: Value =
        serde_json::from_str(r#"{"token":"Yf3Q.x9k","version":"12"}"#).unwrap();
    assert!(!contains(&expected, &missing_field));
    assert!(!glob("Yf3…Q", "Yf3abcZ"));
    // An object wildcard inside an array is one element; `,…]` allows more.
    let three = expected_json(r#"{"r":[{"a":1,…},{…},{…}]}"#).unwrap();
    let two = serde_json::json!({"r":[{"a":1,"b":2},{"c":3}]});
    assert!(!contains(&three, &two));
    let at_least_one = expected_json(r#"{"r":[{"a":1},…]}"#).unwrap();
    assert!(contains(&at_least_one, &two));
    assert!(!contains(&at_least_one, &serde_json::json!({"r":[]})));
}

/// A command that fails where success is documented, or the wrong code, or
/// output without the documented fields, is reported.
#[test]
fn outcomes_catch_wrong_results() {
    let ok = Ran {
        status: 0,
        stdout: "{\"found\":true}\n".into(),
        stderr: String::new(),
    };
    let not_found = Ran {
        status: 1,
        stdout: String::new(),
        stderr: "ERROR:\n  Code: NotFound\n  Message: no live session for this token\n".into(),
    };
    let success = Outcome::default();
    assert!(check(&success, &ok).is_ok());
    assert!(check(&success, &not_found).is_err());
    let documented_not_found = Outcome {
        grpc_error: Some(("NotFound".into(), Some("no live session for…".into()))),
        ..Outcome::default()
    };
    assert!(check(&documented_not_found, &not_found).is_ok());
    assert!(check(&documented_not_found, &ok).is_err());
    let documented_aborted = Outcome {
        grpc_error: Some(("ABORTED".into(), None)),
        ..Outcome::default()
    };
    assert!(check(&documented_aborted, &not_found).is_err());
    let documented_json = Outcome {
        json: Some("{\"found\":false}".into()),
        ..Outcome::default()
    };
    assert!(check(&documented_json, &ok).is_err());
    let cli = Ran {
        status: 3,
        stdout: String::new(),
        stderr: "error: precondition failed for key \"a\": expected version 9, current version is 1 [ABORTED]\n".into(),
    };
    let documented_cli = Outcome {
        cli_error: Some("error: precondition failed for key \"a\": … [ABORTED]".into()),
        exit: Some(3),
        ..Outcome::default()
    };
    assert!(check(&documented_cli, &cli).is_ok());
    let wrong_exit = Outcome {
        exit: Some(1),
        ..documented_cli
    };
    assert!(check(&wrong_exit, &cli).is_err());
}
