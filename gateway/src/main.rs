//! The `fieldgate` command line: `run` starts the gateway; `rules check` and
//! `rules test` are the rule author's tools.

use fieldgate::{app, config, logging, opcua_cli, rules_cli};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "fieldgate",
    version,
    about = "IoT edge gateway: MQTT broker, SQL rules, store-and-forward uplink"
)]
struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// TOML config file; without it the embedded default config is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and its rules without running them: exits non-zero with
    /// the errors (`file:line:col: message` for rules). It also checks, as `run` does at
    /// start, that the listen ports are free and the serial devices exist.
    Validate {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The config runs on another machine (CI, GitOps): skip the checks only that
        /// machine can answer (free ports, serial devices, the files the config names).
        #[arg(long)]
        offline: bool,
    },
    /// Check or test SQL rule files offline.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Generate load: simulated sensors publishing JSON readings over MQTT.
    Simulate(SimulateArgs),
    /// Browse OPC UA servers and trust their certificates.
    #[command(subcommand)]
    Opcua(OpcuaCommand),
    /// Set a user's password in the broker's password file (argon2id; created if
    /// missing). The password is asked for on the terminal, or read as one line from
    /// standard input when that is not a terminal.
    Passwd {
        /// The password file (`broker.password_file`).
        file: PathBuf,
        user: String,
    },
    /// GET a path of the admin endpoint and exit 0 on a 200 answer: the container
    /// image's health check, which has no shell or HTTP client to do it.
    Probe {
        /// The admin endpoint's address; without it, `FIELDGATE_PROBE_ADDR`, else
        /// 127.0.0.1:9180.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// The path to GET.
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// How long connecting and the answer may take.
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Simulated devices, each on its own topic.
    #[arg(long, default_value_t = 100)]
    devices: u32,
    /// MQTT connections the devices share.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Messages per second in all; 0 for as fast as the broker takes them.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Stop after this many messages (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this long (`30s`, `5m`); 0 for no limit. One of the two must be set.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// MQTT QoS: 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Topic; `{device}` becomes the device's name (`dev-<n>`).
    #[arg(long, default_value = "sensors/{device}/telemetry")]
    topic: String,
    /// Extra numeric fields per payload (`f0`, `f1`, ...), for larger messages.
    #[arg(long, default_value_t = 0)]
    fields: u32,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum OpcuaCommand {
    /// Print a server's address space: NodeId, browse name, node class and, for
    /// variables, the `type` to configure and the access level.
    Browse(opcua_cli::BrowseArgs),
    /// Trust a server certificate the gateway refused (a file name in
    /// `<data_dir>/opcua/pki/rejected`, or a path); without one, list the refused ones.
    Trust {
        /// The certificate.
        cert: Option<PathBuf>,
        /// The gateway's config (for `data_dir`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Parse and plan every stream and rule; report errors as file:line:col.
    Check {
        /// Rule files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also check the rules against this config: the sinks they name, and the
        /// Modbus and OPC UA groups their streams read.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the rules over recorded events; print the results or compare them, and a
    /// summary (rows in and out, rejected, late). Fails on rejected input lines and rule
    /// errors unless --allow-rejects.
    Test {
        /// Rule files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Events, one JSON object per line: a payload, or {"topic": ..., "payload": ...}.
        #[arg(long)]
        input: PathBuf,
        /// Only this rule's results.
        #[arg(long)]
        rule: Option<String>,
        /// The stream that bare payload lines belong to (when there are several).
        #[arg(long)]
        stream: Option<String>,
        /// Expected results (JSON lines as printed); exit 1 with a diff when they differ.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Exit 0 although input lines were rejected or rules failed on some rows
        /// (without it, either fails the run).
        #[arg(long)]
        allow_rejects: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The gateway reports through its log (text or JSON, as configured).
        Command::Run { config } => {
            let cfg = match &config {
                Some(path) => config::Config::load(path),
                None => config::Config::embedded(),
            };
            let level = cfg.as_ref().map_or("info", |c| c.log.level.as_str());
            init_logging(cli.log_format, level);
            match cfg.and_then(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config, offline } => {
            init_logging(cli.log_format, "warn");
            exit_code(validate(&config, offline))
        }
        // The rule author's tools talk to a terminal or a CI log.
        Command::Rules(cmd) => {
            init_logging(cli.log_format, "warn");
            exit_code(rules(cmd))
        }
        Command::Passwd { file, user } => {
            init_logging(cli.log_format, "warn");
            exit_code(passwd(&file, &user).map(|()| true))
        }
        Command::Opcua(cmd) => {
            // The OPC UA client's own warnings about each connection step are noise here.
            init_logging(cli.log_format, "warn,opcua_client=error,opcua_core=error");
            exit_code(match cmd {
                OpcuaCommand::Browse(args) => opcua_cli::run_browse(args),
                OpcuaCommand::Trust { cert, config } => {
                    opcua_cli::run_trust(config.as_deref(), cert.as_deref())
                }
            })
        }
        Command::Probe {
            addr,
            path,
            timeout,
        } => {
            let from_env = std::env::var("FIELDGATE_PROBE_ADDR").ok();
            let addr = match (addr, from_env) {
                (Some(a), _) => a,
                (None, Some(text)) => match text.parse() {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("FIELDGATE_PROBE_ADDR={text:?}: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => std::net::SocketAddr::from(([127, 0, 0, 1], 9180)),
            };
            probe_exit(addr, &path, timeout)
        }
        Command::Simulate(args) => {
            init_logging(cli.log_format, "warn");
            exit_code(simulate(args).map(|()| true))
        }
    }
}

/// `fieldgate probe`'s exit status: success on a 200 answer.
fn probe_exit(addr: std::net::SocketAddr, path: &str, timeout: std::time::Duration) -> ExitCode {
    match fieldgate::probe::probe(addr, path, timeout) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{addr}{path}: not 200");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--broker {:?} is not host:port", args.broker))?;
    let opts = fieldgate::simulate::Options {
        host,
        port,
        devices: args.devices,
        connections: args.connections,
        rate: args.rate,
        count: args.count,
        duration: args.duration,
        qos: if args.qos == 1 {
            rumqttc::QoS::AtLeastOnce
        } else {
            rumqttc::QoS::AtMostOnce
        },
        topic: args.topic,
        fields: args.fields,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(fieldgate::simulate::run(opts))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {} messages ({} acknowledged) in {:.2} s: {:.0} msgs/s",
            report.sent, report.acknowledged, report.seconds, report.rate
        );
        if let Some(l) = report.puback {
            println!(
                "PUBACK latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
    }
    Ok(())
}

/// The exit code of a checking command: its error goes to stderr.
fn exit_code(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fieldgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: config::Config) -> anyhow::Result<()> {
    app::raise_open_files_limit(&cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fieldgate")
        .build()?;
    runtime.block_on(app::run(cfg))?;
    // Listener and router threads of the broker do not stop on their own.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

/// `fieldgate validate`: the config, then its rules against its sinks and its Modbus
/// and OPC UA groups.
fn validate(path: &std::path::Path, offline: bool) -> anyhow::Result<bool> {
    let cfg = config::Config::load(path)?;
    if !offline {
        cfg.check_host()
            .and_then(|()| fieldgate::broker::check_files(&cfg.broker))
            .and_then(|()| cfg.check_sink_files())
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    }
    if !cfg.rules_dir.is_dir() {
        anyhow::bail!(
            "{}: key `rules_dir`: {} is not a directory",
            path.display(),
            cfg.rules_dir.display()
        );
    }
    cfg.admin.token_env.iter().for_each(|var| {
        if std::env::var_os(var).is_none() {
            eprintln!(
                "note: `admin.token_env` names `{var}`, which is not set here; `run` needs it"
            );
        }
    });
    let groups = fieldgate::ingest::SourceGroups::of(&cfg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(rules_cli::check(
        std::slice::from_ref(&cfg.rules_dir),
        |s| cfg.sinks.contains_key(s),
        Some(&groups),
    ))?;
    if ok {
        println!(
            "ok: config {} ({} sinks, {} Modbus devices, {} OPC UA servers)",
            path.display(),
            cfg.sinks.len(),
            cfg.modbus.devices.len(),
            cfg.opcua.servers.len()
        );
    }
    Ok(ok)
}

fn rules(cmd: RulesCommand) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        RulesCommand::Check { paths, config } => {
            let (sinks, groups) = match config {
                Some(c) => {
                    let cfg = config::Config::load(&c)?;
                    let groups = fieldgate::ingest::SourceGroups::of(&cfg)?;
                    (Some(cfg.sinks), Some(groups))
                }
                None => (None, None),
            };
            runtime.block_on(rules_cli::check(
                &paths,
                |s| sinks.as_ref().is_none_or(|k| k.contains_key(s)),
                groups.as_ref(),
            ))
        }
        RulesCommand::Test {
            paths,
            input,
            rule,
            stream,
            expect,
            allow_rejects,
        } => runtime.block_on(rules_cli::test(&rules_cli::TestOptions {
            paths,
            input,
            rule,
            stream,
            expect,
            allow_rejects,
        })),
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let format = match format {
        LogFormat::Text => logging::Format::Text,
        LogFormat::Json => logging::Format::Json,
    };
    // The broker's lines about connections it closed are counted whatever is logged.
    logging::init(format, level, fieldgate::broker::ProtocolErrorLayer);
}

/// `fieldgate passwd FILE USER`.
fn passwd(file: &std::path::Path, user: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let read_line = || -> anyhow::Result<String> {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let password = if stdin.is_terminal() {
        let ask = |prompt: &str| -> anyhow::Result<String> {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            let fd = std::io::stdin();
            let saved = rustix::termios::tcgetattr(&fd)?;
            let mut quiet = saved.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &quiet)?;
            let line = read_line();
            rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &saved)?;
            eprintln!();
            line
        };
        let first = ask("Password: ")?;
        if ask("Again: ")? != first {
            anyhow::bail!("the passwords differ; nothing changed");
        }
        first
    } else {
        read_line()?
    };
    if password.is_empty() {
        anyhow::bail!("empty password; nothing changed");
    }
    fieldgate::broker::passwords::set(file, user, &password)?;
    eprintln!("password of `{user}` set in {}", file.display());
    Ok(())
}
