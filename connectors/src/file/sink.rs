//! Appending results to JSONL files.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use super::FileSinkConfig;
use crate::codec::MessageIds;
use crate::sink::{Message, Sink, SinkError, SinkEvent};

/// Appends each result as one line; a batch is confirmed after `fdatasync`.
pub struct FileSink {
    template: String,
    max_file_bytes: Option<u64>,
    max_files: usize,
    ids: MessageIds,
    files: HashMap<PathBuf, File>,
    events: VecDeque<SinkEvent>,
}

impl FileSink {
    /// A sink writing to `cfg.path`; every line carries its message id from `ids`.
    pub fn new(cfg: &FileSinkConfig, ids: MessageIds) -> Self {
        Self {
            template: cfg.path.to_string_lossy().into_owned(),
            max_file_bytes: cfg.max_file_bytes,
            max_files: cfg.max_files,
            ids,
            files: HashMap::new(),
            // A file is always reachable: announce readiness at once.
            events: VecDeque::from([SinkEvent::Ready]),
        }
    }

    fn path_for(&self, rule: &str) -> PathBuf {
        PathBuf::from(self.template.replace("{rule}", rule))
    }

    fn file(&mut self, path: &PathBuf) -> Result<&mut File, SinkError> {
        if !self.files.contains_key(path) {
            let io = |source| SinkError::Io {
                path: path.display().to_string(),
                source,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io)?;
            self.files.insert(path.clone(), f);
        }
        self.files.get_mut(path).ok_or(SinkError::NotConnected)
    }

    /// Starts a new file at `path` when `adding` more bytes would take it over the size
    /// limit: the current one becomes `<path>.1`, older ones move up, the oldest goes.
    fn roll_if_full(&mut self, path: &PathBuf, adding: usize) -> std::io::Result<()> {
        let Some(max) = self.max_file_bytes else {
            return Ok(());
        };
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if size == 0 || size + adding as u64 <= max {
            return Ok(());
        }
        self.files.remove(path);
        let rolled = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
        if self.max_files == 0 {
            return std::fs::remove_file(path);
        }
        let _ = std::fs::remove_file(rolled(self.max_files));
        for i in (1..self.max_files).rev() {
            if rolled(i).exists() {
                std::fs::rename(rolled(i), rolled(i + 1))?;
            }
        }
        std::fs::rename(path, rolled(1))
    }

    fn write(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        let mut by_path: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for m in msgs {
            let path = self.path_for(&m.rule);
            let buf = match by_path.iter_mut().find(|(p, _)| *p == path) {
                Some((_, b)) => b,
                None => {
                    by_path.push((path, Vec::new()));
                    &mut by_path.last_mut().ok_or(SinkError::NotConnected)?.1
                }
            };
            buf.extend_from_slice(&self.ids.stamp(&m.payload, m.seq));
            buf.push(b'\n');
        }
        for (path, buf) in by_path {
            let io = |source| SinkError::Io {
                path: path.display().to_string(),
                source,
            };
            self.roll_if_full(&path, buf.len()).map_err(io)?;
            let result = self
                .file(&path)?
                .write_all(&buf)
                .and_then(|_| self.files.get(&path).map_or(Ok(()), |f| f.sync_data()));
            if let Err(e) = result {
                // Reopen next time: the file may have been moved or the disk replaced.
                self.files.remove(&path);
                return Err(io(e));
            }
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn max_in_flight(&self) -> usize {
        4096
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        self.write(msgs)?;
        self.events
            .push_back(SinkEvent::Confirmed(msgs.iter().map(|m| m.seq).collect()));
        Ok(())
    }

    async fn next_event(&mut self) -> SinkEvent {
        // Nothing to retry: confirmations are all this sink reports after `Ready`.
        crate::sink::queued_event(&mut self.events, &mut None).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn msg(seq: u64, rule: &str, body: &str) -> Message {
        Message {
            seq,
            rule: Arc::from(rule),
            payload: Bytes::from(body.to_string()),
            commit_end: true,
        }
    }

    #[tokio::test]
    async fn appends_lines_per_rule_and_confirms_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileSinkConfig {
            path: dir.path().join("out/{rule}.jsonl"),
            max_file_bytes: None,
            max_files: 5,
        };
        let mut sink = FileSink::new(&cfg, MessageIds::new("gw", "local", 1));
        assert_eq!(sink.next_event().await, SinkEvent::Ready);
        sink.send(&[
            msg(1, "a", "{\"x\":1}"),
            msg(2, "b", "{\"y\":2}"),
            msg(3, "a", "{\"x\":3}"),
        ])
        .await
        .unwrap();
        assert_eq!(sink.next_event().await, SinkEvent::Confirmed(vec![1, 2, 3]));
        sink.send(&[msg(4, "a", "{\"x\":4}")]).await.unwrap();
        let a = std::fs::read_to_string(dir.path().join("out/a.jsonl")).unwrap();
        let b = std::fs::read_to_string(dir.path().join("out/b.jsonl")).unwrap();
        let id = |seq: u64| format!("gw/local/0000000000000001-{seq}");
        assert_eq!(
            a,
            format!(
                "{{\"_msg_id\":\"{}\",\"x\":1}}\n{{\"_msg_id\":\"{}\",\"x\":3}}\n{{\"_msg_id\":\"{}\",\"x\":4}}\n",
                id(1),
                id(3),
                id(4)
            )
        );
        assert_eq!(b, format!("{{\"_msg_id\":\"{}\",\"y\":2}}\n", id(2)));
    }

    #[tokio::test]
    async fn files_roll_at_their_size_limit_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileSinkConfig {
            path: dir.path().join("r.jsonl"),
            max_file_bytes: Some(150),
            max_files: 2,
        };
        let mut sink = FileSink::new(&cfg, MessageIds::new("gw", "local", 1));
        assert_eq!(sink.next_event().await, SinkEvent::Ready);
        // Each line is 48 or 49 bytes: three fit in 150.
        for seq in 1..=10 {
            sink.send(&[msg(seq, "r", &format!("{{\"x\":{seq}}}"))])
                .await
                .unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let xs = |text: String| -> Vec<i64> {
            text.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["x"]
                        .as_i64()
                        .unwrap()
                })
                .collect()
        };
        let line_len = r#"{"_msg_id":"gw/local/0000000000000001-1","x":1}"#.len() + 1;
        let per_file = 150 / line_len;
        assert_eq!(per_file, 3, "{line_len}-byte lines");
        assert_eq!(xs(read("r.jsonl")), [10]);
        assert_eq!(xs(read("r.jsonl.1")), [7, 8, 9]);
        assert_eq!(xs(read("r.jsonl.2")), [4, 5, 6]);
        assert!(
            !dir.path().join("r.jsonl.3").exists(),
            "only two rolled files kept"
        );
    }
}
