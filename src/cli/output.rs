//! `--output json|table`: JSON for scripts (the default), an aligned table
//! for people.

use std::io::Write;

use clap::ValueEnum;
use serde_json::Value;

use super::error::CliError;

/// How a command prints a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// JSON, the same whatever the terminal: for scripts.
    Json,
    /// One aligned line per item under a header: for people.
    Table,
}

/// Prints `rows` (JSON objects) as `format`: a pretty JSON array, or a
/// table of `columns` (each a member name, shown upper-cased).
pub fn print_rows(format: OutputFormat, columns: &[&str], rows: &[Value]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let written = match format {
        OutputFormat::Json => serde_json::to_writer_pretty(&mut stdout, rows)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout)),
        OutputFormat::Table => stdout.write_all(table(columns, rows).as_bytes()),
    };
    written.map_err(CliError::Output)
}

/// The table of `rows`: a header of the column names, then one line per
/// row, each column as wide as its widest cell; strings unquoted, null as
/// `-`, other values as compact JSON, control characters escaped so one row
/// stays one line.
pub fn table(columns: &[&str], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|column| cell(&row[*column])).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|column| column.to_uppercase()).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|index| {
            cells
                .iter()
                .map(|row| row[index].chars().count())
                .chain([header[index].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Runs `call`, a long unary call that reports no progress of its own
/// (`admin backup`, `admin drop-namespace`, `cache purge`), with a spinner,
/// the message and the time taken on stderr while it waits: only when stderr
/// is a terminal, so pipes, logs and tests see clean output.
pub async fn waiting<F: std::future::Future>(message: String, call: F) -> F::Output {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return call.await;
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let output = call.await;
    spinner.finish_and_clear();
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_and_keeps_rows_on_one_line() {
        let rows = [
            json!({"key": "a", "value": "x\ny", "version": 3}),
            json!({"key": "longer", "value": null, "version": 12}),
        ];
        assert_eq!(
            table(&["key", "version", "value"], &rows),
            "KEY     VERSION  VALUE\na       3        x\\ny\nlonger  12       -\n"
        );
    }
}
