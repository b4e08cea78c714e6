//! The records of an import file: NDJSON of upsert bodies, or CSV with a header
//! `external_user_id,email,<trait>…` whose trait columns may carry a type
//! (`seats:number`, `active:boolean`, `tags:json`; `:string` or none for text).

use crate::error::CommandError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::Path;

/// One user of the file: where it stands (1-based line) and its upsert body, or why
/// it cannot be sent (refused before any request, with the code it is listed under).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub line: usize,
    pub body: Result<String, LocalRefusal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalRefusal {
    pub code: &'static str,
    pub message: String,
}

impl LocalRefusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// CSV for `*.csv`, NDJSON otherwise.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Ndjson,
        }
    }
}

pub type Records = Box<dyn Iterator<Item = Result<Record, CommandError>>>;

/// How CSV columns map onto the body beyond their names: a column of source times
/// (each row's `timestamp`) and trait columns that go to `set_once`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CsvOptions {
    pub timestamp_column: Option<String>,
    pub once_columns: Vec<String>,
}

pub fn records(
    reader: impl BufRead + 'static,
    format: Format,
    csv: &CsvOptions,
) -> Result<Records, CommandError> {
    match format {
        Format::Ndjson => Ok(Box::new(ndjson(reader))),
        Format::Csv => csv_records(reader, csv),
    }
}

fn ndjson(reader: impl BufRead) -> impl Iterator<Item = Result<Record, CommandError>> {
    reader
        .split(b'\n')
        .enumerate()
        .filter_map(|(index, line)| match line {
            Err(err) => Some(Err(CommandError::Input(format!(
                "line {}: {err}",
                index + 1
            )))),
            Ok(line) if line.trim_ascii().is_empty() => None,
            Ok(line) => Some(Ok(Record {
                line: index + 1,
                body: ndjson_body(line),
            })),
        })
}

/// A line as an upsert body; one that is not UTF-8 or not JSON is refused alone.
fn ndjson_body(line: Vec<u8>) -> Result<String, LocalRefusal> {
    let line = String::from_utf8(line)
        .map_err(|_| LocalRefusal::new("invalid_json", "line is not UTF-8"))?;
    match serde_json::from_str::<&RawValue>(&line) {
        Ok(raw) => Ok(raw.get().to_owned()),
        Err(err) => Err(LocalRefusal::new(
            "invalid_json",
            format!("line is not JSON: {err}"),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Boolean,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
enum Column {
    ExternalUserId,
    Email,
    /// The row's `timestamp` (`--timestamp-column`).
    Timestamp,
    /// A trait; `once`: it goes to `set_once` (`--once-columns`).
    Trait {
        name: String,
        kind: Kind,
        once: bool,
    },
}

fn column(header: &str, options: &CsvOptions) -> Result<Column, CommandError> {
    if options.timestamp_column.as_deref() == Some(header) {
        return Ok(Column::Timestamp);
    }
    let (name, kind) = match header.rsplit_once(':') {
        Some((name, "string")) => (name, Kind::Text),
        Some((name, "number")) => (name, Kind::Number),
        Some((name, "boolean")) => (name, Kind::Boolean),
        Some((name, "json")) => (name, Kind::Json),
        _ => (header, Kind::Text),
    };
    match name {
        "external_user_id" | "email" if kind != Kind::Text => {
            let message = format!("column {header}: {name} is always text");
            Err(CommandError::Input(message))
        }
        "external_user_id" => Ok(Column::ExternalUserId),
        "email" => Ok(Column::Email),
        "" => Err(CommandError::Input("a column has no name".into())),
        _ => Ok(Column::Trait {
            name: name.to_owned(),
            kind,
            once: options
                .once_columns
                .iter()
                .any(|once| once == name || once == header),
        }),
    }
}

fn csv_records(
    reader: impl BufRead + 'static,
    options: &CsvOptions,
) -> Result<Records, CommandError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers = reader
        .headers()
        .map_err(|e| CommandError::Input(format!("CSV header: {e}")))?
        .clone();
    let columns = headers
        .iter()
        .map(|header| column(header, options))
        .collect::<Result<Vec<_>, _>>()?;
    if !columns.contains(&Column::ExternalUserId) {
        return Err("the CSV header has no external_user_id column".into());
    }
    let named = |name: &str| {
        headers
            .iter()
            .any(|h| h == name || h.rsplit_once(':').is_some_and(|(n, _)| n == name))
    };
    if let Some(missing) = options.timestamp_column.iter().find(|c| !named(c)) {
        let message = format!("--timestamp-column {missing}: no such column in the header");
        return Err(CommandError::Setup(message));
    }
    if let Some(missing) = options.once_columns.iter().find(|c| !named(c)) {
        let message = format!("--once-columns {missing}: no such column in the header");
        return Err(CommandError::Setup(message));
    }
    if options
        .once_columns
        .iter()
        .any(|c| matches!(c.as_str(), "external_user_id" | "email"))
    {
        return Err(
            "--once-columns names trait columns only (not external_user_id or email)".into(),
        );
    }
    Ok(Box::new(reader.into_records().map(move |row| {
        let row = row.map_err(|e| CommandError::Input(format!("CSV: {e}")))?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        Ok(Record {
            line,
            body: csv_body(&columns, &row),
        })
    })))
}

/// A row as an upsert body; an empty cell leaves its field out.
fn csv_body(columns: &[Column], row: &csv::StringRecord) -> Result<String, LocalRefusal> {
    if row.len() != columns.len() {
        return Err(LocalRefusal::new(
            "invalid_csv",
            format!("row has {} cells, the header {}", row.len(), columns.len()),
        ));
    }
    let mut body = Map::new();
    let mut traits = Map::new();
    let mut once = Map::new();
    for (column, cell) in columns.iter().zip(row.iter()) {
        if cell.is_empty() {
            continue;
        }
        match column {
            Column::ExternalUserId => {
                body.insert("external_user_id".into(), Value::String(cell.to_owned()));
            }
            Column::Email => {
                body.insert("email".into(), Value::String(cell.to_owned()));
            }
            Column::Timestamp => {
                body.insert("timestamp".into(), Value::String(cell.to_owned()));
            }
            Column::Trait {
                name,
                kind,
                once: false,
            } => {
                traits.insert(name.clone(), typed(name, *kind, cell)?);
            }
            Column::Trait {
                name,
                kind,
                once: true,
            } => {
                once.insert(name.clone(), typed(name, *kind, cell)?);
            }
        }
    }
    if !traits.is_empty() {
        body.insert("traits".into(), Value::Object(traits));
    }
    if !once.is_empty() {
        body.insert("set_once".into(), Value::Object(once));
    }
    Ok(Value::Object(body).to_string())
}

fn typed(name: &str, kind: Kind, cell: &str) -> Result<Value, LocalRefusal> {
    let refused = |what: &str| {
        LocalRefusal::new(
            "invalid_csv",
            format!("column {name}: `{cell}` is not {what}"),
        )
    };
    match kind {
        Kind::Text => Ok(Value::String(cell.to_owned())),
        Kind::Number => serde_json::from_str::<serde_json::Number>(cell.trim())
            .map(Value::Number)
            .map_err(|_| refused("a number")),
        Kind::Boolean => match cell.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(refused("true or false")),
        },
        Kind::Json => serde_json::from_str(cell).map_err(|_| refused("JSON")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(text: &'static str, format: Format) -> Vec<Record> {
        records(std::io::Cursor::new(text), format, &CsvOptions::default())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn body(record: &Record) -> Value {
        serde_json::from_str(record.body.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn ndjson_lines_are_bodies_and_bad_lines_are_refused_with_their_line() {
        let found = all(
            "{\"external_user_id\":\"a\"}\n\n  \nnot json\n{\"external_user_id\":\"b\"}\n",
            Format::Ndjson,
        );
        assert_eq!(found.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 4, 5]);
        assert_eq!(body(&found[0]), json!({"external_user_id": "a"}));
        assert_eq!(found[1].body.as_ref().unwrap_err().code, "invalid_json");
        // A line that is not UTF-8 is refused alone; the next one still counts.
        let bytes = b"{\"external_user_id\":\"\xff\"}\r\n{\"external_user_id\":\"c\"}\r\n".to_vec();
        let found: Vec<Record> = records(
            std::io::Cursor::new(bytes),
            Format::Ndjson,
            &CsvOptions::default(),
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
        assert_eq!(
            found[0].body.as_ref().unwrap_err().message,
            "line is not UTF-8"
        );
        assert_eq!(body(&found[1]), json!({"external_user_id": "c"}));
    }

    #[test]
    fn csv_columns_are_typed_and_empty_cells_left_out() {
        let text = "external_user_id,email,plan,seats:number,active:boolean,tags:json,signupDate\n\
                    u1,jane@acme.io,pro,12,true,\"[\"\"a\"\",1]\",2026-05-17T14:00:00Z\n\
                    u2,,,,,,\n\
                    u3,,pro,twelve,,,\n\
                    u4,,,1.5e3,maybe,,\n";
        let found = all(text, Format::Csv);
        assert_eq!(
            found.iter().map(|r| r.line).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        assert_eq!(
            body(&found[0]),
            json!({"external_user_id": "u1", "email": "jane@acme.io", "traits": {
                "plan": "pro", "seats": 12, "active": true, "tags": ["a", 1], "signupDate": "2026-05-17T14:00:00Z"}})
        );
        assert_eq!(body(&found[1]), json!({"external_user_id": "u2"}));
        let refusal = found[2].body.as_ref().unwrap_err();
        assert_eq!(refusal.code, "invalid_csv");
        assert!(refusal.message.contains("seats"), "{}", refusal.message);
        assert!(found[3]
            .body
            .as_ref()
            .unwrap_err()
            .message
            .contains("active"));
    }

    #[test]
    fn csv_header_must_name_the_user_and_use_known_types() {
        let no_id = records(
            std::io::Cursor::new("email,plan\na@b.io,pro\n"),
            Format::Csv,
            &CsvOptions::default(),
        );
        assert!(no_id.is_err());
        let typed_email = records(
            std::io::Cursor::new("external_user_id,email:number\n"),
            Format::Csv,
            &CsvOptions::default(),
        );
        assert!(typed_email.is_err());
        // An unknown suffix is part of the trait's name.
        let found = all("external_user_id,ratio:percent\nu,5\n", Format::Csv);
        assert_eq!(
            body(&found[0]),
            json!({"external_user_id": "u", "traits": {"ratio:percent": "5"}})
        );
    }

    #[test]
    fn a_timestamp_column_and_once_columns_shape_the_body() {
        let options = CsvOptions {
            timestamp_column: Some("changed".into()),
            once_columns: vec!["first_plan".into(), "first_seats".into()],
        };
        let text = "external_user_id,changed,plan,first_plan,first_seats:number\n\
                    u1,2026-05-17T16:00:00+02:00,pro,trial,3\n\
                    u2,,,,\n";
        let found: Vec<Record> = records(std::io::Cursor::new(text), Format::Csv, &options)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            body(&found[0]),
            json!({"external_user_id": "u1", "timestamp": "2026-05-17T16:00:00+02:00",
                   "traits": {"plan": "pro"}, "set_once": {"first_plan": "trial", "first_seats": 3}})
        );
        assert_eq!(body(&found[1]), json!({"external_user_id": "u2"}));
        let missing = CsvOptions {
            timestamp_column: Some("when".into()),
            ..CsvOptions::default()
        };
        let refused = records(std::io::Cursor::new(text), Format::Csv, &missing);
        assert!(refused.is_err_and(|e| e.to_string().contains("--timestamp-column when")));
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::of(Path::new("users.CSV")), Format::Csv);
        assert_eq!(Format::of(Path::new("users.ndjson")), Format::Ndjson);
        assert_eq!(Format::of(Path::new("users")), Format::Ndjson);
    }
}
