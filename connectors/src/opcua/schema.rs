//! The node groups' columns as streams declare them ([`crate::groups`] checks them).

use super::OpcuaConfig;
use super::rows::schema;
use crate::groups::Groups;

/// The groups of these servers.
pub fn groups(cfg: &OpcuaConfig) -> Groups {
    let mut g = Groups::new("OPC UA", "[opcua] servers");
    for s in &cfg.servers {
        for group in &s.groups {
            g.insert(&s.name, &group.name, schema(group));
        }
    }
    g
}
