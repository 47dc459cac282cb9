//! Polling: runs one device's poll groups over its [`Line`], turns each poll into one
//! Arrow row with a value and a quality per tag, keeps the device's counters and its
//! degraded state, and performs writes to writable tags.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    StringArray, UInt16Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_modbus::prelude::*;

use super::config::{Area, DeviceConfig, ModbusConfig, Tag, TagType, Transport};
use super::decode::{EncodeError, Value, WriteData, decode};
use super::line::{ConnectFailure, Line, SharedLine};
use super::plan::{ReadRequest, plan};

/// How a reading (or write) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Ok,
    /// No answer (or no connection) within the device's timeout.
    Timeout,
    /// The device answered with this Modbus exception code.
    Exception(u8),
    /// The connection failed, was refused or is waiting out its reconnect backoff, or the
    /// answer was malformed.
    IoError,
}

impl Quality {
    /// The text in `<tag>_quality` columns: `ok`, `timeout`, `exception:<code>`, `io_error`.
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Quality::Ok => "ok".into(),
            Quality::Timeout => "timeout".into(),
            Quality::Exception(c) => format!("exception:{c}").into(),
            Quality::IoError => "io_error".into(),
        }
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
    pub errors_timeout: AtomicU64,
    pub errors_exception: AtomicU64,
    pub errors_io: AtomicU64,
    /// Round trips of answered requests: sum in microseconds and count.
    pub latency_us_sum: AtomicU64,
    pub latency_count: AtomicU64,
    pub writes: AtomicU64,
    /// Writes refused (not writable, out of range) or failed on the wire.
    pub write_errors: AtomicU64,
    /// Poll cycles in a row in which no request was answered.
    pub failed_cycles: AtomicU64,
}

/// Errors building pollers or writing.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("Modbus config: {0}")]
    Config(String),
    #[error("building the row: {0}")]
    Arrow(#[from] ArrowError),
    #[error("device `{device}` has no tag `{tag}`")]
    UnknownTag { device: String, tag: String },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("write to `{tag}` failed: {}", quality.as_str())]
    WriteFailed { tag: String, quality: Quality },
}

/// One poll group, planned.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub name: Arc<str>,
    pub interval: Duration,
    pub tags: Vec<Tag>,
    pub reads: Vec<ReadRequest>,
    /// device, group, timestamp, then per tag its value and `<tag>_quality`.
    pub schema: SchemaRef,
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
    macro_rules! one {
        ($arr:ty, $variant:ident) => {
            Arc::new(<$arr>::from(vec![match v {
                Some(Value::$variant(x)) => Some(x),
                _ => None,
            }])) as ArrayRef
        };
    }
    match ty {
        DataType::Boolean => one!(BooleanArray, Bool),
        DataType::UInt16 => one!(UInt16Array, U16),
        DataType::Int16 => one!(Int16Array, I16),
        DataType::UInt32 => one!(UInt32Array, U32),
        DataType::Int32 => one!(Int32Array, I32),
        DataType::UInt64 => one!(UInt64Array, U64),
        DataType::Int64 => one!(Int64Array, I64),
        DataType::Float32 => one!(Float32Array, F32),
        DataType::Float64 => one!(Float64Array, F64),
        _ => one!(StringArray, Str),
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
        })
    }

    /// A poller with a line of its own.
    pub fn standalone(cfg: &DeviceConfig) -> Result<Self, ModbusError> {
        let line = Line::new(cfg.transport.clone(), cfg.reconnect_min, cfg.reconnect_max);
        Self::new(cfg, line.shared())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The planned groups, in configuration order.
    pub fn groups(&self) -> &[GroupPlan] {
        &self.groups
    }

    pub fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }

    /// Whether the last `degraded_after` (or more) poll cycles all failed.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Sends one request, retrying timeouts and I/O errors.
    async fn read(&self, line: &mut Line, req: &ReadRequest) -> (Quality, Option<ReadData>) {
        let mut quality = Quality::IoError;
        for _ in 0..=self.retries {
            let ctx = match line.context(self.timeout).await {
                Ok(ctx) => ctx,
                // No connection: further attempts would only wait for the backoff.
                Err(f) => return (f.into(), None),
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
                    self.counters.errors_io.fetch_add(1, Ordering::Relaxed);
                    quality = Quality::IoError;
                }
                Err(_) => {
                    self.counters.errors_timeout.fetch_add(1, Ordering::Relaxed);
                    quality = Quality::Timeout;
                }
            }
            // A late or garbled answer would confuse the next request: start afresh.
            line.reset();
        }
        (quality, None)
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
        {
            let mut line = self.line.lock().await;
            for req in &g.reads {
                let (q, data) = self.read(&mut line, req).await;
                answered |= matches!(q, Quality::Ok | Quality::Exception(_));
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
        }
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
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(3 + 2 * g.tags.len());
        cols.push(Arc::new(StringArray::from(vec![&*self.name])));
        cols.push(Arc::new(StringArray::from(vec![&*g.name])));
        cols.push(Arc::new(Int64Array::from(vec![ts])));
        for ((tag, v), q) in g.tags.iter().zip(values).zip(qualities) {
            cols.push(column(&column_type(tag), v));
            cols.push(Arc::new(StringArray::from(vec![q.as_str().as_ref()])));
        }
        Ok(RecordBatch::try_new(g.schema.clone(), cols)?)
    }

    /// Writes `value` (in engineering units) to the tag named `tag`: function code 5 for a
    /// coil, 6 for a one-register value, 16 for longer ones. Non-writable tags and values
    /// that do not fit are refused before anything is sent.
    pub async fn write(&self, tag: &str, value: &Value) -> Result<(), ModbusError> {
        let result = self.try_write(tag, value).await;
        let counter = match result {
            Ok(()) => &self.counters.writes,
            Err(_) => &self.counters.write_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_write(&self, name: &str, value: &Value) -> Result<(), ModbusError> {
        let tag = self
            .groups
            .iter()
            .flat_map(|g| &g.tags)
            .find(|t| t.name == name)
            .ok_or_else(|| ModbusError::UnknownTag {
                device: self.name.to_string(),
                tag: name.into(),
            })?;
        let data = super::decode::encode(tag, value)?;
        let failed = |quality| ModbusError::WriteFailed {
            tag: name.into(),
            quality,
        };
        let mut line = self.line.lock().await;
        let ctx = line
            .context(self.timeout)
            .await
            .map_err(|f| failed(f.into()))?;
        ctx.set_slave(Slave(self.unit_id));
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let addr = tag.address;
        let answer = tokio::time::timeout(self.timeout, async {
            match &data {
                WriteData::Coil(b) => ctx.write_single_coil(addr, *b).await,
                WriteData::Registers(r) if r.len() == 1 => {
                    ctx.write_single_register(addr, r[0]).await
                }
                WriteData::Registers(r) => ctx.write_multiple_registers(addr, r).await,
            }
        })
        .await;
        let gap = line.frame_gap();
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        match answer {
            Ok(Ok(Ok(()))) => {
                self.record_latency(sent);
                Ok(())
            }
            Ok(Ok(Err(exc))) => {
                self.record_latency(sent);
                self.counters
                    .errors_exception
                    .fetch_add(1, Ordering::Relaxed);
                Err(failed(Quality::Exception(exc.into())))
            }
            Ok(Err(_)) => {
                self.counters.errors_io.fetch_add(1, Ordering::Relaxed);
                line.reset();
                Err(failed(Quality::IoError))
            }
            Err(_) => {
                self.counters.errors_timeout.fetch_add(1, Ordering::Relaxed);
                line.reset();
                Err(failed(Quality::Timeout))
            }
        }
    }

    /// Polls every group at its interval and sends each row to `rows`, until `shutdown`
    /// turns true or the receiver goes away. Groups run concurrently and take turns on
    /// the line.
    pub async fn run(
        self: Arc<Self>,
        rows: mpsc::Sender<RecordBatch>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.groups.len() {
            let (me, rows, mut shutdown) = (self.clone(), rows.clone(), shutdown.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(me.groups[i].interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    match me.poll(i).await {
                        Ok(row) => {
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
