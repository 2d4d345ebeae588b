//! Memory hotplug over QMP: a DIMM (`pc-dimm`) with a memory backend of its
//! own, a shared memfd like the boot memory, because vhost-user devices
//! (vhost-device-vsock, virtiofsd) map all of guest memory, hot-added
//! memory included.
//!
//! DIMMs rather than virtio-mem: ACPI memory hotplug is built into Debian's
//! kernel and the guest onlines a DIMM by itself
//! (`memhp_default_state=online_movable`), where virtio-mem is a module and
//! needs a device sized for the maximum at boot.

use serde_json::{Value, json};

use crate::vm::qemu::qmp::{Qmp, QmpError};

/// The QOM id of a DIMM's memory backend.
pub fn backend_id(dimm_id: &str) -> String {
    format!("mem-{dimm_id}")
}

impl Qmp {
    /// Adds a DIMM of `size_mib` MiB with id `dimm_id`. When QEMU refuses
    /// the device (no free slot, no room below `maxmem`), its backend is
    /// removed again, so a failure leaves the VM as it was.
    pub async fn add_dimm(&mut self, dimm_id: &str, size_mib: u32) -> Result<(), QmpError> {
        let backend = backend_id(dimm_id);
        self.execute(
            "object-add",
            Some(json!({
                "qom-type": "memory-backend-memfd",
                "id": backend,
                "size": u64::from(size_mib) << 20,
                "share": true,
            })),
        )
        .await?;
        let added = self
            .execute(
                "device_add",
                Some(json!({"driver": "pc-dimm", "id": dimm_id, "memdev": backend})),
            )
            .await;
        if let Err(e) = added {
            if let Err(undo) = self
                .execute("object-del", Some(json!({"id": backend})))
                .await
            {
                tracing::warn!(dimm = dimm_id, error = %undo, "cannot remove the backend of a refused DIMM");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Asks the guest to give a DIMM back. The removal completes only when
    /// the guest has offlined its memory; see [`Qmp::dimm_ids`].
    pub async fn request_dimm_removal(&mut self, dimm_id: &str) -> Result<(), QmpError> {
        self.execute("device_del", Some(json!({"id": dimm_id})))
            .await
            .map(drop)
    }

    /// Removes the backend of a DIMM that is gone.
    pub async fn remove_dimm_backend(&mut self, dimm_id: &str) -> Result<(), QmpError> {
        self.execute("object-del", Some(json!({"id": backend_id(dimm_id)})))
            .await
            .map(drop)
    }

    /// The ids of the DIMMs the VM has now.
    pub async fn dimm_ids(&mut self) -> Result<Vec<String>, QmpError> {
        let r = self.execute("query-memory-devices", None).await?;
        Ok(dimm_ids(&r))
    }
}

/// The `data.id` of each `dimm` entry of a `query-memory-devices` reply.
fn dimm_ids(reply: &Value) -> Vec<String> {
    reply
        .as_array()
        .map(|devices| {
            devices
                .iter()
                .filter(|d| d.get("type").and_then(Value::as_str) == Some("dimm"))
                .filter_map(|d| d.pointer("/data/id").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimm_ids_are_read_from_query_memory_devices() {
        let reply = json!([
            {"type": "dimm", "data": {"id": "dimm0", "size": 134217728, "memdev": "/objects/mem-dimm0"}},
            {"type": "virtio-mem", "data": {"id": "vm0"}},
            {"type": "dimm", "data": {"size": 1}},
        ]);
        assert_eq!(dimm_ids(&reply), ["dimm0"]);
        assert!(dimm_ids(&json!({})).is_empty());
    }

    #[tokio::test]
    async fn a_refused_dimm_leaves_no_backend_behind() {
        let ok = json!({"return": {}});
        let (_d, path, seen) = crate::vm::qemu::qmp::tests::recording_server(vec![
            ok.clone(),
            ok.clone(),
            json!({"error": {"class": "GenericError", "desc": "no free slots"}}),
            ok.clone(),
        ])
        .await;
        let mut q = Qmp::connect(&path, std::time::Duration::from_secs(2))
            .await
            .expect("connect");
        let e = q.add_dimm("dimm3", 1024).await.expect_err("refused");
        assert!(e.to_string().contains("no free slots"), "{e}");
        let seen = seen.lock().expect("lock").clone();
        let cmds: Vec<&str> = seen
            .iter()
            .map(|r| r["execute"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            cmds,
            ["qmp_capabilities", "object-add", "device_add", "object-del"]
        );
        assert_eq!(seen[1]["arguments"]["qom-type"], "memory-backend-memfd");
        assert_eq!(seen[1]["arguments"]["share"], true);
        assert_eq!(seen[1]["arguments"]["size"], 1u64 << 30);
        assert_eq!(seen[2]["arguments"]["driver"], "pc-dimm");
        assert_eq!(seen[2]["arguments"]["memdev"], "mem-dimm3");
        assert_eq!(seen[3]["arguments"]["id"], "mem-dimm3");
    }
}
