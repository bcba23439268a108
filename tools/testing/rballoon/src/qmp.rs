// SPDX-License-Identifier: GPL-2.0
//! A small typed QMP client.
//!
//! Every command carries an `id`; replies are matched on it, and asynchronous events that arrive in
//! between are kept in [`Qmp::events`] (QEMU sends e.g. `BALLOON_CHANGE` at any time).

use crate::conn::Conn;
use crate::error::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP session in command mode.
pub struct Qmp {
    conn: Conn,
    next_id: u64,
    events: Vec<Value>,
    /// Bound on each command's reply.
    pub timeout: Duration,
}

impl Qmp {
    /// Connect to the QMP socket, read the greeting and negotiate capabilities.
    pub fn connect(
        path: &Path,
        deadline: Instant,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Self> {
        let conn = Conn::connect(path, deadline, alive)?;
        let mut qmp = Qmp {
            conn,
            next_id: 1,
            events: Vec::new(),
            timeout: Duration::from_secs(30),
        };
        // An event can come before the greeting: a client that connected as the guest started
        // read RESUME first (once, in CI on 12-07). Kept as any other event.
        let greeting_by = deadline.max(Instant::now() + Duration::from_secs(10));
        loop {
            let m = qmp.read_msg(greeting_by)?;
            if m.get("QMP").is_some() {
                break;
            }
            if m.get("event").is_none() {
                return Err(Error::other(format!("unexpected QMP greeting: {m}")));
            }
            qmp.events.push(m);
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_msg(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            let line = self.conn.read_line(deadline)?;
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line)
                .map_err(|e| Error::other(format!("bad QMP message {line:?}: {e}")));
        }
    }

    /// Run `cmd` with optional `arguments`; return its `return` value.
    pub fn execute(&mut self, cmd: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        self.conn.send(&format!("{msg}\n"))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let m = self
                .read_msg(deadline)
                .map_err(|e| e.context(format!("QMP {cmd}")))?;
            if m.get("event").is_some() {
                self.events.push(m);
                continue;
            }
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to an earlier command whose wait timed out.
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(err) = m.get("error") {
                return Err(Error::other(format!(
                    "QMP {cmd} failed: {}: {}",
                    err["class"].as_str().unwrap_or("?"),
                    err["desc"].as_str().unwrap_or("?")
                )));
            }
            return Err(Error::other(format!("unexpected QMP reply to {cmd}: {m}")));
        }
    }

    /// Set the balloon target: the guest's memory size in bytes once the balloon is done.
    pub fn balloon(&mut self, target_bytes: u64) -> Result<()> {
        self.execute("balloon", Some(json!({ "value": target_bytes })))
            .map(drop)
    }

    /// The guest memory size the balloon currently leaves (`query-balloon`'s `actual`), in bytes.
    pub fn query_balloon(&mut self) -> Result<u64> {
        let r = self.execute("query-balloon", None)?;
        r["actual"]
            .as_u64()
            .ok_or_else(|| Error::other(format!("query-balloon without actual: {r}")))
    }

    /// Read a QOM property.
    pub fn qom_get(&mut self, path: &str, property: &str) -> Result<Value> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
    }

    /// Write a QOM property.
    pub fn qom_set(&mut self, path: &str, property: &str, value: Value) -> Result<()> {
        self.execute(
            "qom-set",
            Some(json!({ "path": path, "property": property, "value": value })),
        )
        .map(drop)
    }

    /// Run an HMP command through QMP and return its output.
    pub fn human_monitor_command(&mut self, cmd: &str) -> Result<String> {
        let r = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": cmd })),
        )?;
        Ok(r.as_str().unwrap_or_default().replace('\r', ""))
    }

    /// Hot-plug a device: `props` is a JSON object of its properties besides `driver` and `id`.
    pub fn device_add(&mut self, driver: &str, id: &str, props: Value) -> Result<()> {
        let mut args = if props.is_object() { props } else { json!({}) };
        args["driver"] = json!(driver);
        args["id"] = json!(id);
        self.execute("device_add", Some(args)).map(drop)
    }

    /// Ask for a device's removal. Completion is the `DEVICE_DELETED` event: see [`Qmp::wait_event`].
    pub fn device_del(&mut self, id: &str) -> Result<()> {
        self.execute("device_del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// Wait until QEMU has removed the device `id` (its `DEVICE_DELETED` event; those of other
    /// devices, such as the virtio backend inside a virtio-pci device, are dropped).
    pub fn wait_device_deleted(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.wait_event("DEVICE_DELETED", left)?;
            if e["data"]["device"] == id {
                return Ok(());
            }
        }
    }

    /// Ask QEMU to exit. Its connection closing right after the reply is expected.
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Eof => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Events received so far and not taken yet.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Take the events received so far.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Wait for an event named `name` (one already received counts); remove and return it.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return Ok(self.events.remove(i));
            }
            match self.read_msg(deadline) {
                Ok(m) if m.get("event").is_some() => self.events.push(m),
                Ok(_) => {}
                Err(e) => return Err(e.context(format!("waiting for QMP event {name}"))),
            }
        }
    }
}

/// What a precopy migration did with the guest's RAM, from `query-migrate`'s `ram` member.
///
/// QEMU marks every page dirty when the migration starts and looks at each dirty page once per
/// pass: a page that reads all zero is counted in `duplicate`, any other is sent and counted in
/// `normal`. A page the guest hints free during the migration (`qemu_guest_free_page_hint()`)
/// has its dirty bit cleared and is neither, if the pass had not reached it yet. Without hinting
/// every page is counted at least once, so `total` less the pages counted is RAM that QEMU
/// skipped because the guest said it was free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigratedRam {
    /// Bytes of guest RAM the migration covers (`total`).
    pub total: u64,
    /// Pages found zero (`duplicate`) ...
    pub zero_pages: u64,
    /// ... and pages sent (`normal`), each of ...
    pub normal_pages: u64,
    /// ... this many bytes (`page-size`).
    pub page_size: u64,
}

impl MigratedRam {
    /// From a `query-migrate` reply.
    pub fn from_query_migrate(r: &Value) -> Result<Self> {
        let field = |name: &str| {
            r["ram"][name]
                .as_u64()
                .ok_or_else(|| Error::other(format!("query-migrate without ram.{name}: {r}")))
        };
        Ok(MigratedRam {
            total: field("total")?,
            zero_pages: field("duplicate")?,
            normal_pages: field("normal")?,
            page_size: field("page-size")?,
        })
    }

    /// Bytes QEMU looked at: found zero or sent, re-sent pages counted again.
    pub fn counted(&self) -> u64 {
        (self.zero_pages + self.normal_pages) * self.page_size
    }

    /// Bytes of RAM QEMU never looked at: skipped as hinted free (at least; a page hinted after it
    /// was dirtied again, and re-sent, makes this smaller).
    pub fn skipped(&self) -> u64 {
        self.total.saturating_sub(self.counted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrated_ram_counts_what_was_skipped() {
        // A reply in the shape QEMU gives once a migration has completed (a hinted run's figures).
        let r = json!({
            "status": "completed",
            "total-time": 5213,
            "ram": {
                "total": 1_082_195_968u64, "remaining": 0, "transferred": 62_137_113u64,
                "duplicate": 40_000, "normal": 15_000, "normal-bytes": 61_440_000u64,
                "page-size": 4096, "dirty-sync-count": 3, "mbps": 95.4,
                "pages-per-second": 4096, "precopy-bytes": 62_100_000u64,
                "downtime-bytes": 37_113, "postcopy-bytes": 0, "multifd-bytes": 0,
                "postcopy-requests": 0, "dirty-sync-missed-zero-copy": 0
            }
        });
        let m = MigratedRam::from_query_migrate(&r).unwrap();
        assert_eq!(m.counted(), 55_000 * 4096);
        assert_eq!(m.skipped(), 1_082_195_968 - 55_000 * 4096);
        // Without hinting every page is counted, dirtied ones more than once: nothing skipped.
        let all = MigratedRam {
            zero_pages: 260_000,
            ..m
        };
        assert_eq!(all.skipped(), 0);
        // A reply without RAM figures (a migration that never started) is an error.
        let none = json!({ "status": "setup" });
        assert!(MigratedRam::from_query_migrate(&none).is_err());
    }
}
