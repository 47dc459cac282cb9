//! The poll groups' columns as streams declare them ([`crate::groups`] checks them).

use std::sync::Arc;

use super::DevicePoller;
use crate::groups::Groups;

/// The groups of these pollers.
pub fn groups(pollers: &[Arc<DevicePoller>]) -> Groups {
    let mut g = Groups::new("Modbus", "[modbus] devices");
    for p in pollers {
        for group in p.groups() {
            g.insert(p.name(), &group.name, group.schema.clone());
        }
    }
    g
}
