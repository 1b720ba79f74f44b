//! Whether the server is a node of a cluster whose named locks are local
//! to the node: a Galera node (`wsrep_on`), or a member of a MySQL Group
//! Replication group. `GET_LOCK` there excludes nobody on the other nodes,
//! so a lock taken on one would be no lock at all; such servers are
//! refused (77). Decided from the variables and rows read by
//! [`Session`](super::session::Session), here so that the decision can be
//! tested without such a cluster.

/// What the server said about Group Replication. MariaDB has none of it:
/// `@@group_replication_group_name` is an unknown variable there.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct GroupReplication {
    /// `@@global.group_replication_group_name`: `None` when the variable
    /// does not exist (the plugin is not loaded, or MariaDB).
    pub group_name: Option<String>,
    /// `PLUGIN_STATUS` of `group_replication` in
    /// `information_schema.PLUGINS` (`ACTIVE` when it runs).
    pub plugin_status: Option<String>,
    /// This server's own `MEMBER_STATE` in
    /// `performance_schema.replication_group_members` (`ONLINE`,
    /// `RECOVERING`, `OFFLINE`, `ERROR`, `UNREACHABLE`), when it has a row.
    pub member_state: Option<String>,
}

impl GroupReplication {
    /// Whether the rows are worth reading: a group name is configured.
    pub fn configured(group_name: Option<&str>) -> bool {
        group_name.is_some_and(|name| !name.trim().is_empty())
    }

    /// Why the server must be refused as a group member, or `None` when it
    /// is not one: no group configured, the plugin not active, or the
    /// server `OFFLINE` (Group Replication stopped). Any other member
    /// state is a member (`RECOVERING` is joining; `ERROR` and
    /// `UNREACHABLE` may rejoin); an active plugin with a group but no
    /// member row this account can see is refused too, since it cannot be
    /// told from a member.
    pub fn refusal(&self) -> Option<String> {
        if !GroupReplication::configured(self.group_name.as_deref()) {
            return None;
        }
        let active = self
            .plugin_status
            .as_deref()
            .is_some_and(|status| status.eq_ignore_ascii_case("ACTIVE"));
        if !active {
            return None;
        }
        let group = self.group_name.as_deref().unwrap_or_default().trim();
        match self.member_state.as_deref().map(str::trim) {
            Some(state) if state.eq_ignore_ascii_case("OFFLINE") => None,
            Some(state) => Some(format!(
                "it is a member of the MySQL Group Replication group {group} (member state {state})"
            )),
            None => Some(format!(
                "it runs MySQL Group Replication for the group {group} (plugin active) and its member state in performance_schema.replication_group_members cannot be read"
            )),
        }
    }
}

/// Whether `@@wsrep_on` says the server is a Galera node.
pub(super) fn galera_node(wsrep_on: Option<&str>) -> bool {
    wsrep_on.is_some_and(|v| v.trim() == "1" || v.trim().eq_ignore_ascii_case("ON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: Option<&str>, plugin: Option<&str>, state: Option<&str>) -> GroupReplication {
        GroupReplication {
            group_name: name.map(str::to_owned),
            plugin_status: plugin.map(str::to_owned),
            member_state: state.map(str::to_owned),
        }
    }

    const UUID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    #[test]
    fn mariadb_and_mysql_without_the_plugin_are_not_members() {
        // MariaDB, or MySQL without the plugin: the variable is unknown.
        assert_eq!(group(None, None, None).refusal(), None);
        // The plugin loaded but no group configured.
        assert_eq!(group(Some(""), Some("ACTIVE"), None).refusal(), None);
        assert_eq!(group(Some("  "), Some("ACTIVE"), None).refusal(), None);
    }

    #[test]
    fn a_configured_group_with_the_plugin_inactive_or_offline_is_not_a_member() {
        assert_eq!(group(Some(UUID), Some("DISABLED"), None).refusal(), None);
        assert_eq!(group(Some(UUID), None, None).refusal(), None);
        assert_eq!(
            group(Some(UUID), Some("ACTIVE"), Some("OFFLINE")).refusal(),
            None
        );
    }

    #[test]
    fn an_online_or_joining_member_is_refused_saying_which_group() {
        for state in ["ONLINE", "RECOVERING", "ERROR", "UNREACHABLE"] {
            let why = group(Some(UUID), Some("ACTIVE"), Some(state))
                .refusal()
                .unwrap_or_else(|| panic!("{state} not refused"));
            assert!(why.contains(UUID), "{why}");
            assert!(why.contains(state), "{why}");
            assert!(why.contains("Group Replication"), "{why}");
        }
        // Case as the server prints it does not matter.
        assert!(
            group(Some(UUID), Some("active"), Some("online"))
                .refusal()
                .is_some()
        );
    }

    #[test]
    fn an_active_group_whose_member_state_cannot_be_seen_is_refused() {
        let why = group(Some(UUID), Some("ACTIVE"), None).refusal().unwrap();
        assert!(why.contains("cannot be read"), "{why}");
    }

    #[test]
    fn galera_is_wsrep_on() {
        assert!(galera_node(Some("1")));
        assert!(galera_node(Some("ON")));
        assert!(!galera_node(Some("0")));
        assert!(!galera_node(Some("OFF")));
        assert!(!galera_node(None));
    }
}
