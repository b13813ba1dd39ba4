//! What a failure means for the operator, and the exit codes, in one place.
//!
//! Each boundary has its own error enum beside its code — [`crate::store::StoreError`],
//! [`crate::wire::TransportError`], [`crate::wire::ProtocolError`], and the cycle's
//! [`crate::sync::SyncError`] wrapping them — and each classifies itself into a
//! [`Class`]: whether to back off and retry or to ask a person, which LED pattern,
//! which hint, which exit code. This module sits below every other one.

/// What a failure means for the operator; drives the LED, status hint and exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The central cannot be reached at all: wait for the link.
    Offline,
    /// Timeouts, 5xx, busy: back off and retry on its own.
    Transient,
    /// Site name or password refused.
    Credentials,
    /// This device is not the one registered for the site.
    HardwareId,
    /// Agent and central speak incompatible API versions.
    Version,
    /// The central (or a stored setting) contradicts what this site knows about
    /// itself, or the central broke the protocol: a person must look.
    Site,
    /// Some outbox records were refused by the central and set aside.
    Rejected,
    /// Synced, but some pulled records could not be integrated yet.
    Integration,
    /// The device itself: database, disk, permissions.
    Local,
    /// The command line or an input file is wrong.
    Input,
    /// Another sync holds the lock.
    Busy,
    /// `fieldsync init` has not been run.
    NotConfigured,
}

impl Class {
    /// Every class, for tables and tests.
    pub const ALL: [Class; 12] = [
        Class::Offline,
        Class::Transient,
        Class::Credentials,
        Class::HardwareId,
        Class::Version,
        Class::Site,
        Class::Rejected,
        Class::Integration,
        Class::Local,
        Class::Input,
        Class::Busy,
        Class::NotConfigured,
    ];

    /// Exit codes, documented in the README; a timer and a script can act on them.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Input => 2,
            Class::NotConfigured => 3,
            Class::Local => 4,
            Class::Offline => 10,
            Class::Transient => 11,
            Class::Credentials => 12,
            Class::HardwareId => 13,
            Class::Version => 14,
            Class::Site => 15,
            Class::Rejected => 16,
            Class::Integration => 17,
            Class::Busy => 18,
        }
    }

    /// Whether the condition clears by itself (retry with backoff) or needs a person.
    pub fn is_transient(self) -> bool {
        matches!(self, Class::Offline | Class::Transient | Class::Busy)
    }

    /// The one-line hint shown by `fieldsync status` and the log for this class.
    pub fn hint(self) -> &'static str {
        match self {
            Class::Offline => "the central server cannot be reached; check the network link, fieldsync retries by itself",
            Class::Transient => "the central server is busy or failing; fieldsync retries by itself",
            Class::Credentials => "the central refused the site name or password; re-run `fieldsync init` with the values the administrator gave",
            Class::HardwareId => "this device is not the one registered for this site; ask the administrator to reset the hardware id on the central server",
            Class::Version => "this fieldsync version does not match the central server; upgrade fieldsync (or the central)",
            Class::Site => "the central server's answer does not match this site's identity or the protocol; call support before changing anything",
            Class::Rejected => "some records cannot be sent: `fieldsync queue --rejected` lists them with the reason; fix them in the app and run `fieldsync queue retry`, or discard one for good with `fieldsync queue drop TABLE ID --yes`",
            Class::Integration => "some received records could not be applied yet; they are retried on every sync (see `fieldsync status`)",
            Class::Local => "a problem on this device (disk, database or permissions); see the message",
            Class::Input => "the command or input is wrong; see the message",
            Class::Busy => "another sync is running; wait for it to finish",
            Class::NotConfigured => "run `fieldsync init` first",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Offline => "offline",
            Class::Transient => "transient",
            Class::Credentials => "credentials",
            Class::HardwareId => "hardware_id",
            Class::Version => "version",
            Class::Site => "site",
            Class::Rejected => "rejected",
            Class::Integration => "integration",
            Class::Local => "local",
            Class::Input => "input",
            Class::Busy => "busy",
            Class::NotConfigured => "not_configured",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let all = Class::ALL;
        let mut codes: Vec<u8> = all.iter().map(|c| c.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&0) && !codes.contains(&1));
    }
}
