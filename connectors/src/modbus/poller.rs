//! Polling: runs one device's poll groups over its [`Line`], turns each poll into one
//! Arrow row with a value and a quality per tag, keeps the device's counters and its
//! degraded state, and performs writes to writable tags.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    StringArray, UInt16Array, UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_modbus::prelude::*;

use super::config::{Area, DeviceConfig, ModbusConfig, Tag, TagType, Transport};
use super::line::{ConnectFailure, Line, SharedLine};
use super::registers::{EncodeError, Value, WriteData, decode};
use super::requests::{ReadRequest, plan};
use crate::retry::backoff;

/// How a reading (or write) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// The device answered with the data asked for.
    Ok,
    /// No answer (or no connection) within the device's timeout.
    Timeout,
    /// The device answered with this Modbus exception code.
    Exception(u8),
    /// An answer came but was unusable: a bad CRC, a broken frame, or a response that
    /// does not match the request.
    BadFrame,
    /// The connection failed, was refused or is waiting out its reconnect backoff.
    IoError,
    /// Not asked: the device answered none of its last polls and is probed at the
    /// reconnect backoff, so that it does not hold a shared line for every poll.
    Offline,
}

impl Quality {
    /// The text in `<tag>_quality` columns: `ok`, `timeout`, `exception:<code>`,
    /// `bad_frame`, `io_error`, `offline`.
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Quality::Ok => "ok".into(),
            Quality::Timeout => "timeout".into(),
            Quality::Exception(c) => format!("exception:{c}").into(),
            Quality::BadFrame => "bad_frame".into(),
            Quality::IoError => "io_error".into(),
            Quality::Offline => "offline".into(),
        }
    }

    /// Whether the device answered at all (with data or an exception).
    fn answered(&self) -> bool {
        matches!(self, Quality::Ok | Quality::Exception(_))
    }
}

impl From<ConnectFailure> for Quality {
    fn from(f: ConnectFailure) -> Self {
        match f {
            ConnectFailure::Timeout => Quality::Timeout,
            ConnectFailure::Io => Quality::IoError,
        }
    }
}

/// Per-device counters, readable while the poller runs.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Poll cycles (rows) produced.
    pub polls: AtomicU64,
    /// Requests sent, retries included.
    pub requests: AtomicU64,
    /// Requests (retries and writes included) not answered within the timeout.
    pub errors_timeout: AtomicU64,
    /// Requests the device answered with a Modbus exception.
    pub errors_exception: AtomicU64,
    /// Answers with a bad CRC or frame, or not matching the request.
    pub errors_frame: AtomicU64,
    /// Requests that failed with an I/O error on the connection.
    pub errors_io: AtomicU64,
    /// Round trips of answered requests: sum in microseconds and count.
    pub latency_us_sum: AtomicU64,
    /// Answered requests whose round trips `latency_us_sum` adds up.
    pub latency_count: AtomicU64,
    /// Tag values written; a write of several tags counts each of them.
    pub writes: AtomicU64,
    /// Writes refused (not writable, out of range) or failed on the wire.
    pub write_errors: AtomicU64,
    /// Poll cycles in a row in which no request was answered.
    pub failed_cycles: AtomicU64,
    /// Polls not sent because the device is silent and its next probe is not due.
    pub skipped_polls: AtomicU64,
}

/// When a device that stopped answering is asked again.
#[derive(Debug, Default)]
struct Silence {
    /// Failed probes since it last answered.
    attempt: u32,
    /// The next poll that may go on the line; `None` while it answers.
    next_probe: Option<Instant>,
}

/// Errors building pollers or writing.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// The configuration is invalid (the message names the key), or a poll asked for a
    /// group the device does not have.
    #[error("Modbus config: {0}")]
    Config(String),
    /// The polled values could not be built into a row.
    #[error("building the row: {0}")]
    Arrow(#[from] ArrowError),
    /// A write names a tag the device does not have.
    #[error("device `{device}` has no tag `{tag}`")]
    UnknownTag {
        /// The device written to.
        device: String,
        /// The tag name asked for.
        tag: String,
    },
    /// A value was refused before anything was sent: tag not writable, wrong type or out
    /// of range.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A write request got no good answer: no connection, a timeout, a bad frame or an
    /// exception.
    #[error("write to `{tag}` failed: {}", quality.as_str())]
    WriteFailed {
        /// The tags the failed request carried, separated by `, `.
        tag: String,
        /// How the request went.
        quality: Quality,
    },
    /// Two tags of one write share a register, a bit or a coil.
    #[error("tags `{0}` and `{1}` overlap; one write cannot set both")]
    Overlap(String, String),
}

/// One poll of one group: a one-row batch of the group's schema.
#[derive(Debug, Clone)]
pub struct PollRow {
    /// The device's name.
    pub device: Arc<str>,
    /// The poll group's name.
    pub group: Arc<str>,
    /// The row, in the group's [`GroupPlan::schema`].
    pub batch: RecordBatch,
}

/// What a failed request says about the device.
fn failure_quality(e: &tokio_modbus::Error) -> Quality {
    match e {
        tokio_modbus::Error::Protocol(_) => Quality::BadFrame,
        tokio_modbus::Error::Transport(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Quality::BadFrame
        }
        tokio_modbus::Error::Transport(_) => Quality::IoError,
    }
}

/// One poll group, planned.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// The group's name (its `group` column).
    pub name: Arc<str>,
    /// Time between polls.
    pub interval: Duration,
    /// The resolved tags, in configuration order (the order of their columns).
    pub tags: Vec<Tag>,
    /// The read requests each poll sends, coalesced from the tags.
    pub reads: Vec<ReadRequest>,
    /// device, group, timestamp, then per tag its value and `<tag>_quality`.
    pub schema: SchemaRef,
    /// The `device` and `group` columns, the same in every row: built once, shared.
    constant: [ArrayRef; 2],
}

/// The Arrow type of a tag's column.
pub fn column_type(tag: &Tag) -> DataType {
    if tag.is_scaled() {
        return DataType::Float64;
    }
    match tag.kind {
        TagType::Bool | TagType::Bit => DataType::Boolean,
        TagType::U16 => DataType::UInt16,
        TagType::I16 => DataType::Int16,
        TagType::U32 => DataType::UInt32,
        TagType::I32 => DataType::Int32,
        TagType::U64 => DataType::UInt64,
        TagType::I64 => DataType::Int64,
        TagType::F32 => DataType::Float32,
        TagType::F64 => DataType::Float64,
        TagType::String => DataType::Utf8,
    }
}

fn group_schema(tags: &[Tag]) -> SchemaRef {
    let mut fields = vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("timestamp", DataType::Int64, false),
    ];
    for t in tags {
        fields.push(Field::new(&t.name, column_type(t), true));
        fields.push(Field::new(
            format!("{}_quality", t.name),
            DataType::Utf8,
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// A one-row column holding `v` (null when absent or of another type).
fn column(ty: &DataType, v: Option<Value>) -> ArrayRef {
    // A present value needs no null bitmap: one buffer, one allocation.
    macro_rules! one {
        ($arr:ty) => {
            |x| Arc::new(<$arr>::from_value(x, 1)) as ArrayRef
        };
    }
    let present: Option<ArrayRef> = match (ty, v) {
        (DataType::Boolean, Some(Value::Bool(b))) => Some(Arc::new(BooleanArray::from(vec![b]))),
        (DataType::UInt16, Some(Value::U16(x))) => Some(one!(UInt16Array)(x)),
        (DataType::Int16, Some(Value::I16(x))) => Some(one!(Int16Array)(x)),
        (DataType::UInt32, Some(Value::U32(x))) => Some(one!(UInt32Array)(x)),
        (DataType::Int32, Some(Value::I32(x))) => Some(one!(Int32Array)(x)),
        (DataType::UInt64, Some(Value::U64(x))) => Some(one!(UInt64Array)(x)),
        (DataType::Int64, Some(Value::I64(x))) => Some(one!(Int64Array)(x)),
        (DataType::Float32, Some(Value::F32(x))) => Some(one!(Float32Array)(x)),
        (DataType::Float64, Some(Value::F64(x))) => Some(one!(Float64Array)(x)),
        (DataType::Utf8, Some(Value::Str(x))) => Some(Arc::new(StringArray::from(vec![x]))),
        _ => None,
    };
    present.unwrap_or_else(|| new_null_array(ty, 1))
}

/// One-row quality columns: each distinct quality built once per poll and shared by
/// the tags that have it (most often every tag is `ok`).
#[derive(Default)]
struct QualityColumns(Vec<(Quality, ArrayRef)>);

impl QualityColumns {
    fn get(&mut self, q: Quality) -> ArrayRef {
        if let Some((_, col)) = self.0.iter().find(|(have, _)| *have == q) {
            return col.clone();
        }
        let col: ArrayRef = Arc::new(StringArray::from(vec![q.as_str().as_ref()]));
        self.0.push((q, col.clone()));
        col
    }
}

/// Data of an answered read.
enum ReadData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// Polls the groups of one device (one unit id) over a possibly shared line.
#[derive(Debug)]
pub struct DevicePoller {
    name: Arc<str>,
    unit_id: u8,
    timeout: Duration,
    retries: u32,
    degraded_after: u64,
    line: SharedLine,
    groups: Vec<GroupPlan>,
    counters: Arc<DeviceCounters>,
    degraded: AtomicBool,
    reconnect_min: Duration,
    reconnect_max: Duration,
    silence: std::sync::Mutex<Silence>,
}

impl DevicePoller {
    /// A poller for `cfg` on `line` (see [`pollers`] to share serial lines).
    pub fn new(cfg: &DeviceConfig, line: SharedLine) -> Result<Self, ModbusError> {
        let tag_groups = cfg.validate().map_err(ModbusError::Config)?;
        let groups = cfg
            .groups
            .iter()
            .zip(tag_groups)
            .map(|(g, tags)| GroupPlan {
                name: g.name.as_str().into(),
                interval: g.interval,
                reads: plan(&tags, g.max_gap.unwrap_or(cfg.max_gap)),
                schema: group_schema(&tags),
                constant: [
                    Arc::new(StringArray::from(vec![cfg.name.as_str()])),
                    Arc::new(StringArray::from(vec![g.name.as_str()])),
                ],
                tags,
            })
            .collect();
        Ok(DevicePoller {
            name: cfg.name.as_str().into(),
            unit_id: cfg.unit_id,
            timeout: cfg.timeout,
            retries: cfg.retries,
            degraded_after: cfg.degraded_after.into(),
            line,
            groups,
            counters: Arc::default(),
            degraded: AtomicBool::new(false),
            reconnect_min: cfg.reconnect_min,
            reconnect_max: cfg.reconnect_max,
            silence: std::sync::Mutex::default(),
        })
    }

    fn silence(&self) -> std::sync::MutexGuard<'_, Silence> {
        self.silence.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the poll due now goes on the line: always while the device answers; once
    /// it is silent, only when its next probe is due (then as a probe: no retries).
    fn may_ask(&self) -> Option<bool> {
        match self.silence().next_probe {
            None => Some(false),
            Some(at) if Instant::now() >= at => Some(true),
            Some(_) => None,
        }
    }

    /// Records whether a poll that went on the line was answered.
    fn answered(&self, answered: bool) {
        let mut s = self.silence();
        if answered {
            *s = Silence::default();
        } else {
            s.next_probe =
                Some(Instant::now() + backoff(s.attempt, self.reconnect_min, self.reconnect_max));
            s.attempt = s.attempt.saturating_add(1);
        }
    }

    /// A poller with a line of its own.
    pub fn standalone(cfg: &DeviceConfig) -> Result<Self, ModbusError> {
        let line = Line::new(cfg.transport.clone(), cfg.reconnect_min, cfg.reconnect_max);
        Self::new(cfg, line.shared())
    }

    /// The device's name (its `device` column).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The planned groups, in configuration order.
    pub fn groups(&self) -> &[GroupPlan] {
        &self.groups
    }

    /// The device's counters, readable while it polls.
    pub fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }

    /// Whether the last `degraded_after` (or more) poll cycles all failed.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Sends one request, retrying timeouts and I/O errors; as a `probe` of a silent
    /// device, once and connecting at once.
    async fn read(
        &self,
        line: &mut Line,
        req: &ReadRequest,
        probe: bool,
    ) -> (Quality, Option<ReadData>) {
        let mut quality = Quality::IoError;
        let retries = if probe { 0 } else { self.retries };
        for _ in 0..=retries {
            let received = line.bytes_received();
            let ctx = match line.context(self.timeout, probe).await {
                Ok(ctx) => ctx,
                // No connection: further attempts would only wait for the backoff.
                Err(f) => {
                    let q = f.into();
                    self.count_failure(q);
                    return (q, None);
                }
            };
            ctx.set_slave(Slave(self.unit_id));
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let (start, count) = (req.start, req.count);
            let answer = tokio::time::timeout(self.timeout, async {
                match req.area {
                    Area::Coil => ctx
                        .read_coils(start, count)
                        .await
                        .map(|r| r.map(ReadData::Bits)),
                    Area::DiscreteInput => ctx
                        .read_discrete_inputs(start, count)
                        .await
                        .map(|r| r.map(ReadData::Bits)),
                    Area::HoldingRegister => ctx
                        .read_holding_registers(start, count)
                        .await
                        .map(|r| r.map(ReadData::Registers)),
                    Area::InputRegister => ctx
                        .read_input_registers(start, count)
                        .await
                        .map(|r| r.map(ReadData::Registers)),
                }
            })
            .await;
            let gap = line.frame_gap();
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            match answer {
                Ok(Ok(answer)) => {
                    self.record_latency(sent);
                    return match answer {
                        Ok(data) => (Quality::Ok, Some(data)),
                        Err(exc) => {
                            self.counters
                                .errors_exception
                                .fetch_add(1, Ordering::Relaxed);
                            (Quality::Exception(exc.into()), None)
                        }
                    };
                }
                Ok(Err(e)) => {
                    tracing::debug!(device = %self.name, error = %e, "Modbus request failed");
                    quality = failure_quality(&e);
                }
                // Bytes that came and made no frame: a garbled answer, not silence.
                Err(_) if line.bytes_received() != received => quality = Quality::BadFrame,
                Err(_) => quality = Quality::Timeout,
            }
            self.count_failure(quality);
            // A late or garbled answer would confuse the next request: start afresh.
            line.reset();
        }
        (quality, None)
    }

    fn count_failure(&self, q: Quality) {
        let c = &self.counters;
        let counter = match q {
            Quality::Ok => return,
            Quality::Timeout => &c.errors_timeout,
            Quality::Exception(_) => &c.errors_exception,
            Quality::BadFrame => &c.errors_frame,
            Quality::IoError | Quality::Offline => &c.errors_io,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record_latency(&self, sent: Instant) {
        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters
            .latency_us_sum
            .fetch_add(us, Ordering::Relaxed);
        self.counters.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Polls group `group` (an index into [`Self::groups`]) once and returns its row. The
    /// row goes out whatever the device did; qualities say what happened.
    pub async fn poll(&self, group: usize) -> Result<RecordBatch, ModbusError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| ModbusError::Config(format!("no group {group}")))?;
        let mut values: Vec<Option<Value>> = vec![None; g.tags.len()];
        let mut qualities: Vec<Quality> = vec![Quality::IoError; g.tags.len()];
        let mut answered = false;
        let mut line = match self.may_ask() {
            Some(_) => Some(self.line.lock().await),
            None => None,
        };
        // Asked again with the line held: while this poll waited for it, another group's
        // probe may have ended the silence, or failed and moved the next probe on.
        let probe = match (&line, self.may_ask()) {
            (Some(_), Some(probe)) => Some(probe),
            _ => None,
        };
        if let (Some(line), Some(probe)) = (line.as_mut(), probe) {
            let mut silent: Option<Quality> = None;
            for req in &g.reads {
                // After a request that got no answer at all, the rest of the poll is not
                // sent: each would hold the line for the whole timeout again.
                let (q, data) = match silent {
                    Some(q) => (q, None),
                    None => self.read(line, req, probe).await,
                };
                if matches!(q, Quality::Timeout | Quality::IoError) {
                    silent = Some(q);
                }
                answered |= q.answered();
                for &i in &req.tags {
                    let tag = &g.tags[i];
                    let off = usize::from(tag.address - req.start);
                    qualities[i] = q;
                    values[i] = match &data {
                        Some(ReadData::Bits(bits)) => bits.get(off).map(|&b| Value::Bool(b)),
                        Some(ReadData::Registers(regs)) => {
                            regs.get(off..).and_then(|r| decode(tag, r))
                        }
                        None => None,
                    };
                    if q == Quality::Ok && values[i].is_none() {
                        // The device sent fewer registers than asked for.
                        qualities[i] = Quality::IoError;
                    }
                }
            }
            self.answered(answered);
        } else {
            qualities.iter_mut().for_each(|q| *q = Quality::Offline);
            self.counters.skipped_polls.fetch_add(1, Ordering::Relaxed);
        }
        drop(line);
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        if answered {
            self.counters.failed_cycles.store(0, Ordering::Relaxed);
            self.degraded.store(false, Ordering::Relaxed);
        } else {
            let n = self.counters.failed_cycles.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= self.degraded_after && !self.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(device = %self.name, failed_cycles = n, "Modbus device degraded");
            }
        }
        let ts = crate::now_millis();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(3 + 2 * g.tags.len());
        cols.extend(g.constant.iter().cloned());
        cols.push(Arc::new(Int64Array::from_value(ts, 1)));
        let mut quality_cols = QualityColumns::default();
        for ((tag, v), q) in g.tags.iter().zip(values).zip(qualities) {
            cols.push(column(&column_type(tag), v));
            cols.push(quality_cols.get(q));
        }
        Ok(RecordBatch::try_new(g.schema.clone(), cols)?)
    }

    /// Writes `value` (in engineering units) to the tag named `tag`; see [`Self::write_all`].
    pub async fn write(&self, tag: &str, value: &Value) -> Result<(), ModbusError> {
        self.write_all(&[(tag, value.clone())]).await
    }

    /// Writes several tags of this device, as one rule result asks: adjacent coils go
    /// in one request (function code 15, or 5 for a single coil), adjacent registers in
    /// one request (16, or 6 for a single register), and `bit` tags by reading their
    /// register and writing it back with the bits changed (3 then 6). Every value is
    /// checked first (tag known and writable, value of the tag's type and in range); if
    /// one is refused, nothing is sent. Requests go out in address order; the first
    /// that fails ends the write.
    pub async fn write_all<S: AsRef<str> + Sync>(
        &self,
        writes: &[(S, Value)],
    ) -> Result<(), ModbusError> {
        let result = self.try_write_all(writes).await;
        let counter = match result {
            Ok(()) => &self.counters.writes,
            Err(_) => &self.counters.write_errors,
        };
        counter.fetch_add(writes.len() as u64, Ordering::Relaxed);
        result
    }

    fn tag(&self, name: &str) -> Result<&Tag, ModbusError> {
        self.groups
            .iter()
            .flat_map(|g| &g.tags)
            .find(|t| t.name == name)
            .ok_or_else(|| ModbusError::UnknownTag {
                device: self.name.to_string(),
                tag: name.into(),
            })
    }

    async fn try_write_all<S: AsRef<str> + Sync>(
        &self,
        writes: &[(S, Value)],
    ) -> Result<(), ModbusError> {
        let mut planned = Vec::with_capacity(writes.len());
        for (name, value) in writes {
            let tag = self.tag(name.as_ref())?;
            let data = match tag.kind {
                TagType::Bit => {
                    if !tag.writable {
                        return Err(EncodeError::NotWritable(tag.name.clone()).into());
                    }
                    match value {
                        Value::Bool(b) => WriteData::Bit(tag.bit, *b),
                        other => {
                            return Err(EncodeError::WrongType {
                                tag: tag.name.clone(),
                                value: format!("{other:?}"),
                                kind: tag.kind,
                            }
                            .into());
                        }
                    }
                }
                _ => super::registers::encode(tag, value)?,
            };
            planned.push((tag, data));
        }
        let ops = write_ops(planned)?;
        let mut line = self.line.lock().await;
        for op in &ops {
            self.send_write(&mut line, op)
                .await
                .map_err(|quality| ModbusError::WriteFailed {
                    tag: op.tags.join(", "),
                    quality,
                })?;
        }
        Ok(())
    }

    /// Sends one write request (two for a read-modify-write) and waits for its answer.
    async fn send_write(&self, line: &mut Line, op: &WriteOp) -> Result<(), Quality> {
        let received = line.bytes_received();
        let ctx = line
            .context(self.timeout, false)
            .await
            .map_err(Quality::from)?;
        ctx.set_slave(Slave(self.unit_id));
        let sent = Instant::now();
        let addr = op.address;
        let requests = if matches!(op.kind, WriteKind::Bits { .. }) {
            2
        } else {
            1
        };
        self.counters
            .requests
            .fetch_add(requests, Ordering::Relaxed);
        let answer = tokio::time::timeout(self.timeout * requests as u32, async {
            match &op.kind {
                WriteKind::Coils(c) if c.len() == 1 => ctx.write_single_coil(addr, c[0]).await,
                WriteKind::Coils(c) => ctx.write_multiple_coils(addr, c).await,
                WriteKind::Registers(r) if r.len() == 1 => {
                    ctx.write_single_register(addr, r[0]).await
                }
                WriteKind::Registers(r) => ctx.write_multiple_registers(addr, r).await,
                WriteKind::Bits { set, clear } => {
                    let old = match ctx.read_holding_registers(addr, 1).await? {
                        Ok(regs) => regs.first().copied().ok_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "no register")
                        })?,
                        Err(exc) => return Ok(Err(exc)),
                    };
                    ctx.write_single_register(addr, (old & !clear) | set).await
                }
            }
        })
        .await;
        let gap = line.frame_gap();
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let quality = match answer {
            Ok(Ok(Ok(()))) => {
                self.record_latency(sent);
                return Ok(());
            }
            Ok(Ok(Err(exc))) => {
                self.record_latency(sent);
                let q = Quality::Exception(exc.into());
                self.count_failure(q);
                return Err(q);
            }
            Ok(Err(e)) => failure_quality(&e),
            Err(_) if line.bytes_received() != received => Quality::BadFrame,
            Err(_) => Quality::Timeout,
        };
        self.count_failure(quality);
        line.reset();
        Err(quality)
    }

    /// Polls every group at its interval and sends each row to `rows`, until `shutdown`
    /// turns true or the receiver goes away. Groups run concurrently and take turns on
    /// the line.
    pub async fn run(
        self: Arc<Self>,
        rows: mpsc::Sender<PollRow>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.groups.len() {
            let (me, rows, mut shutdown) = (self.clone(), rows.clone(), shutdown.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(me.groups[i].interval);
                // A poll that waited for a busy line costs the one tick it overran, and
                // the group keeps its cadence.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    match me.poll(i).await {
                        Ok(batch) => {
                            let row = PollRow {
                                device: me.name.clone(),
                                group: me.groups[i].name.clone(),
                                batch,
                            };
                            if rows.send(row).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::error!(device = %me.name, error = %e, "Modbus poll"),
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// One write request (or read-modify-write) and the tags it carries.
#[derive(Debug, PartialEq)]
struct WriteOp {
    address: u16,
    kind: WriteKind,
    tags: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum WriteKind {
    Coils(Vec<bool>),
    Registers(Vec<u16>),
    /// Bits of one holding register to set and to clear.
    Bits {
        set: u16,
        clear: u16,
    },
}

/// Joins encoded writes into the fewest requests: runs of adjacent coils, runs of
/// adjacent registers, and the bits of each register. Overlapping tags are refused.
fn write_ops(mut planned: Vec<(&Tag, WriteData)>) -> Result<Vec<WriteOp>, ModbusError> {
    planned.sort_by_key(|(t, d)| (matches!(d, WriteData::Bit(..)), t.area, t.address));
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut last: Option<(&Tag, u32)> = None;
    for (tag, data) in planned {
        let width = match &data {
            WriteData::Registers(r) => r.len() as u32,
            _ => 1,
        };
        let end = u32::from(tag.address) + width;
        if let Some((prev, prev_end)) = last
            && prev.area == tag.area
            && u32::from(tag.address) < prev_end
            && !matches!(data, WriteData::Bit(..))
        {
            return Err(ModbusError::Overlap(prev.name.clone(), tag.name.clone()));
        }
        let joined = match (ops.last_mut(), &data) {
            (Some(op), WriteData::Coil(b)) => match &mut op.kind {
                WriteKind::Coils(c)
                    if tag.area == Area::Coil
                        && u32::from(op.address) + c.len() as u32 == u32::from(tag.address)
                        && c.len() < usize::from(MAX_WRITE_COILS) =>
                {
                    c.push(*b);
                    op.tags.push(tag.name.clone());
                    true
                }
                _ => false,
            },
            (Some(op), WriteData::Registers(r)) => match &mut op.kind {
                WriteKind::Registers(regs)
                    if u32::from(op.address) + regs.len() as u32 == u32::from(tag.address)
                        && regs.len() + r.len() <= usize::from(MAX_WRITE_REGISTERS) =>
                {
                    regs.extend_from_slice(r);
                    op.tags.push(tag.name.clone());
                    true
                }
                _ => false,
            },
            (Some(op), WriteData::Bit(bit, on)) => match &mut op.kind {
                WriteKind::Bits { set, clear } if op.address == tag.address => {
                    let mask = 1u16 << bit;
                    if (*set | *clear) & mask != 0 {
                        return Err(ModbusError::Overlap(
                            op.tags.last().cloned().unwrap_or_default(),
                            tag.name.clone(),
                        ));
                    }
                    if *on {
                        *set |= mask;
                    } else {
                        *clear |= mask;
                    }
                    op.tags.push(tag.name.clone());
                    true
                }
                _ => false,
            },
            (None, _) => false,
        };
        if !joined {
            let kind = match data {
                WriteData::Coil(b) => WriteKind::Coils(vec![b]),
                WriteData::Registers(r) => WriteKind::Registers(r),
                WriteData::Bit(bit, on) => {
                    let mask = 1u16 << bit;
                    WriteKind::Bits {
                        set: if on { mask } else { 0 },
                        clear: if on { 0 } else { mask },
                    }
                }
            };
            ops.push(WriteOp {
                address: tag.address,
                kind,
                tags: vec![tag.name.clone()],
            });
        }
        last = Some((tag, end));
    }
    Ok(ops)
}

/// Coils one write request may set (function code 15).
const MAX_WRITE_COILS: u16 = 1968;
/// Registers one write request may set (function code 16).
const MAX_WRITE_REGISTERS: u16 = 123;

/// Pollers for every device of `cfg`; devices on the same serial port share one line
/// (and must agree on its settings), so their requests take turns.
pub fn pollers(cfg: &ModbusConfig) -> Result<Vec<DevicePoller>, ModbusError> {
    cfg.validate().map_err(ModbusError::Config)?;
    let mut serial: HashMap<String, (Transport, SharedLine)> = HashMap::new();
    let mut out = Vec::with_capacity(cfg.devices.len());
    for d in &cfg.devices {
        let line = match &d.transport {
            Transport::Tcp { .. } => {
                Line::new(d.transport.clone(), d.reconnect_min, d.reconnect_max).shared()
            }
            Transport::Rtu { path, .. } => match serial.get(path) {
                Some((t, line)) if *t == d.transport => line.clone(),
                Some(_) => {
                    return Err(ModbusError::Config(format!(
                        "device `{}`: serial port `{path}` is configured differently by another device",
                        d.name
                    )));
                }
                None => {
                    let line =
                        Line::new(d.transport.clone(), d.reconnect_min, d.reconnect_max).shared();
                    serial.insert(path.clone(), (d.transport.clone(), line.clone()));
                    line
                }
            },
        };
        out.push(DevicePoller::new(d, line)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose port refuses connections, probed 50 ms to 400 ms apart.
    fn dead_device() -> DevicePoller {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let cfg: ModbusConfig = toml::from_str(&format!(
            r#"
            [[devices]]
            name = "gone"
            transport = {{ type = "tcp", host = "127.0.0.1", port = {port} }}
            reconnect_min = "50ms"
            reconnect_max = "400ms"
            [[devices.groups]]
            name = "g"
            interval = "20ms"
            tags = [{{ name = "x", register = 40001 }}]
            "#
        ))
        .unwrap();
        DevicePoller::standalone(&cfg.devices[0]).unwrap()
    }

    #[tokio::test]
    async fn a_silent_device_is_probed_at_most_reconnect_max_apart_and_skipped_between() {
        let p = dead_device();
        let start = Instant::now();
        let mut probes = Vec::new();
        while start.elapsed() < Duration::from_secs(4) {
            let before = p.counters().skipped_polls.load(Ordering::Relaxed);
            let row = p.poll(0).await.unwrap();
            let skipped = p.counters().skipped_polls.load(Ordering::Relaxed) > before;
            let q = row
                .column_by_name("x_quality")
                .map(|c| {
                    datafusion::arrow::array::AsArray::as_string::<i32>(c)
                        .value(0)
                        .to_string()
                })
                .unwrap();
            if skipped {
                assert_eq!(q, "offline");
            } else {
                assert!(q == "io_error" || q == "timeout", "{q}");
                probes.push(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Backing off: far fewer probes than polls...
        let polls = p.counters().polls.load(Ordering::Relaxed) as usize;
        assert!(
            probes.len() > 6 && probes.len() * 4 < polls,
            "{} probes in {polls} polls",
            probes.len()
        );
        // ...but never more than reconnect_max apart (plus a poll and some slack), so a
        // device back after an outage is read again within that.
        let widest = probes.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            widest <= Duration::from_millis(600),
            "probes {widest:?} apart"
        );
        // Each probe is one counted failure; skipped polls are counted apart.
        let c = p.counters();
        let failures =
            c.errors_io.load(Ordering::Relaxed) + c.errors_timeout.load(Ordering::Relaxed);
        assert_eq!(failures, probes.len() as u64);
        assert!(p.is_degraded());
    }

    #[test]
    fn a_device_back_after_an_outage_is_probed_within_seconds_by_default() {
        let cfg: ModbusConfig = toml::from_str(
            "[[devices]]\nname = 'd'\ntransport = { type = 'tcp', host = 'h' }\n\
             [[devices.groups]]\nname = 'g'\ninterval = '1s'\ntags = [{ name = 'x', register = 40001 }]\n",
        )
        .unwrap();
        assert!(cfg.devices[0].reconnect_max <= Duration::from_secs(5));
    }
}
