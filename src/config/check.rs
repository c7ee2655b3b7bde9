//! `tierkv config check FILE`: every unknown or wrong key of a configuration
//! file, each with its line, instead of the first one the server stops at.
//! Unknown keys come from the reference (`super::reference`); wrong values
//! from deserializing the file, one error at a time, each key blanked out
//! once reported so the next error shows.

use std::ops::Range;

use serde::Deserialize;

use super::{reference, Config};

/// Most problems reported for one file.
const MAX_PROBLEMS: usize = 100;

/// One problem of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The 1-based line it is on, when it is on one.
    pub line: Option<usize>,
    /// The key, dotted from its table (`cache.origins[].url`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Every problem of the file's text: its syntax, unknown keys, values of the
/// wrong type or range for their key. Empty when the server would read it
/// (checks that need more than the file, such as TLS files existing, are
/// the caller's).
pub fn check(text: &str) -> Vec<Problem> {
    let table = match toml::de::DeTable::parse(text) {
        Ok(table) => table,
        Err(error) => {
            return vec![Problem {
                line: error.span().map(|span| line_of(text, span.start)),
                key: None,
                message: error.message().trim().to_string(),
            }]
        }
    };
    let mut problems = Vec::new();
    let mut work = text.to_string();
    let mut unknown = Vec::new();
    walk(table.get_ref(), "", &mut unknown);
    for (key, span) in unknown {
        let hint = closest(&key)
            .map(|known| format!(" (did you mean `{known}`?)"))
            .unwrap_or_default();
        problems.push(Problem {
            line: Some(line_of(text, span.start)),
            key: Some(key),
            message: format!("unknown key{hint}; `tierkv config example` lists every key"),
        });
        blank(&mut work, span);
    }
    // Values: deserialize, report the first error, blank its lines, again.
    while problems.len() < MAX_PROBLEMS {
        let error = match toml::de::Deserializer::parse(&work)
            .and_then(|deserializer| Config::deserialize(deserializer).map(|_| ()))
        {
            Ok(()) => break,
            Err(error) => error,
        };
        let Some(span) = error.span() else {
            problems.push(Problem {
                line: None,
                key: None,
                message: error.message().trim().to_string(),
            });
            break;
        };
        let line = line_of(&work, span.start);
        let key = work
            .lines()
            .nth(line - 1)
            .and_then(|text| text.split_once('='))
            .map(|(key, _)| key.trim().trim_start_matches('#').trim().to_string())
            .filter(|key| !key.is_empty() && !key.starts_with('['));
        problems.push(Problem {
            line: Some(line),
            key,
            message: error.message().trim().to_string(),
        });
        let before = work.clone();
        blank(&mut work, span);
        if work == before || toml::de::DeTable::parse(&work).is_err() {
            break; // nothing left to learn without guessing
        }
    }
    problems
}

/// Collects the keys no setting knows, with the span from the key to the
/// end of its value.
fn walk(table: &toml::de::DeTable<'_>, path: &str, unknown: &mut Vec<(String, Range<usize>)>) {
    for (key, value) in table {
        let full = if path.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{path}.{}", key.get_ref())
        };
        let is_prefix_of_setting = |prefix: &str| {
            reference::SETTINGS
                .iter()
                .any(|setting| setting.key.starts_with(&format!("{prefix}.")))
        };
        if reference::is_known(&full) {
            continue;
        }
        match value.get_ref() {
            toml::de::DeValue::Table(inner) if is_prefix_of_setting(&full) => {
                walk(inner, &full, unknown)
            }
            toml::de::DeValue::Array(items) if is_prefix_of_setting(&format!("{full}[]")) => {
                for item in items.iter() {
                    if let toml::de::DeValue::Table(inner) = item.get_ref() {
                        walk(inner, &format!("{full}[]"), unknown);
                    }
                }
            }
            _ => {
                let span = key.span().start..value.span().end.max(key.span().end);
                unknown.push((full, span));
            }
        }
    }
}

/// The known key most like `key` (same table, a few edits away), if any.
fn closest(key: &str) -> Option<&'static str> {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    reference::SETTINGS
        .iter()
        .filter_map(|setting| {
            let (setting_table, setting_name) = setting.table_and_name();
            (setting_table == table).then(|| (edit_distance(name, setting_name), setting.key))
        })
        .filter(|(distance, _)| *distance <= 3.max(name.len() / 4))
        .min()
        .map(|(_, key)| key)
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Replaces the whole lines a span touches with spaces, keeping every other
/// line where it was.
fn blank(text: &mut String, span: Range<usize>) {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |at| at + 1);
    let end = text[span.end.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |at| span.end + at);
    let blanked: String = text[start..end]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &blanked);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each unknown and each wrong key is named with its line, not only the
    /// first; a near miss gets a suggestion.
    #[test]
    fn names_every_problem_with_its_line() {
        let text = "listen = \"127.0.0.1:50051\"\nblock_cache = 64\n\n[session]\nmax_ttl_secs = \"long\"\nprefx = \"session:\"\n\n[cache]\nmemory_mb = -1\n\n[[cache.origins]]\nprefix = \"cache:api:\"\nurl = \"http://127.0.0.1:1/{key}\"\nmemory_tll = \"1s\"\n";
        let problems = check(text);
        let found: Vec<(Option<usize>, Option<&str>)> = problems
            .iter()
            .map(|problem| (problem.line, problem.key.as_deref()))
            .collect();
        assert!(
            found.contains(&(Some(2), Some("block_cache"))),
            "{problems:#?}"
        );
        assert!(
            found.contains(&(Some(6), Some("session.prefx"))),
            "{problems:#?}"
        );
        assert!(
            found.contains(&(Some(14), Some("cache.origins[].memory_tll"))),
            "{problems:#?}"
        );
        assert!(
            found.contains(&(Some(5), Some("max_ttl_secs"))),
            "{problems:#?}"
        );
        assert!(
            found.contains(&(Some(9), Some("memory_mb"))),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 5, "{problems:#?}");
        let suggestion = problems.iter().find(|p| p.line == Some(6)).unwrap();
        assert!(
            suggestion.message.contains("session.prefix"),
            "{suggestion}"
        );
    }

    /// A file without problems has none; a syntax error is one, with its line.
    #[test]
    fn valid_files_and_syntax_errors() {
        assert_eq!(check(&reference::example()), Vec::new());
        assert_eq!(check(""), Vec::new());
        let broken = check("listen = \"a\"\n[session\n");
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].line, Some(2), "{broken:?}");
    }
}
