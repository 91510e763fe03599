//! proto3 JSON: loading with errors that say where, and pretty writing.
//!
//! serde_json reports a line and column; not every message names the field
//! (e.g. "invalid type: string, expected i64"), so the error also gives the
//! JSON path of the position, such as `nodes[1].attributes.perm`.

use adjoint_proto::v1;

use crate::{Error, Result};

/// Parses the proto3 JSON form of a graph message (no IR checks yet).
pub fn parse(text: &str) -> Result<v1::Graph> {
    serde_json::from_str::<v1::Graph>(text).map_err(|e| {
        let at = offset_of(text, e.line(), e.column());
        let path = path_at(text, at);
        if path.is_empty() {
            Error::Decode(format!("JSON: {e}"))
        } else {
            Error::Decode(format!("JSON: {e} (in field {path})"))
        }
    })
}

/// The pretty proto3 JSON text of a message. Fields come out in declaration
/// order and maps in key order, so the text is stable.
pub fn write(proto: &v1::Graph) -> String {
    // Serializing a message to a string cannot fail: every map key is a
    // string and non-finite floats are written as strings.
    serde_json::to_string_pretty(proto).expect("a graph message always serializes to JSON")
}

/// Byte offset of a 1-based line and column (serde_json counts bytes; column
/// 0 means the end of the previous line's content).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let mut at = line_start.saturating_add(column).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[derive(Debug)]
enum Frame {
    Object {
        key: Option<String>,
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The JSON path (`a.b[2].c`) of the innermost field open at byte `end`.
fn path_at(text: &str, end: usize) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    let mut chars = text.get(..end).unwrap_or(text).chars();
    while let Some(c) = chars.next() {
        match c {
            '{' => stack.push(Frame::Object {
                key: None,
                expect_key: true,
            }),
            '[' => stack.push(Frame::Array { index: 0 }),
            '}' | ']' => {
                stack.pop();
            }
            ',' => match stack.last_mut() {
                Some(Frame::Object { key, expect_key }) => {
                    *key = None;
                    *expect_key = true;
                }
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            ':' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = false;
                }
            }
            '"' => {
                let s = read_string(&mut chars);
                if let Some(Frame::Object {
                    key,
                    expect_key: true,
                }) = stack.last_mut()
                {
                    *key = Some(s);
                }
            }
            _ => {}
        }
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// The rest of a string literal after its opening quote (escapes kept raw).
fn read_string(chars: &mut std::str::Chars<'_>) -> String {
    let mut s = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => {
                s.push(c);
                if let Some(escaped) = chars.next() {
                    s.push(escaped);
                }
            }
            _ => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_innermost_open_field() {
        let text = r#"{"nodes": [{"name": "a"}, {"name": "b", "attributes": {"perm": {"ints": 3"#;
        assert_eq!(path_at(text, text.len()), "nodes[1].attributes.perm.ints");
        let text = "{\"values\": [{\"na\\\"me\": 1, \"dtype\": 5.5";
        assert_eq!(path_at(text, text.len()), "values[0].dtype");
        assert_eq!(path_at("", 0), "");
        // After a comma the previous key is done with.
        assert_eq!(path_at(r#"{"a": {"b": 1},"#, 15), "");
        assert_eq!(path_at(r#"{"a": {"b": 1, "c""#, 18), "a.c");
    }

    #[test]
    fn offsets_count_lines_and_columns() {
        let text = "ab\ncdé\nf";
        assert_eq!(offset_of(text, 1, 1), 1);
        assert_eq!(offset_of(text, 2, 2), 5);
        assert_eq!(offset_of(text, 2, 3), 5);
        assert_eq!(offset_of(text, 9, 9), text.len());
    }

    #[test]
    fn errors_give_line_column_and_field() {
        let text = "{\n  \"name\": \"g\",\n  \"values\": [{\"name\": \"x\", \"dtype\": 5.5}]\n}";
        let Err(Error::Decode(m)) = parse(text) else {
            panic!("expected a decode error");
        };
        assert!(m.contains("line 3") && m.contains("values[0].dtype"), "{m}");
        let Err(Error::Decode(m)) = parse("{\"nodez\": []}") else {
            panic!("expected a decode error");
        };
        assert!(m.contains("nodez") && m.contains("column"), "{m}");
    }
}
