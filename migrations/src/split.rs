//! Splitting a SQL or CQL script into statements, so a failure names the
//! statement and its line. Quotes ('…', "…", PostgreSQL's $tag$…$tag$),
//! comments (`--`, `//` in CQL, `/* … */`) and SQLite's `CREATE TRIGGER …
//! BEGIN … END` bodies are respected.

use crate::store::StoreKind;

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Its text (without the terminating `;`).
    pub text: String,
    /// The 1-based line it starts on.
    pub line: u32,
}

/// The statements of a script, in order; comment-only stretches are
/// dropped.
///
/// # Errors
/// An unterminated quote or comment, with its line.
pub fn statements(script: &str, store: StoreKind) -> Result<Vec<Statement>, String> {
    let bytes = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut line: u32 = 1;
    let mut start_line: Option<u32> = None;
    let mut i = 0usize;
    let mut trigger_depth = false;
    while i < bytes.len() {
        let c = bytes[i];
        let rest = &script[i..];
        if c == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments.
        if rest.starts_with("--") || (store == StoreKind::Scylla && rest.starts_with("//")) {
            let end = rest.find('\n').map_or(bytes.len(), |n| i + n);
            i = end;
            continue;
        }
        if let Some(body) = rest.strip_prefix("/*") {
            let Some(n) = body.find("*/") else {
                return Err(format!("unterminated /* comment starting at line {line}"));
            };
            line += count_lines(&rest[..n + 4]);
            i += n + 4;
            continue;
        }
        if start_line.is_none() {
            start_line = Some(line);
            start = i;
            trigger_depth = is_trigger(rest);
        }
        match c {
            b'\'' | b'"' | b'`' => {
                let quote = c;
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None => {
                            return Err(format!(
                                "unterminated {} quote starting at line {line}",
                                char::from(quote)
                            ));
                        }
                        Some(&b) if b == quote => {
                            if bytes.get(j + 1) == Some(&quote) {
                                j += 2;
                                continue;
                            }
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                line += count_lines(&script[i..=j]);
                i = j + 1;
            }
            b'$' if store != StoreKind::Sqlite => {
                if let Some(tag_len) = dollar_tag(rest) {
                    let tag = &rest[..tag_len];
                    let Some(n) = rest[tag_len..].find(tag) else {
                        return Err(format!("unterminated {tag} quote starting at line {line}"));
                    };
                    let end = i + tag_len + n + tag_len;
                    line += count_lines(&script[i..end]);
                    i = end;
                } else {
                    i += 1;
                }
            }
            b';' => {
                let text = script[start..i].trim();
                if trigger_depth && !ends_with_end(text) {
                    i += 1;
                    continue;
                }
                out.push(Statement {
                    text: text.to_owned(),
                    line: start_line.unwrap_or(line),
                });
                start_line = None;
                trigger_depth = false;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if let Some(l) = start_line {
        let text = script[start..].trim();
        if !text.is_empty() {
            out.push(Statement {
                text: text.to_owned(),
                line: l,
            });
        }
    }
    Ok(out)
}

fn count_lines(s: &str) -> u32 {
    u32::try_from(s.bytes().filter(|b| *b == b'\n').count()).unwrap_or(u32::MAX)
}

/// `$tag$` at the start of `s`: its length.
fn dollar_tag(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut j = 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    (b.get(j) == Some(&b'$') && !b[1..j].first().is_some_and(u8::is_ascii_digit)).then_some(j + 1)
}

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split_whitespace().map(str::to_ascii_uppercase)
}

fn is_trigger(s: &str) -> bool {
    let w: Vec<String> = words(s).take(4).collect();
    w.first().is_some_and(|x| x == "CREATE") && w.iter().skip(1).take(3).any(|x| x == "TRIGGER")
}

fn ends_with_end(text: &str) -> bool {
    words(text).last().is_some_and(|w| w == "END")
}

/// A MongoDB script's commands as BSON documents (extended JSON allowed:
/// `{"$date": ...}`, `{"$numberLong": ...}`).
///
/// # Errors
/// The first command that is not valid extended JSON.
#[cfg(feature = "mongodb")]
pub fn mongo_documents(body: &str) -> Result<Vec<mongodb::bson::Document>, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("invalid JSON: {e}"))?;
    mongo_commands(&value)?
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            mongodb::bson::Document::try_from(c.clone())
                .map_err(|e| format!("command {} is not valid extended JSON: {e}", i + 1))
        })
        .collect()
}

/// The commands of a MongoDB script: a JSON array of objects, each one
/// database command (its first key names it).
///
/// # Errors
/// What is wrong with the shape.
pub fn mongo_commands(
    value: &serde_json::Value,
) -> Result<Vec<&serde_json::Map<String, serde_json::Value>>, String> {
    let Some(items) = value.as_array() else {
        return Err("a MongoDB script is a JSON array of commands".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.as_object()
                .filter(|o| !o.is_empty())
                .ok_or_else(|| format!("command {} is not a non-empty JSON object", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str, store: StoreKind) -> Vec<(String, u32)> {
        statements(s, store)
            .expect("splits")
            .into_iter()
            .map(|s| (s.text, s.line))
            .collect()
    }

    #[test]
    fn splits_respecting_quotes_comments_and_bodies() {
        let sql = "-- header\nCREATE TABLE a (x text DEFAULT ';');\n\n/* c;\n */ INSERT INTO a VALUES ('it''s;');\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nSELECT 1";
        let got = texts(sql, StoreKind::Postgres);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].1, 2);
        assert_eq!(got[1].1, 5);
        assert!(got[2].0.contains("$body$ SELECT 1; $body$"));
        assert_eq!(got[3], ("SELECT 1".into(), 7));
    }

    #[test]
    fn sqlite_triggers_stay_whole() {
        let sql = "CREATE TABLE t (x);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\n  DELETE FROM t WHERE x = 2;\nEND;\nSELECT 1;";
        let got = texts(sql, StoreKind::Sqlite);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].0.ends_with("END"));
        assert_eq!(got[2].1, 6);
    }

    #[test]
    fn unterminated_is_an_error_with_a_line() {
        let e = statements("SELECT 1;\nSELECT 'x;", StoreKind::Postgres).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = statements("/* never closed", StoreKind::Scylla).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn comments_only_is_empty() {
        assert!(
            statements("-- nothing\n/* here */\n", StoreKind::Sqlite)
                .expect("ok")
                .is_empty()
        );
    }
}
