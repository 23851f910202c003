//! Documentation that cannot drift: README.md, ARCHITECTURE.md, CHANGELOG.md and docs/*.md are
//! read at test time and checked against the code they describe.
//!
//! - every `roster-sync` subcommand and flag they name exists in clap's command tree
//!   (`Cli::command()`), and every `roster-bench` flag in its `--help`;
//! - every configuration key they name (`section.key`, `ROSTER_SYNC__SECTION__KEY`, keys of a
//!   ```toml block) exists in `config/default.toml`, read now, not from a list kept here;
//! - every relative link, and its `#anchor` (GitHub's rules), resolves;
//! - the changelog keeps the Keep a Changelog shape.
//!
//! The example SQL of docs/analysts.md runs in `tests/report.rs`.
//!
//! A command is recognised where the docs write one: a code line (sh, console or no language)
//! whose command starts with `roster-sync` (or a path ending in it, or `cargo run … --`), the
//! usage block that starts `roster-sync [--config FILE] <command>`, an inline code span that
//! starts with `roster-sync` or with a subcommand followed by a flag or a subcommand
//! (`meetings add`, `run --no-migrate`), and a span that is a flag alone (`--follow`), which
//! must belong to some command of roster-sync or roster-bench, or be another tool's flag
//! listed in [`OTHER_TOOLS_FLAGS`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::CommandFactory;

/// Flags of other tools (cargo, psql, kubectl, …) that the docs show as a span of their own.
const OTHER_TOOLS_FLAGS: &[&str] = &[
    "release",
    "all-targets",
    "ignored",
    "nocapture",
    "test-threads",
    "strict",
    "check",
    "bins",
    "bench",
    "test",
    "lib",
];

/// File extensions: `rate.rs` is a file, not the key `rate.rs`.
const FILE_EXTENSIONS: &[&str] = &[
    "rs", "md", "toml", "sql", "db", "json", "yaml", "yml", "py", "sh", "png", "html", "service",
    "lock", "wal", "txt", "csv", "lock",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents checked here: README.md, ARCHITECTURE.md, CHANGELOG.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "CHANGELOG.md"]
        .iter()
        .map(|f| root().join(f))
        .collect();
    let mut guides: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    guides.sort();
    files.extend(guides);
    for f in &files {
        assert!(f.is_file(), "{} is missing", f.display());
    }
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn name(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A markdown file cut into what the checks look at.
#[derive(Default)]
struct Parsed {
    /// (line, info string, text) of every line inside a fenced code block.
    code: Vec<(usize, String, String)>,
    /// Code blocks: (first line, info string, lines).
    blocks: Vec<(usize, String, Vec<String>)>,
    /// (line, text) of every prose paragraph, its lines joined with spaces.
    paragraphs: Vec<(usize, String)>,
    /// (line, text) of every heading, without its #s.
    headings: Vec<(usize, String)>,
}

fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut fence: Option<(usize, String, Vec<String>)> = None;
    let mut para: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            if let Some((start, info, lines)) = fence.take() {
                p.blocks.push((start, info, lines));
            } else {
                if let Some(done) = para.take() {
                    p.paragraphs.push(done);
                }
                fence = Some((n, trimmed.trim_start_matches('`').trim().to_owned(), vec![]));
            }
            continue;
        }
        if let Some((_, info, lines)) = fence.as_mut() {
            p.code.push((n, info.clone(), line.to_owned()));
            lines.push(line.to_owned());
            continue;
        }
        if trimmed.is_empty() {
            if let Some(done) = para.take() {
                p.paragraphs.push(done);
            }
            continue;
        }
        if trimmed.starts_with('#') {
            let hashes = trimmed.chars().take_while(|c| *c == '#').count();
            if trimmed[hashes..].starts_with(' ') {
                if let Some(done) = para.take() {
                    p.paragraphs.push(done);
                }
                p.headings.push((n, trimmed[hashes..].trim().to_owned()));
                // A heading's code spans and links are checked like a paragraph's.
                p.paragraphs.push((n, trimmed[hashes..].trim().to_owned()));
                continue;
            }
        }
        match para.as_mut() {
            Some((_, t)) => {
                t.push(' ');
                t.push_str(trimmed);
            }
            None => para = Some((n, trimmed.to_owned())),
        }
    }
    if let Some(done) = para.take() {
        p.paragraphs.push(done);
    }
    p
}

/// The inline code spans of a paragraph (any number of backticks, CommonMark style).
fn code_spans(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut spans = vec![];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|b| **b == b'`').count();
        let start = i + run;
        let mut j = start;
        let mut found = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                let close = bytes[j..].iter().take_while(|b| **b == b'`').count();
                if close == run {
                    found = Some(j);
                    break;
                }
                j += close;
            } else {
                j += 1;
            }
        }
        match found {
            Some(end) => {
                spans.push(text[start..end].trim().to_owned());
                i = end + run;
            }
            None => i = start,
        }
    }
    spans
}

/// The paragraph with its code spans blanked out (links are not looked for inside them).
fn without_code_spans(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        if c == '`' {
            inside = !inside;
            out.push(' ');
        } else {
            out.push(if inside { ' ' } else { c });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Commands and flags

/// The long flags a token names: `[--region`, `--format=json`, `--kind]...` name one each.
fn flags_in(token: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = token;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let len = after
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
            .map_or(after.len(), |(i, _)| i);
        let flag = &after[..len];
        // `--` alone (end of options) names nothing; a flag starts with a letter.
        if flag.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(flag.trim_end_matches('-').to_owned());
        }
        rest = &after[len..];
    }
    out
}

fn find_arg<'a>(cmds: &[&'a clap::Command], flag: &str) -> Option<&'a clap::Arg> {
    // The deepest command first, then global flags of its ancestors.
    cmds.iter().rev().enumerate().find_map(|(depth, c)| {
        c.get_arguments().find(|a| {
            (depth == 0 || a.is_global_set())
                && (a.get_long() == Some(flag)
                    || a.get_all_aliases().is_some_and(|al| al.contains(&flag)))
        })
    })
}

/// Walks `tokens` (what follows `roster-sync`) down the command tree: the first word at each
/// level must be a subcommand, every flag must belong to the command reached.
fn check_invocation(root: &clap::Command, tokens: &[&str]) -> Result<(), String> {
    let mut path: Vec<&clap::Command> = vec![root];
    let mut open_brackets = 0i32;
    let mut placeholder = false;
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        i += 1;
        let here = *path.last().expect("the root at least");
        let shown = path
            .iter()
            .map(|c| c.get_name())
            .collect::<Vec<_>>()
            .join(" ");
        if open_brackets <= 0
            && (matches!(
                tok,
                "|" | "||" | "&&" | ";" | ">" | ">>" | "2>&1" | "&" | "\\"
            ) || tok.starts_with('#'))
        {
            break;
        }
        open_brackets += tok.matches('[').count() as i32 - tok.matches(']').count() as i32;
        let flags = flags_in(tok);
        if tok.trim_start_matches(['[', '(']).starts_with("--") {
            let mut takes_value = false;
            for flag in &flags {
                if matches!(flag.as_str(), "help" | "version") {
                    continue;
                }
                if placeholder {
                    // `roster-sync … <command> --x`: no command to check it against.
                    continue;
                }
                match find_arg(&path, flag) {
                    Some(arg) => {
                        takes_value = arg.get_action().takes_values();
                    }
                    None => return Err(format!("`{shown}` has no flag --{flag}")),
                }
            }
            // `--format json`: the next word is the value, not a subcommand.
            if takes_value && !tok.contains('=') && !tok.ends_with(']') {
                i += 1;
            }
            continue;
        }
        if tok.starts_with('-') || tok.starts_with('[') || tok.starts_with('(') {
            continue;
        }
        if tok.starts_with('<') || tok == "…" || tok == "..." {
            if here.has_subcommands() {
                placeholder = true;
            }
            continue;
        }
        if here.has_subcommands() && !placeholder {
            match here.find_subcommand(tok) {
                Some(sub) => path.push(sub),
                None => return Err(format!("`{shown}` has no subcommand `{tok}`")),
            }
        }
    }
    Ok(())
}

/// Every long flag of every command of roster-sync.
fn all_flags(cmd: &clap::Command, into: &mut BTreeSet<String>) {
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            into.insert(l.to_owned());
        }
    }
    for s in cmd.get_subcommands() {
        all_flags(s, into);
    }
}

/// roster-bench's long flags, read from its `--help` (its arguments live in its binary).
fn bench_flags() -> BTreeSet<String> {
    let out = Process::new(env!("CARGO_BIN_EXE_roster-bench"))
        .arg("--help")
        .output()
        .expect("roster-bench --help runs");
    assert!(out.status.success(), "roster-bench --help failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("--"))
        .flat_map(|l| flags_in(l.split_whitespace().next().unwrap_or_default()))
        .collect()
}

/// What follows the program in a command line, if the line (or span) runs `program`:
/// `roster-sync …`, `target/release/roster-sync …`, `VAR=x roster-sync …`, `cargo run … -- …`
/// (roster-sync only), after a pipe or `&&` too.
fn invocations<'a>(tokens: &[&'a str], program: &str) -> Vec<Vec<&'a str>> {
    let mut found = vec![];
    let mut segment_start = true;
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        if matches!(tok, "|" | "&&" | ";" | "||" | "$(") {
            segment_start = true;
            i += 1;
            continue;
        }
        if segment_start {
            let word = tok.trim_start_matches("$(");
            if word.contains('=') && !word.starts_with('-') || matches!(word, "sudo" | "exec") {
                i += 1;
                continue;
            }
            if word == program || word.ends_with(&format!("/{program}")) {
                found.push(tokens[i + 1..].to_vec());
            } else if program == "roster-sync"
                && word == "cargo"
                && tokens.get(i + 1) == Some(&"run")
                && let Some(dd) = tokens[i..].iter().position(|t| *t == "--")
            {
                found.push(tokens[i + dd + 1..].to_vec());
            }
        }
        segment_start = false;
        i += 1;
    }
    found
}

#[test]
fn every_command_and_flag_named_in_the_docs_exists() {
    let mut root = roster_sync::cli::Cli::command();
    root.build();
    let mut known = BTreeSet::new();
    all_flags(&root, &mut known);
    let bench = bench_flags();
    let mut errors = vec![];
    let mut checked = 0;
    for file in documents() {
        let doc = parse(&read(&file));
        let at = |n: usize| format!("{}:{n}", name(&file));

        // Code lines of shell-like blocks.
        for (n, info, line) in &doc.code {
            if !matches!(info.as_str(), "" | "sh" | "bash" | "console" | "shell") {
                continue;
            }
            let line = line.trim_start().trim_start_matches("$ ");
            let tokens: Vec<&str> = line.split_whitespace().collect();
            for inv in invocations(&tokens, "roster-sync") {
                checked += 1;
                if let Err(e) = check_invocation(&root, &inv) {
                    errors.push(format!("{}: {e} (in `{line}`)", at(*n)));
                }
            }
            for inv in invocations(&tokens, "roster-bench") {
                for tok in inv.iter().take_while(|t| !t.starts_with('#')) {
                    for flag in flags_in(tok) {
                        checked += 1;
                        if !bench.contains(&flag) && flag != "help" {
                            errors.push(format!("{}: roster-bench has no flag --{flag}", at(*n)));
                        }
                    }
                }
            }
        }

        // The usage block: `roster-sync [--config FILE] <command>`, then one command per
        // line indented by two spaces, its description after two spaces or more, and
        // continuation lines of flags indented further.
        for (start, info, lines) in &doc.blocks {
            let is_usage = info.is_empty()
                && lines.first().is_some_and(|l| {
                    l.trim_start().starts_with("roster-sync") && l.contains("<command>")
                });
            if !is_usage {
                continue;
            }
            let mut current: Vec<String> = vec![];
            let mut current_line = *start;
            let mut flush = |current: &mut Vec<String>, n: usize| {
                if !current.is_empty() {
                    checked += 1;
                    let tokens: Vec<&str> = current.iter().map(String::as_str).collect();
                    if let Err(e) = check_invocation(&root, &tokens) {
                        errors.push(format!("{}: {e} (usage block)", at(n)));
                    }
                    current.clear();
                }
            };
            for (k, line) in lines.iter().enumerate().skip(1) {
                let n = start + 1 + k;
                let indent = line.len() - line.trim_start().len();
                let syntax = line.trim_start().split("  ").next().unwrap_or_default();
                if indent == 2 && syntax.starts_with(|c: char| c.is_ascii_lowercase()) {
                    flush(&mut current, current_line);
                    current_line = n;
                    current = syntax.split_whitespace().map(str::to_owned).collect();
                } else if indent > 2 && (syntax.starts_with('[') || syntax.starts_with("--")) {
                    current.extend(syntax.split_whitespace().map(str::to_owned));
                }
            }
            flush(&mut current, current_line);
        }

        // Inline code spans.
        for (n, text) in &doc.paragraphs {
            for span in code_spans(text) {
                let tokens: Vec<&str> = span.split_whitespace().collect();
                let Some(first) = tokens.first() else {
                    continue;
                };
                let mut invs = invocations(&tokens, "roster-sync");
                if invs.is_empty()
                    && let Some(sub) = root.find_subcommand(first)
                {
                    let second = tokens.get(1).copied().unwrap_or_default();
                    if second.starts_with('-') || sub.find_subcommand(second).is_some() {
                        invs.push(tokens.clone());
                    }
                }
                for inv in invs {
                    checked += 1;
                    if let Err(e) = check_invocation(&root, &inv) {
                        errors.push(format!("{}: {e} (in `{span}`)", at(*n)));
                    }
                }
                for inv in invocations(&tokens, "roster-bench") {
                    for flag in inv.iter().flat_map(|t| flags_in(t)) {
                        checked += 1;
                        if !bench.contains(&flag) {
                            errors.push(format!("{}: roster-bench has no flag --{flag}", at(*n)));
                        }
                    }
                }
                // A flag alone: `--follow`, `--since EVENT_ID`.
                if first.starts_with("--") && tokens.len() <= 2 {
                    for flag in flags_in(first) {
                        checked += 1;
                        if !known.contains(&flag)
                            && !bench.contains(&flag)
                            && !OTHER_TOOLS_FLAGS.contains(&flag.as_str())
                        {
                            errors.push(format!(
                                "{}: no command of roster-sync or roster-bench has --{flag} \
                                 (another tool's flag? add it to OTHER_TOOLS_FLAGS)",
                                at(*n)
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!("{checked} commands and flags checked");
    assert!(
        checked > 50,
        "only {checked} commands and flags found: is the parser broken?"
    );
    assert!(
        errors.is_empty(),
        "commands or flags the code does not have:\n{}",
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration keys

/// Every key of config/default.toml as `section.key` (nested tables as `a.b.c`), and the
/// sections (top-level tables).
fn config_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = read(&root().join("config/default.toml"));
    let table: toml::Table = toml::from_str(&text).expect("config/default.toml parses");
    fn walk(prefix: &str, t: &toml::Table, keys: &mut BTreeSet<String>) {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys.insert(path.clone());
            if let toml::Value::Table(inner) = v {
                walk(&path, inner, keys);
            }
        }
    }
    let mut keys = BTreeSet::new();
    walk("", &table, &mut keys);
    let sections = table
        .iter()
        .filter(|(_, v)| v.is_table())
        .map(|(k, _)| k.clone())
        .collect();
    (keys, sections)
}

/// `pattern` with `*` standing for any run of characters.
fn glob_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i)
                        && glob_matches(tail, &text[head.len() + i..])
                })
        }
    }
}

/// The configuration keys a piece of text names: `poll.interval`, `retry.*` (sections of
/// default.toml only, so `concurrency.points` is not one) and `ROSTER_SYNC__POLL__INTERVAL`.
fn keys_named(text: &str, sections: &BTreeSet<String>) -> Vec<String> {
    let mut out = vec![];
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*'))) {
        let word = word.trim_matches('.');
        if let Some(env) = word.strip_prefix("ROSTER_SYNC__") {
            let parts: Vec<&str> = env.split("__").collect();
            if parts.len() >= 2 && env != "SECTION__KEY" && parts.iter().all(|p| !p.is_empty()) {
                out.push(parts.join(".").to_lowercase());
            }
            continue;
        }
        let Some((section, rest)) = word.split_once('.') else {
            continue;
        };
        if !sections.contains(section) || rest.is_empty() {
            continue;
        }
        if word.chars().any(|c| c.is_ascii_uppercase()) {
            continue;
        }
        if FILE_EXTENSIONS.contains(&rest) {
            continue;
        }
        out.push(word.to_owned());
    }
    out
}

#[test]
fn every_configuration_key_named_in_the_docs_exists() {
    let (keys, sections) = config_keys();
    assert!(
        keys.contains("poll.interval"),
        "default.toml read wrong: {keys:?}"
    );
    let mut errors = vec![];
    let mut checked = 0;
    for file in documents() {
        let doc = parse(&read(&file));
        let mut named: Vec<(usize, String)> = vec![];
        for (n, text) in &doc.paragraphs {
            for span in code_spans(text) {
                named.extend(keys_named(&span, &sections).into_iter().map(|k| (*n, k)));
            }
        }
        for (n, info, line) in &doc.code {
            if info != "toml" {
                // Environment variables in shell lines; dotted words there are not keys.
                named.extend(
                    keys_named(line, &BTreeSet::new())
                        .into_iter()
                        .map(|k| (*n, k)),
                );
            }
        }
        // ```toml blocks: [section] and key = value lines.
        for (start, info, lines) in &doc.blocks {
            if info != "toml" {
                continue;
            }
            let mut section: Option<String> = None;
            for (k, line) in lines.iter().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if line.starts_with("[[") {
                    section = None; // a list entry ([[meetings]], [[webhooks]]): not keys
                } else if let Some(s) = line.strip_prefix('[') {
                    section = Some(s.trim_end_matches(']').to_owned());
                } else if let (Some(s), Some((key, _))) = (&section, line.split_once('=')) {
                    named.push((start + 1 + k, format!("{s}.{}", key.trim())));
                }
            }
        }
        for (n, key) in named {
            checked += 1;
            if !keys.iter().any(|k| glob_matches(&key, k)) {
                errors.push(format!(
                    "{}:{n}: `{key}` is not a key of config/default.toml",
                    name(&file)
                ));
            }
        }
    }
    eprintln!("{checked} keys checked");
    assert!(
        checked > 20,
        "only {checked} keys found: is the scanner broken?"
    );
    assert!(
        errors.is_empty(),
        "configuration keys that do not exist:\n{}",
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Links and anchors

/// GitHub's anchor of a heading: lowercase, spaces to `-`, punctuation dropped (letters,
/// digits, `-` and `_` kept). Links inside the heading count by their text.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // [text](url) → text
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            after[close + 2..]
                .find(')')
                .map(|end| (close, close + 2 + end + 1))
        }) {
            Some((close, end)) => {
                text.push_str(&after[..close]);
                rest = &after[end..];
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file: its headings' slugs, repeats numbered -1, -2, …
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, heading) in parse(text).headings {
        let base = slug(&heading);
        let count = seen.entry(base.clone()).or_insert(0);
        out.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// The targets of the inline links and images of a paragraph, code spans left out.
fn link_targets(text: &str) -> Vec<String> {
    let text = without_code_spans(text);
    let mut out = vec![];
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0;
        let end = after.char_indices().find_map(|(i, c)| match c {
            '(' => {
                depth += 1;
                None
            }
            ')' if depth == 0 => Some(i),
            ')' => {
                depth -= 1;
                None
            }
            _ => None,
        });
        let Some(end) = end else { break };
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        out.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut errors = vec![];
    let mut checked = 0;
    for file in documents() {
        let text = read(&file);
        let doc = parse(&text);
        for (n, para) in &doc.paragraphs {
            for target in link_targets(para) {
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().expect("a directory").join(path)
                };
                let here = format!("{}:{n}", name(&file));
                if !resolved.exists() {
                    errors.push(format!("{here}: `{target}`: {} does not exist", path));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if resolved.extension().is_none_or(|e| e != "md") {
                    errors.push(format!(
                        "{here}: `{target}`: an anchor into a non-markdown file"
                    ));
                    continue;
                }
                let found = anchors(&read(&resolved));
                if !found.contains(anchor) {
                    errors.push(format!(
                        "{here}: `{target}`: no heading with anchor #{anchor} in {}",
                        name(&resolved)
                    ));
                }
            }
        }
    }
    eprintln!("{checked} links checked");
    assert!(
        checked > 10,
        "only {checked} links found: is the scanner broken?"
    );
    assert!(
        errors.is_empty(),
        "links that do not resolve:\n{}",
        errors.join("\n")
    );
}

#[test]
fn anchors_follow_github_rules() {
    assert_eq!(slug("Running several replicas"), "running-several-replicas");
    assert_eq!(slug("Health, metrics and logs"), "health-metrics-and-logs");
    assert_eq!(
        slug("Faults in tests (SimHandle)"),
        "faults-in-tests-simhandle"
    );
    assert_eq!(
        slug("`roster-bench` and the `--replicas` flag"),
        "roster-bench-and-the---replicas-flag"
    );
    assert_eq!(slug("[Unreleased]"), "unreleased");
    assert_eq!(slug("[Unreleased](https://example.com)"), "unreleased");
    let a = anchors("# A\n\n## Added\n\n```\n# not a heading\n```\n\n## Added\n");
    assert_eq!(
        a,
        BTreeSet::from(["a".into(), "added".into(), "added-1".into()])
    );
}

#[test]
fn the_command_walk_refuses_what_clap_does_not_have() {
    let mut root = roster_sync::cli::Cli::command();
    root.build();
    let ok = |line: &str| check_invocation(&root, &line.split_whitespace().collect::<Vec<_>>());
    assert!(ok("meetings add 4f1c --region us-east-1 --label all-hands").is_ok());
    assert!(ok("--config x.toml report --label L --since 2026-01-31 --format html").is_ok());
    assert!(ok("forget --external-user-id ID [--yes | --dry-run]").is_ok());
    assert!(ok("events --follow --format json | jq -r .kind --raw-output").is_ok());
    assert!(ok("[--config FILE] <command>").is_ok());
    assert!(ok("meetings rename x").is_err());
    assert!(ok("report --colour").is_err());
    assert!(ok("migrate --no-migrate").is_err());
    assert!(ok("frobnicate").is_err());
}

// ---------------------------------------------------------------------------------------------
// The changelog

#[test]
fn the_changelog_keeps_the_keep_a_changelog_shape() {
    let text = read(&root().join("CHANGELOG.md"));
    let doc = parse(&text);
    let headings: Vec<&str> = doc.headings.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(
        headings.first(),
        Some(&"Changelog"),
        "the title comes first"
    );
    assert!(
        headings.contains(&"[Unreleased]"),
        "an `## [Unreleased]` section holds what is not released yet"
    );
    let allowed = [
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    ];
    for line in text.lines().filter(|l| l.starts_with("### ")) {
        assert!(
            allowed.contains(&&line[4..]),
            "`{line}`: Keep a Changelog groups changes under {allowed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The README's two commands

#[test]
fn ci_runs_the_test_command_the_readme_gives() {
    let readme = parse(&read(&root().join("README.md")));
    let commands: Vec<String> = readme
        .code
        .iter()
        .filter(|(_, info, _)| info == "sh")
        .map(|(_, _, line)| line.split('#').next().unwrap_or_default().trim().to_owned())
        .collect();
    assert!(
        commands.iter().any(|c| c == "cargo run --release -- demo"),
        "the README's quick start runs the demo: {commands:?}"
    );
    let test_command = commands
        .iter()
        .find(|c| c.starts_with("cargo test"))
        .expect("the README's quick start gives the test command");
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines().any(|l| l.trim() == test_command),
        ".ci/run must run the README's test command `{test_command}` as written"
    );
}
