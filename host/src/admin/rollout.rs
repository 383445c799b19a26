//! `POST /plugins/NAME/promote`, `/rollback` and `/reset`: an operator's
//! hand on a rolled-out plugin, and how `/plugins` shows its versions.
//!
//! | endpoint | effect |
//! |---|---|
//! | `POST /plugins/NAME/promote[?version=LABEL]` | every request runs that version (the only canary when there is one) |
//! | `POST /plugins/NAME/rollback` | every canary out of rotation: the stable version serves every request |
//! | `POST /plugins/NAME/reset` | back to the manifest's weights, every version in rotation, windows emptied |
//!
//! Each answers 200 with the plugin's versions and shares, 404 for an
//! unknown plugin or version, 409 when the plugin has no `versions` or
//! promote must be told which canary. The state lives in the serving
//! snapshot's rollout: a reload that changes the plugin's versions,
//! weights or budget starts afresh from the manifest; one that does not keeps it.

use http::StatusCode;
use serde_json::{Value, json};

use crate::plugin::rollout::{ControlError, Rollout};
use crate::snapshot::Snapshot;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Promote,
    Rollback,
    Reset,
}

impl Action {
    pub(crate) fn parse(s: &str) -> Option<Action> {
        match s {
            "promote" => Some(Action::Promote),
            "rollback" => Some(Action::Rollback),
            "reset" => Some(Action::Reset),
            _ => None,
        }
    }
}

/// Applies `action` to plugin `name`; the status and JSON body to answer with.
pub(crate) fn control(
    snap: &Snapshot,
    name: &str,
    action: Action,
    version: Option<&str>,
) -> (StatusCode, Value) {
    let Some(rollout) = snap.rollouts.get(name) else {
        if snap.plugins.contains_key(name) {
            return (
                StatusCode::CONFLICT,
                json!({"error": format!("plugin `{name}` has one version: list `versions` in its `[plugins.{name}]` to roll one out")}),
            );
        }
        return (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no plugin `{name}`")}),
        );
    };
    let result = match action {
        Action::Promote => rollout.promote(version).map(|_| ()),
        Action::Rollback => {
            rollout.rollback();
            Ok(())
        }
        Action::Reset => {
            rollout.reset();
            Ok(())
        }
    };
    match result {
        Ok(()) => (StatusCode::OK, versions(rollout)),
        Err(e @ ControlError::NoSuchVersion { .. }) => {
            (StatusCode::NOT_FOUND, json!({"error": e.to_string()}))
        }
        Err(e @ ControlError::Ambiguous { .. }) => {
            (StatusCode::CONFLICT, json!({"error": e.to_string()}))
        }
    }
}

/// A rollout as `/plugins` and the control endpoints show it.
pub(crate) fn versions(r: &Rollout) -> Value {
    let shares = r.shares();
    let list: Vec<Value> = r
        .versions
        .iter()
        .zip(shares)
        .enumerate()
        .map(|(i, (v, share))| {
            json!({
                "label": v.label,
                "stable": i == 0,
                "path": v.plugin.path.display().to_string(),
                "sha256": v.plugin.sha256,
                "weight": v.weight,
                "share_percent": share,
                "in_rotation": !v.is_out(),
                "removed": v.removal(),
                "window": v.figures(),
                "compiled_from": v.plugin.source,
            })
        })
        .collect();
    json!({
        "plugin": &*r.plugin,
        "sticky": r.sticky.to_string(),
        "budget": r.budget,
        "promoted": r.promoted().map(|v| v.label.clone()),
        "versions": list,
    })
}
