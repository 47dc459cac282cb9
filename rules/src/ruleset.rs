//! Loading rule files: every `.sql` file of a directory (or the files named), checked
//! together so that rules find their streams and sinks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::{RunningRule, StreamPipeline};
use crate::error::{Pos, SqlError};
use crate::rule_def::RuleDef;
use crate::sql::{Statement, parse_file};
use crate::stream_def::StreamDef;
use crate::table_def::TableDef;

/// The parsed contents of a set of rule files.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    /// The declared streams, in the order read.
    pub streams: Vec<StreamDef>,
    /// The declared rules, in the order read.
    pub rules: Vec<RuleDef>,
    /// Lookup tables, with their rows.
    pub tables: Vec<TableDef>,
    /// Streams (and tables) whose declaration has an error, by name.
    pub broken_streams: Vec<String>,
}

/// A rule's error for a stream it reads that is not declared, or whose declaration has
/// an error.
pub(crate) fn unknown_stream(def: &RuleDef, broken: &[String]) -> SqlError {
    let message = if broken.contains(&def.stream) {
        format!(
            "rule `{}` reads stream `{}`, whose declaration has an error (reported with it)",
            def.name, def.stream
        )
    } else {
        format!("rule `{}` reads unknown stream `{}`", def.name, def.stream)
    };
    SqlError::new(&def.file, def.query_pos, message)
}

/// The `.sql` files under the given paths: a directory contributes its `*.sql` files
/// (not recursively) in name order; a file is taken as it is.
pub fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SqlError> {
    let mut files = Vec::new();
    for path in paths {
        let io_err =
            |e: std::io::Error| SqlError::new(path, Pos::default(), format!("cannot read: {e}"));
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sql") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(SqlError::new(
                path,
                Pos::default(),
                "no such file or directory",
            ));
        }
    }
    Ok(files)
}

impl RuleSet {
    /// Parses every rule file under `paths`. Returns what parsed and every error found.
    pub fn load(paths: &[PathBuf]) -> (RuleSet, Vec<SqlError>) {
        let mut set = RuleSet::default();
        let mut errors = Vec::new();
        let files = match rule_files(paths) {
            Ok(f) => f,
            Err(e) => return (set, vec![e]),
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let (stmts, errs) = parse_file(&file, &text);
                    errors.extend(errs);
                    set.add(stmts, &mut errors);
                }
                Err(e) => errors.push(SqlError::new(
                    &file,
                    Pos::default(),
                    format!("cannot read: {e}"),
                )),
            }
        }
        (set, errors)
    }

    /// Parses one file's text (for tests and tools).
    pub fn parse(file: &Path, text: &str) -> (RuleSet, Vec<SqlError>) {
        let mut set = RuleSet::default();
        let (stmts, mut errors) = parse_file(file, text);
        set.add(stmts, &mut errors);
        (set, errors)
    }

    fn add(&mut self, stmts: Vec<Statement>, errors: &mut Vec<SqlError>) {
        for s in stmts {
            match s {
                Statement::Stream(d) => match self.streams.iter().find(|x| x.name == d.name) {
                    Some(prev) => errors.push(SqlError::new(
                        &d.file,
                        d.pos,
                        format!(
                            "stream `{}` is already declared at {}:{}",
                            d.name,
                            prev.file.display(),
                            prev.pos
                        ),
                    )),
                    None => self.streams.push(d),
                },
                Statement::BrokenStream(name) => self.broken_streams.push(name),
                Statement::Table(t) => {
                    let taken = self
                        .tables
                        .iter()
                        .map(|x| (&x.name, &x.file, x.pos))
                        .chain(self.streams.iter().map(|x| (&x.name, &x.file, x.pos)))
                        .find(|(n, _, _)| **n == t.name);
                    match taken {
                        Some((_, file, pos)) => errors.push(SqlError::new(
                            &t.file,
                            t.pos,
                            format!(
                                "`{}` is already declared at {}:{pos}",
                                t.name,
                                file.display()
                            ),
                        )),
                        None => self.tables.push(t),
                    }
                }
                Statement::Rule(r) => match self.rules.iter().find(|x| x.name == r.name) {
                    Some(prev) => errors.push(SqlError::new(
                        &r.file,
                        r.pos,
                        format!(
                            "rule `{}` is already declared at {}:{}",
                            r.name,
                            prev.file.display(),
                            prev.pos
                        ),
                    )),
                    None => self.rules.push(r),
                },
            }
        }
    }

    /// Plans every rule and groups the rules by stream. A rule that fails (unknown
    /// stream or sink, bad SQL) is reported and left out; the others are built.
    pub async fn build(
        &self,
        sink_exists: impl Fn(&str) -> bool,
    ) -> (Vec<StreamPipeline>, Vec<SqlError>) {
        let mut errors = Vec::new();
        let mut by_stream: HashMap<&str, Vec<RunningRule>> = HashMap::new();
        for def in &self.rules {
            if self.tables.iter().any(|t| t.name == def.stream) {
                errors.push(SqlError::new(
                    &def.file,
                    def.query_pos,
                    format!(
                        "rule `{}` reads table `{}`: a rule reads a stream and joins tables to \
                         it (FROM stream JOIN table ON ...)",
                        def.name, def.stream
                    ),
                ));
                continue;
            }
            let Some(stream) = self.streams.iter().find(|s| s.name == def.stream) else {
                errors.push(unknown_stream(def, &self.broken_streams));
                continue;
            };
            if let Some(missing) = def
                .sinks
                .iter()
                .chain(&def.late_sink)
                .chain(&def.error_sink)
                .find(|s| !sink_exists(s))
            {
                errors.push(SqlError::new(
                    &def.file,
                    def.pos,
                    format!("rule `{}` sends to unknown sink `{missing}`", def.name),
                ));
                continue;
            }
            let mut joined = Vec::new();
            for name in &def.tables {
                match self.tables.iter().find(|t| &t.name == name) {
                    Some(t) => joined.push(t),
                    None => {
                        let why = if self.broken_streams.contains(name) {
                            "whose declaration has an error (reported with it)"
                        } else {
                            "which is not declared (CREATE TABLE)"
                        };
                        errors.push(SqlError::new(
                            &def.file,
                            def.query_pos,
                            format!("rule `{}` joins table `{name}`, {why}", def.name),
                        ));
                    }
                }
            }
            if joined.len() < def.tables.len() {
                continue;
            }
            match RunningRule::compile(def.clone(), stream, &joined).await {
                Ok(rule) => by_stream
                    .entry(stream.name.as_str())
                    .or_default()
                    .push(rule),
                Err(e) => errors.push(e),
            }
        }
        let pipelines = self
            .streams
            .iter()
            .map(|s| {
                let rules = by_stream.remove(s.name.as_str()).unwrap_or_default();
                StreamPipeline::new(Arc::new(s.clone()), rules)
            })
            .collect();
        (pipelines, errors)
    }
}
