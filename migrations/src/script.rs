//! Migration scripts on disk: finding them, naming rules, checksums, and
//! every check that can be made before anything runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::MigrationError;

/// Largest script accepted (a migration is code, not data).
pub const MAX_SCRIPT_BYTES: u64 = 4 * 1024 * 1024;

pub use crate::store::StoreKind;

/// One script's text and identity.
#[derive(Debug, Clone)]
pub struct ScriptFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub body: String,
    /// SHA-256 of the text, hex.
    pub checksum: String,
}

/// One migration: its up script and, optionally, its down script.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The store.
    pub store: StoreKind,
    /// Its version (the number before the first `_`).
    pub version: u64,
    /// Its name (after the `_`, without the extension).
    pub name: String,
    /// The up script.
    pub up: ScriptFile,
    /// The down script (`<version>_<name>.down.<ext>`), if any.
    pub down: Option<ScriptFile>,
    /// SQL only: run outside a transaction (the script's first line is
    /// `-- dl:no-transaction`), for statements such as `CREATE INDEX
    /// CONCURRENTLY`.
    pub no_transaction: bool,
}

impl Migration {
    /// `<version>_<name>` as in the file name.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{}_{}", self.version, self.name)
    }
}

/// The checksum of a script's text: SHA-256, lowercase hex.
#[must_use]
pub fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        use fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Splits `<version>_<name>[.down].<ext>` into its parts.
fn parse_name(file: &str, ext: &str) -> Result<(u64, String, bool), String> {
    let Some(stem) = file.strip_suffix(&format!(".{ext}")) else {
        return Err(format!("the extension must be .{ext}"));
    };
    let (stem, down) = match stem.strip_suffix(".down") {
        Some(s) => (s, true),
        None => (stem, false),
    };
    let Some((version, name)) = stem.split_once('_') else {
        return Err("the name must be <version>_<name>".into());
    };
    if version.is_empty() || version.len() > 18 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the version must be 1 to 18 digits".into());
    }
    let version: u64 = version
        .parse()
        .map_err(|_| "the version must be a number".to_owned())?;
    if version == 0 {
        return Err("the version must be greater than 0".into());
    }
    if name.is_empty()
        || name.len() > 100
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("the name must be 1 to 100 of [a-z0-9_]".into());
    }
    Ok((version, name.to_owned(), down))
}

fn read_script(path: &Path) -> Result<ScriptFile, MigrationError> {
    let meta = std::fs::metadata(path).map_err(|e| MigrationError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(MigrationError::BadScript {
            path: path.to_owned(),
            reason: format!("larger than {MAX_SCRIPT_BYTES} bytes"),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| MigrationError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let body = String::from_utf8(bytes).map_err(|_| MigrationError::BadScript {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })?;
    script_text(path, body)
}

fn script_text(path: &Path, body: String) -> Result<ScriptFile, MigrationError> {
    if body.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(MigrationError::BadScript {
            path: path.to_owned(),
            reason: format!("larger than {MAX_SCRIPT_BYTES} bytes"),
        });
    }
    if body.trim().is_empty() {
        return Err(MigrationError::BadScript {
            path: path.to_owned(),
            reason: "the file is empty".into(),
        });
    }
    Ok(ScriptFile {
        path: path.to_owned(),
        checksum: checksum(&body),
        body,
    })
}

/// Checks a script's content for its store before anything runs.
fn check_content(store: StoreKind, script: &ScriptFile) -> Result<(), MigrationError> {
    let bad = |reason: String| MigrationError::BadScript {
        path: script.path.clone(),
        reason,
    };
    match store {
        StoreKind::Mongo => {
            let value: serde_json::Value = serde_json::from_str(&script.body).map_err(|e| {
                bad(format!(
                    "invalid JSON at line {}, column {}: {}",
                    e.line(),
                    e.column(),
                    e.classify_text()
                ))
            })?;
            let commands = crate::split::mongo_commands(&value).map_err(bad)?;
            if commands.is_empty() {
                return Err(bad("no commands".into()));
            }
            // Extended JSON is checked where the BSON parser is built in.
            #[cfg(feature = "mongodb")]
            crate::split::mongo_documents(&script.body).map_err(bad)?;
        }
        StoreKind::Postgres | StoreKind::Sqlite | StoreKind::Scylla => {
            let statements = crate::split::statements(&script.body, store).map_err(bad)?;
            if statements.is_empty() {
                return Err(bad("no statements (only comments)".into()));
            }
        }
        StoreKind::Redis => {}
    }
    Ok(())
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of file",
        }
    }
}

/// Every store's migrations under one folder (`migrations/`), checked: a
/// subfolder must be a known store, every file must be named
/// `<version>_<name>[.down].<ext>` with its store's extension, non-empty and
/// well-formed for its store, versions must be unique per store, and a down
/// script needs its up script. Nothing runs when any check fails. Files
/// whose names start with `.` and a `README*` are ignored, as are plain
/// files at the top (the crate's own `Cargo.toml`, say) and the folders
/// `src`, `tests`, `benches`, `examples` and `target`.
///
/// # Errors
/// The first problem found, naming the file.
pub fn load(root: &Path) -> Result<BTreeMap<StoreKind, Vec<Migration>>, MigrationError> {
    let mut all = BTreeMap::new();
    let entries = std::fs::read_dir(root).map_err(|e| MigrationError::Io {
        path: root.to_owned(),
        source: e,
    })?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| MigrationError::Io {
            path: root.to_owned(),
            source: e,
        })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir()
            || name.starts_with('.')
            || ["src", "tests", "benches", "examples", "target"].contains(&name.as_str())
        {
            continue;
        }
        dirs.push(path);
    }
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(store) = StoreKind::from_name(&name) else {
            return Err(MigrationError::UnknownStore {
                path: dir,
                known: StoreKind::ALL.iter().map(|s| s.name()).collect(),
            });
        };
        all.insert(store, load_store(store, &dir)?);
    }
    Ok(all)
}

/// One store's migrations from its folder, checked as [`load`] does.
///
/// # Errors
/// The first problem found, naming the file.
pub fn load_store(store: StoreKind, dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| MigrationError::Io {
            path: dir.to_owned(),
            source: e,
        })?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| MigrationError::Io {
            path: dir.to_owned(),
            source: e,
        })?;
    files.sort();
    let mut scripts = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.starts_with('.') || file.starts_with("README") {
            continue;
        }
        if path.is_dir() {
            return Err(MigrationError::BadName {
                path,
                reason: "a folder inside a store's migrations".into(),
            });
        }
        parse_name(&file, store.extension()).map_err(|reason| MigrationError::BadName {
            path: path.clone(),
            reason,
        })?;
        scripts.push(read_script(&path)?);
    }
    assemble(store, scripts)
}

/// One store's migrations from texts held in memory (scripts embedded in a
/// binary with `include_str!`): `(file name, text)` pairs, checked as
/// [`load`] checks files. Errors name `<store>/<file name>`.
///
/// # Errors
/// The first problem found, naming the file.
pub fn from_texts(
    store: StoreKind,
    files: &[(&str, &str)],
) -> Result<Vec<Migration>, MigrationError> {
    let mut files = files.to_vec();
    files.sort_unstable();
    let mut scripts = Vec::with_capacity(files.len());
    for (file, body) in files {
        let path = Path::new(store.name()).join(file);
        parse_name(file, store.extension()).map_err(|reason| MigrationError::BadName {
            path: path.clone(),
            reason,
        })?;
        scripts.push(script_text(&path, body.to_owned())?);
    }
    assemble(store, scripts)
}

/// Pairs up and down scripts (named correctly: checked by the caller) and
/// checks their content and versions.
fn assemble(store: StoreKind, scripts: Vec<ScriptFile>) -> Result<Vec<Migration>, MigrationError> {
    let mut ups: BTreeMap<u64, Migration> = BTreeMap::new();
    let mut downs: Vec<(u64, String, ScriptFile)> = Vec::new();
    for script in scripts {
        let path = script.path.clone();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (version, name, down) =
            parse_name(&file, store.extension()).map_err(|reason| MigrationError::BadName {
                path: path.clone(),
                reason,
            })?;
        check_content(store, &script)?;
        if down {
            downs.push((version, name, script));
            continue;
        }
        if let Some(first) = ups.get(&version) {
            return Err(MigrationError::DuplicateVersion {
                store,
                version,
                first: first.up.path.clone(),
                second: path,
            });
        }
        let no_transaction = matches!(store, StoreKind::Postgres | StoreKind::Sqlite)
            && script
                .body
                .lines()
                .next()
                .is_some_and(|l| l.trim() == "-- dl:no-transaction");
        ups.insert(
            version,
            Migration {
                store,
                version,
                name,
                up: script,
                down: None,
                no_transaction,
            },
        );
    }
    for (version, name, script) in downs {
        match ups.get_mut(&version) {
            Some(m) if m.name == name => {
                if m.down.is_some() {
                    return Err(MigrationError::DuplicateVersion {
                        store,
                        version,
                        first: m.up.path.clone(),
                        second: script.path,
                    });
                }
                m.down = Some(script);
            }
            _ => {
                return Err(MigrationError::BadName {
                    path: script.path,
                    reason: format!(
                        "a down script needs its up script {version}_{name}.{}",
                        store.extension()
                    ),
                });
            }
        }
    }
    Ok(ups.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_name("0001_create_patients.sql", "sql"),
            Ok((1, "create_patients".into(), false))
        );
        assert_eq!(
            parse_name("20260101_x.down.sql", "sql"),
            Ok((20_260_101, "x".into(), true))
        );
        for bad in [
            "create.sql",
            "_x.sql",
            "1x_y.sql",
            "0_x.sql",
            "1_X.sql",
            "1_.sql",
            "1_x.txt",
            "1_x;drop.sql",
            "1_x.SQL",
            "1234567890123456789_x.sql",
        ] {
            assert!(parse_name(bad, "sql").is_err(), "{bad}");
        }
    }

    #[test]
    fn checksums_are_sha256() {
        assert_eq!(
            checksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
