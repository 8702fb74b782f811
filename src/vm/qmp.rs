//! QMP over the job's unix socket (through the `qapi` crate).

use std::path::Path;

use qapi::futures::{QapiStream, QmpStreamTokio};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;

/// A negotiated QMP connection.
pub type Qmp =
    QapiStream<QmpStreamTokio<ReadHalf<UnixStream>>, QmpStreamTokio<WriteHalf<UnixStream>>>;

/// Connects and negotiates capabilities.
pub async fn connect(socket: &Path) -> std::io::Result<Qmp> {
    QmpStreamTokio::open_uds(socket).await?.negotiate().await
}

/// `query-status`: whether the guest CPUs run, and QEMU's run state.
pub async fn status(qmp: &mut Qmp) -> Result<(bool, String), String> {
    let s = qmp
        .execute(qapi::qmp::query_status {})
        .await
        .map_err(|e| e.to_string())?;
    // The Rust names are QEMU's with `_` for `-` (`internal_error`).
    Ok((s.running, format!("{:?}", s.status).replace('_', "-")))
}

/// Reads the host port of the SSH forward (`hostfwd=tcp:127.0.0.1:0-:22`).
pub async fn forwarded_ssh_port(qmp: &mut Qmp) -> Result<u16, String> {
    let text = qmp
        .execute(qapi::qmp::human_monitor_command {
            command_line: "info usernet".into(),
            cpu_index: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    parse_usernet_ssh_port(&text)
        .ok_or_else(|| format!("no SSH forward in `info usernet`: {}", text.trim()))
}

/// Finds the host port of the loopback TCP forward to guest port 22 in the
/// output of `info usernet`, whose rows read
/// `TCP[HOST_FORWARD]  8  127.0.0.1 39209  10.0.2.15  22  0  0`.
pub fn parse_usernet_ssh_port(text: &str) -> Option<u16> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [proto, _fd, src, sport, _dst, "22", ..]
                if proto.starts_with("TCP[HOST_FORWARD]") && *src == "127.0.0.1" =>
            {
                sport.parse::<u16>().ok().filter(|&p| p != 0)
            }
            _ => None,
        }
    })
}

/// One PCI function as QEMU placed it (`query-pci`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    pub bus: i64,
    pub slot: i64,
    pub function: i64,
    pub vendor: i64,
    pub device: i64,
    /// PCI subsystem vendor and id: illumos names the device node after
    /// them (`pci1af4,2` is a virtio-blk disk).
    pub subsystem: Option<(i64, i64)>,
    /// The `-device` id (empty for the machine's own devices).
    pub qdev_id: String,
}

/// `query-pci`: every PCI function on every bus.
pub async fn pci_functions(qmp: &mut Qmp) -> Result<Vec<PciFunction>, String> {
    let buses = qmp
        .execute(qapi::qmp::query_pci {})
        .await
        .map_err(|e| e.to_string())?;
    Ok(buses
        .into_iter()
        .flat_map(|b| b.devices)
        .map(|d| PciFunction {
            bus: d.bus,
            slot: d.slot,
            function: d.function,
            vendor: d.id.vendor,
            device: d.id.device,
            subsystem: d.id.subsystem_vendor.zip(d.id.subsystem),
            qdev_id: d.qdev_id,
        })
        .collect())
}

/// `cont`: lets a guest started with `-S` run.
pub async fn cont(qmp: &mut Qmp) -> Result<(), String> {
    qmp.execute(qapi::qmp::cont {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `stop`: pauses the guest's CPUs.
pub async fn stop(qmp: &mut Qmp) -> Result<(), String> {
    qmp.execute(qapi::qmp::stop {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `migrate-set-capabilities`: turns each named capability on or off. The
/// saving and the restoring QEMU must agree on them.
pub async fn set_migration_capabilities(
    qmp: &mut Qmp,
    caps: &[(qapi::qmp::MigrationCapability, bool)],
) -> Result<(), String> {
    let capabilities = caps
        .iter()
        .map(|&(capability, state)| qapi::qmp::MigrationCapabilityStatus { capability, state })
        .collect();
    qmp.execute(qapi::qmp::migrate_set_capabilities { capabilities })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `migrate` to `uri` (`file:/path`); returns once the migration started.
pub async fn migrate(qmp: &mut Qmp, uri: &str) -> Result<(), String> {
    qmp.execute(qapi::qmp::migrate {
        uri: Some(uri.to_string()),
        channels: None,
        detach: None,
        resume: None,
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// `migrate-incoming` from `uri` on a QEMU started with `-incoming defer`;
/// returns once the migration started. A failure leaves QEMU running (not
/// exiting, QEMU's default), so that [`migration`] can say why.
pub async fn migrate_incoming(qmp: &mut Qmp, uri: &str) -> Result<(), String> {
    qmp.execute(qapi::qmp::migrate_incoming {
        uri: Some(uri.to_string()),
        channels: None,
        exit_on_error: Some(false),
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// `query-migrate`: the migration's status (`None` before any) and QEMU's
/// description of a failure.
pub async fn migration(
    qmp: &mut Qmp,
) -> Result<(Option<qapi::qmp::MigrationStatus>, Option<String>), String> {
    let info = qmp
        .execute(qapi::qmp::query_migrate {})
        .await
        .map_err(|e| e.to_string())?;
    Ok((info.status, info.error_desc))
}

/// `query-vm-generation-id`: the GUID of the `vmgenid` device.
pub async fn vm_generation_id(qmp: &mut Qmp) -> Result<String, String> {
    qmp.execute(qapi::qmp::query_vm_generation_id {})
        .await
        .map(|g| g.guid)
        .map_err(|e| e.to_string())
}

/// Asks QEMU to quit; the connection closes as QEMU exits, which may race
/// the reply, so only a refusal counts as an error.
pub async fn quit(qmp: &mut Qmp) -> Result<(), String> {
    match qmp.execute(qapi::qmp::quit {}).await {
        Ok(_) => Ok(()),
        Err(qapi::ExecuteError::Qapi(e)) => Err(e.to_string()),
        Err(qapi::ExecuteError::Io(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_10_usernet_output() {
        let out = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 39209       10.0.2.15    22     0     0\r\n";
        assert_eq!(parse_usernet_ssh_port(out), Some(39209));
        assert_eq!(parse_usernet_ssh_port("Hub -1 (net0):\r\n"), None);
        let other = "  TCP[HOST_FORWARD]   8  127.0.0.1 40000  10.0.2.15  80  0  0\n  TCP[ESTABLISHED]  9  127.0.0.1 41000  10.0.2.15  22  0  0\n";
        assert_eq!(parse_usernet_ssh_port(other), None);
    }
}
