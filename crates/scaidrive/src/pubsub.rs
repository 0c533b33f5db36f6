//! Change notifications: the seam where realtime fan-out (Redis pub/sub, sync nudges) plugs in.
//! Today changes are only logged.

/// One tree mutation.
#[derive(Debug, Clone)]
pub struct Change {
    pub tenant_id: String,
    pub share_id: String,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub change_type: &'static str,
}

pub trait ChangeNotifier: Send + Sync {
    fn notify(&self, change: Change);
}

/// The embedded notifier: a debug log line per change.
pub struct LogNotifier;

impl ChangeNotifier for LogNotifier {
    fn notify(&self, change: Change) {
        tracing::debug!(event = "change", tenant_id = %change.tenant_id, share_id = %change.share_id,
            resource_type = change.resource_type, resource_id = %change.resource_id, change_type = change.change_type);
    }
}

/// Report a change to a file or folder through the state's notifier.
pub fn node_changed(state: &crate::AppState, node: &crate::fs::Node, change_type: &'static str) {
    state.notifier.notify(Change {
        tenant_id: node.tenant_id.clone(),
        share_id: node.share_id.clone(),
        resource_type: if node.is_folder() { "folder" } else { "file" },
        resource_id: node.id.clone(),
        change_type,
    });
}
