//! `fieldgate opcua browse` and `fieldgate opcua trust`: the tools of the person who
//! connects the gateway to an OPC UA server. `browse` prints the address space to write
//! the node groups from; `trust` moves a server certificate the gateway refused into its
//! trust list.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fieldgate_connectors::opcua::Pki;
use fieldgate_connectors::opcua::browse::{BrowseRequest, browse};
use fieldgate_connectors::opcua::config::{Identity, SecurityMode, SecurityPolicy, ServerConfig};

use crate::config::Config;

/// `fieldgate opcua browse`: how it reaches the server and what it prints.
#[derive(Debug, Clone, clap::Args)]
pub struct BrowseArgs {
    /// `opc.tcp://host:port/path`, or the name of a server in --config.
    pub endpoint: String,
    /// The node to start from (default: the Objects folder, i=85).
    #[arg(long)]
    pub node: Option<String>,
    /// Levels below it.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// None, Basic256Sha256 or Aes128_Sha256_RsaOaep.
    #[arg(long, default_value = "None")]
    pub security_policy: String,
    /// None, Sign or SignAndEncrypt (default: SignAndEncrypt with a policy).
    #[arg(long)]
    pub security_mode: Option<String>,
    /// User name to log in as.
    #[arg(long)]
    pub user: Option<String>,
    /// Environment variable holding the user's password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// The gateway's config: its certificates (`data_dir`), id and servers.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// The certificate directory and gateway id of a config, or of the embedded default.
fn gateway(config: Option<&Path>) -> anyhow::Result<Config> {
    match config {
        Some(c) => Config::load(c),
        None => Config::embedded(),
    }
}

/// Prints the address space.
pub fn run_browse(args: BrowseArgs) -> anyhow::Result<bool> {
    let cfg = gateway(args.config.as_deref())?;
    let server = match cfg.opcua.servers.iter().find(|s| s.name == args.endpoint) {
        Some(s) => s.clone(),
        None => ad_hoc_server(&args)?,
    };
    let req = BrowseRequest {
        server,
        node: args.node.clone(),
        depth: args.depth,
    };
    let pki = Pki::under(&cfg.data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tree = runtime.block_on(browse(&req, &pki, &cfg.gateway_id))?;
    print!("{tree}");
    Ok(true)
}

fn ad_hoc_server(args: &BrowseArgs) -> anyhow::Result<ServerConfig> {
    let policy: SecurityPolicy = parse_enum(&args.security_policy, "--security-policy")?;
    let mode: Option<SecurityMode> = args
        .security_mode
        .as_deref()
        .map(|m| parse_enum(m, "--security-mode"))
        .transpose()?;
    let identity = match (&args.user, &args.password_env) {
        (Some(user), Some(var)) => Identity::Username {
            user: user.clone(),
            password: None,
            password_env: Some(var.clone()),
        },
        (Some(_), None) => {
            anyhow::bail!("--user needs --password-env VAR (the variable holding the password)")
        }
        (None, _) => Identity::Anonymous,
    };
    let mut server: ServerConfig = toml::from_str(&format!(
        "name = 'browse'\nendpoint = {}\n",
        toml::Value::String(args.endpoint.clone())
    ))
    .context("endpoint")?;
    server.security_policy = policy;
    server.security_mode = mode;
    server.identity = identity;
    let check = fieldgate_connectors::opcua::OpcuaConfig {
        servers: vec![server.clone()],
    };
    check.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(server)
}

fn parse_enum<T: serde::de::DeserializeOwned>(v: &str, flag: &str) -> anyhow::Result<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(v))
        .map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
}

/// Trusts a refused server certificate; without one, lists the refused certificates.
pub fn run_trust(config: Option<&Path>, cert: Option<&Path>) -> anyhow::Result<bool> {
    let cfg = gateway(config)?;
    let pki = Pki::under(&cfg.data_dir);
    match cert {
        Some(c) => {
            let to = pki
                .trust(c)
                .with_context(|| format!("cannot trust {}", c.display()))?;
            println!(
                "trusted: {} (the gateway uses it at its next connection)",
                to.display()
            );
        }
        None => {
            let files = pki.rejected_files();
            if files.is_empty() {
                println!(
                    "no refused server certificates in {}",
                    pki.rejected().display()
                );
            } else {
                println!(
                    "refused server certificates (trust one with `fieldgate opcua trust --config <file> <name>`):"
                );
                for f in files {
                    println!(
                        "  {}",
                        f.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(true)
}
