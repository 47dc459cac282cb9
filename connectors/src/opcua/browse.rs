//! Browsing: a server's address space as a tree of NodeId, browse name, node class and,
//! for variables, data type (with the `type` to write in the config) and access level,
//! so that a person can write the `[[opcua.servers.groups.nodes]]` of a config.

use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, DataValue, NodeClass,
    NodeId, ObjectId, ReadValueId, ReferenceDescription, ReferenceTypeId, TimestampsToReturn,
    Variant,
};

use super::config::ServerConfig;
use super::connect::{ConnectError, Connector};
use super::pki::Pki;

/// Most references followed per node, so that a huge folder cannot flood the output.
const MAX_REFERENCES: usize = 10_000;

/// What to browse.
#[derive(Debug, Clone)]
pub struct BrowseRequest {
    /// The server and how to log in.
    pub server: ServerConfig,
    /// The node to start from; the Objects folder by default.
    pub node: Option<String>,
    /// How many levels below it.
    pub depth: usize,
}

/// Why browsing failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// The start node is not a node id.
    #[error("--node {0:?} is not a node id (e.g. ns=2;s=Line1 or i=85)")]
    BadNode(String),
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session did not come up.
    #[error("no session with {endpoint} within {timeout:?}: {reason}")]
    NoSession {
        /// The endpoint.
        endpoint: String,
        /// How long it waited.
        timeout: Duration,
        /// What went wrong.
        reason: String,
    },
    /// A browse or read failed.
    #[error("{0}")]
    Service(String),
}

/// Connects, browses and returns the printed tree.
pub async fn browse(
    req: &BrowseRequest,
    pki: &Pki,
    gateway_id: &str,
) -> Result<String, BrowseError> {
    let start: NodeId = match &req.node {
        Some(n) => n.parse().map_err(|_| BrowseError::BadNode(n.clone()))?,
        None => ObjectId::ObjectsFolder.into(),
    };
    super::connect::ensure_certificate(pki, gateway_id)?;
    let mut connector = Connector::new(&req.server, pki, gateway_id)?;
    let (session, event_loop) = connector.session().await?;
    let mut events = Box::pin(event_loop.enter());
    let timeout = req.server.request_timeout * 2;
    let up = tokio::time::timeout(timeout, async {
        while let Some(ev) = events.next().await {
            match ev {
                Ok(opcua::client::SessionPollResult::Reconnected(_)) => return Ok(()),
                Ok(opcua::client::SessionPollResult::ReconnectFailed(s)) => {
                    return Err(if super::connect::is_untrusted(s) {
                        pki.untrusted_hint(&req.server.name)
                    } else {
                        s.to_string()
                    });
                }
                Err(s) => return Err(s.to_string()),
                Ok(_) => {}
            }
        }
        Err("the session closed".to_string())
    })
    .await;
    let reason = match up {
        Ok(Ok(())) => None,
        Ok(Err(r)) => Some(r),
        Err(_) => Some("timed out".to_string()),
    };
    if let Some(reason) = reason {
        return Err(BrowseError::NoSession {
            endpoint: req.server.endpoint.clone(),
            timeout,
            reason,
        });
    }
    // The event loop must keep running while the browse requests go out.
    let driver = tokio::spawn(async move { while events.next().await.is_some() {} });
    let mut out = String::new();
    let result = walk(&session, start, req.depth, &mut out).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
    driver.abort();
    result.map(|()| out)
}

/// Prints `start` and the nodes below it to `depth` levels, each under its parent.
async fn walk(
    session: &opcua::client::Session,
    start: NodeId,
    depth: usize,
    out: &mut String,
) -> Result<(), BrowseError> {
    // (node, its line, its level): popped, printed, then its children pushed.
    let mut stack: Vec<(NodeId, String, usize)> = vec![(start.clone(), start.to_string(), 0)];
    let mut seen = std::collections::HashSet::new();
    while let Some((node, line, level)) = stack.pop() {
        let _ = writeln!(out, "{line}");
        if level >= depth || !seen.insert(node.clone()) {
            continue;
        }
        let refs = children(session, &node).await?;
        let vars: Vec<NodeId> = refs
            .iter()
            .filter(|r| r.node_class == NodeClass::Variable)
            .map(|r| r.node_id.node_id.clone())
            .collect();
        let attrs = variable_attributes(session, &vars).await?;
        let indent = "  ".repeat(level + 1);
        for r in refs.iter().rev() {
            let id = r.node_id.node_id.clone();
            let mut line = format!(
                "{indent}{id}  {}  {:?}",
                r.browse_name.name.as_ref(),
                r.node_class
            );
            if let Some(a) = attrs.get(&id) {
                let _ = write!(line, "  {a}");
            }
            stack.push((id, line, level + 1));
        }
    }
    Ok(())
}

/// The hierarchical children of a node, following continuation points.
async fn children(
    session: &opcua::client::Session,
    node: &NodeId,
) -> Result<Vec<ReferenceDescription>, BrowseError> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let results = session
        .browse(&[desc], 1000, None)
        .await
        .map_err(|e| BrowseError::Service(format!("browsing {node}: {e}")))?;
    let Some(mut result) = results.into_iter().next() else {
        return Ok(Vec::new());
    };
    if !result.status_code.is_good() {
        return Err(BrowseError::Service(format!(
            "browsing {node}: {}",
            result.status_code
        )));
    }
    let mut refs = result.references.take().unwrap_or_default();
    while !result.continuation_point.is_null() && refs.len() < MAX_REFERENCES {
        let next = session
            .browse_next(false, std::slice::from_ref(&result.continuation_point))
            .await
            .map_err(|e| BrowseError::Service(format!("browsing {node}: {e}")))?;
        let Some(mut r) = next.into_iter().next() else {
            break;
        };
        refs.extend(r.references.take().unwrap_or_default());
        result = r;
    }
    Ok(refs)
}

/// Data type and access level of variables, as printed.
async fn variable_attributes(
    session: &opcua::client::Session,
    vars: &[NodeId],
) -> Result<std::collections::HashMap<NodeId, String>, BrowseError> {
    if vars.is_empty() {
        return Ok(Default::default());
    }
    let mut reads = Vec::with_capacity(vars.len() * 3);
    for v in vars {
        for attr in [
            AttributeId::DataType,
            AttributeId::ValueRank,
            AttributeId::AccessLevel,
        ] {
            reads.push(ReadValueId {
                node_id: v.clone(),
                attribute_id: attr as u32,
                ..ReadValueId::from(v.clone())
            });
        }
    }
    let values = session
        .read(&reads, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| BrowseError::Service(format!("reading attributes: {e}")))?;
    let mut out = std::collections::HashMap::new();
    for (v, chunk) in vars.iter().zip(values.chunks(3)) {
        let [dt, rank, access] = chunk else { continue };
        let array = matches!(value(rank), Some(Variant::Int32(r)) if *r >= 1);
        let type_name = match value(dt) {
            Some(Variant::NodeId(id)) => config_type(id, array),
            _ => "?".to_string(),
        };
        let access = match value(access) {
            Some(Variant::Byte(a)) => match (a & 1 != 0, a & 2 != 0) {
                (true, true) => "read,write",
                (true, false) => "read",
                (false, true) => "write",
                (false, false) => "none",
            },
            _ => "?",
        };
        out.insert(v.clone(), format!("{type_name}  {access}"));
    }
    Ok(out)
}

fn value(dv: &DataValue) -> Option<&Variant> {
    dv.value.as_ref()
}

/// The config's `type` for a data type (by its standard id), or the id when the gateway
/// has no type for it.
fn config_type(id: &NodeId, array: bool) -> String {
    let name = match (id.namespace, &id.identifier) {
        (0, opcua::types::Identifier::Numeric(n)) => match n {
            1 => Some("boolean"),
            2 => Some("sbyte"),
            3 => Some("byte"),
            4 => Some("int16"),
            5 => Some("uint16"),
            6 => Some("int32"),
            7 => Some("uint32"),
            8 => Some("int64"),
            9 => Some("uint64"),
            10 => Some("float"),
            11 => Some("double"),
            12 => Some("string"),
            13 => Some("datetime"),
            _ => None,
        },
        _ => None,
    };
    match name {
        Some(n) if array => format!("type={n}[]"),
        Some(n) => format!("type={n}"),
        None => format!("datatype={id} (not readable by the gateway)"),
    }
}
