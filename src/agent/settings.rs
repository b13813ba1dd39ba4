//! The agent's settings, with one home: every setting a deployer or a test
//! may touch is a row of [`KEYS`] (its stored name, environment override,
//! default, unit, who sets it, and how it is checked), and [`Settings::resolve`]
//! builds the typed settings from stored rows and the environment in one pure
//! function. A malformed value is an error that names the key, the value and the
//! fix — never silently dropped.
//!
//! Precedence: the environment (the package's `/etc/default/fieldsync`, read by
//! systemd) over the stored row over the default. Command-line options that
//! configure a single run (`--db`, `-v`, `--log-file`, `run --interval`) are
//! parsed in the binary and passed in. The commands that read and write settings
//! (`init`, `config`) are in [`super::config`].

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Class;
use crate::field::led;
use crate::sync::batch;
use crate::sync::Config;
use crate::wire::resolve::{self, Dns};
use crate::wire::transport::{Network, Origin, Tls};

use super::conf::Conf;
use super::Failure;

/// The settings' names, as the configuration file and `fieldsync config` spell them.
pub mod key {
    pub const CENTRAL_URL: &str = "central_url";
    pub const SITE_NAME: &str = "site_name";
    pub const HARDWARE_ID: &str = "hardware_id";
    pub const ALLOW_HTTP: &str = "allow_insecure_http";
    pub const CA_FILE: &str = "ca_file";
    pub const DNS: &str = "dns";
    pub const CREDENTIAL_FILE: &str = "credential_file";
    pub const LED: &str = "led";
    pub const ATTENTION_LED: &str = "attention_led";
    pub const PROGRESS_SECS: &str = "progress_secs";
    pub const METRICS_FILE: &str = "metrics_file";
    pub const LED_DIR: &str = "led_dir";
    pub const BATCH_RECORDS: &str = "batch_records";
    pub const BATCH_BYTES: &str = "batch_bytes";
    pub const INTEGRATION_WAIT: &str = "integration_wait_secs";
    pub const INIT_POLL: &str = "init_poll_secs";
    pub const RETRY_BASE: &str = "retry_base_ms";
    pub const BUSY_TIMEOUT: &str = "busy_timeout_ms";
    pub const CHECK_EVERY: &str = "check_every_syncs";
    pub const COMPARE_EVERY: &str = "compare_every_syncs";
}

/// Who sets a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetBy {
    /// `fieldsync init` (and its options).
    Init,
    /// A deployer or helper, with `fieldsync config set` (or the environment).
    Deployer,
    /// Only the environment (the package's `/etc/default/fieldsync`, systemd).
    Environment,
}

impl SetBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SetBy::Init => "init",
            SetBy::Deployer => "config set",
            SetBy::Environment => "environment",
        }
    }
}

/// One setting: its documentation and its check.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub env: Option<&'static str>,
    /// The default as shown to people; "" when there is none.
    pub default: &'static str,
    pub unit: &'static str,
    pub set_by: SetBy,
    pub doc: &'static str,
    check: fn(&str) -> Result<(), String>,
}

impl Key {
    /// Checks a value for this key; the error names both and says what is wanted.
    pub fn check(&self, value: &str) -> Result<(), String> {
        (self.check)(value).map_err(|want| {
            format!(
                "setting {} = {value:?} is not valid: {want}; fix it with `fieldsync config set {} VALUE`",
                self.name, self.name
            )
        })
    }
}

fn any(_: &str) -> Result<(), String> {
    Ok(())
}
/// An LED's name under the LED directory: one path component, never a way out
/// of that directory.
fn led_name(v: &str) -> Result<(), String> {
    if v.contains('/') || v == ".." || v == "." || v.contains('\0') {
        Err("an LED's name under /sys/class/leds (such as ACT), not a path".into())
    } else {
        Ok(())
    }
}
fn url(v: &str) -> Result<(), String> {
    Origin::parse(v, true)
        .map(|_| ())
        .map_err(|e| format!("a central URL ({e})"))
}
fn boolean(v: &str) -> Result<(), String> {
    parse_bool(v)
        .map(|_| ())
        .ok_or_else(|| "1 or 0 (true or false)".into())
}
fn nonempty(v: &str) -> Result<(), String> {
    if v.trim().is_empty() || v.contains(':') {
        Err("a non-empty name without ':'".into())
    } else {
        Ok(())
    }
}
fn records(v: &str) -> Result<(), String> {
    whole(v, 1, batch::MAX_BATCH_RECORDS as u64)
}
fn bytes(v: &str) -> Result<(), String> {
    whole(v, batch::MIN_BATCH_BYTES as u64, 16 << 20)
}
fn seconds(v: &str) -> Result<(), String> {
    whole(v, 0, 24 * 3600)
}
fn dns_servers(v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Ok(());
    }
    resolve::parse_servers(v)
        .map(|_| ())
        .map_err(|e| format!("a list of DNS server addresses ({e})"))
}
fn check_every(v: &str) -> Result<(), String> {
    whole(v, 0, 100_000)
}
fn progress_secs(v: &str) -> Result<(), String> {
    whole(v, 1, 3600)
}
fn millis(v: &str) -> Result<(), String> {
    whole(v, 0, 600_000)
}
fn path(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Err("a file path".into())
    } else {
        Ok(())
    }
}

fn whole(v: &str, min: u64, max: u64) -> Result<(), String> {
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(format!("a whole number from {min} to {max}")),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// Every setting, in the order the README's table lists them.
pub const KEYS: &[Key] = &[
    Key {
        name: key::CENTRAL_URL,
        env: None,
        default: "",
        unit: "URL",
        set_by: SetBy::Init,
        doc: "the central server (`https://…`; a base path is dropped)",
        check: url,
    },
    Key {
        name: key::SITE_NAME,
        env: None,
        default: "",
        unit: "name",
        set_by: SetBy::Init,
        doc: "this site's name on the central (the Basic-auth user)",
        check: nonempty,
    },
    Key {
        name: key::HARDWARE_ID,
        env: None,
        default: "derived from /etc/machine-id",
        unit: "text",
        set_by: SetBy::Init,
        doc: "the device id sent as `msupply-site-uuid`; kept for good once derived. Set it only to give a replacement device the old one's identity",
        check: nonempty,
    },
    Key {
        name: key::ALLOW_HTTP,
        env: None,
        default: "0",
        unit: "0/1",
        set_by: SetBy::Init,
        doc: "allow plain `http://` to a host other than loopback (test networks only)",
        check: boolean,
    },
    Key {
        name: key::CA_FILE,
        env: Some("FIELDSYNC_CA_FILE"),
        default: "",
        unit: "path",
        set_by: SetBy::Deployer,
        doc: "extra CA certificates (PEM) trusted beside the system's, for a central with a private CA",
        check: path,
    },
    Key {
        name: key::DNS,
        env: Some("FIELDSYNC_DNS"),
        default: "",
        unit: "addresses",
        set_by: SetBy::Deployer,
        doc: "DNS servers to ask for the central's name (e.g. `192.168.1.1, 1.1.1.1`) instead of the system's resolver; a static build asks the servers in `resolv.conf` when this is empty",
        check: dns_servers,
    },
    Key {
        name: key::CREDENTIAL_FILE,
        env: Some("FIELDSYNC_CREDENTIAL_FILE"),
        default: "the database path + .credential",
        unit: "path",
        set_by: SetBy::Deployer,
        doc: "the site credential (the password digest), readable by the agent's user only; a systemd credential `site-credential` wins over it",
        check: path,
    },
    Key {
        name: key::LED,
        env: Some("FIELDSYNC_LED"),
        default: "",
        unit: "LED name",
        set_by: SetBy::Init,
        doc: "the status LED under /sys/class/leds (`ACT` on a Pi); empty or `none`: no LED",
        check: led_name,
    },
    Key {
        name: key::ATTENTION_LED,
        env: Some("FIELDSYNC_ATTENTION_LED"),
        default: "",
        unit: "LED name",
        set_by: SetBy::Init,
        doc: "a second LED lit only when a person must act (`PWR` on a Pi)",
        check: led_name,
    },
    Key {
        name: key::PROGRESS_SECS,
        env: Some("FIELDSYNC_PROGRESS_SECS"),
        default: "30",
        unit: "seconds",
        set_by: SetBy::Deployer,
        doc: "how often a step that runs longer writes a progress line to the journal or log file (a terminal gets a live line instead)",
        check: progress_secs,
    },
    Key {
        name: key::METRICS_FILE,
        env: Some("FIELDSYNC_METRICS_FILE"),
        default: "",
        unit: "path",
        set_by: SetBy::Deployer,
        doc: "write fleet metrics (Prometheus/OpenMetrics text) here after each sync, e.g. `/var/lib/prometheus/node-exporter/fieldsync.prom`; empty: none",
        check: any,
    },
    Key {
        name: key::LED_DIR,
        env: Some("FIELDSYNC_LED_DIR"),
        default: led::SYS_LEDS,
        unit: "path",
        set_by: SetBy::Environment,
        doc: "where LED class devices live (tests point it elsewhere)",
        check: path,
    },
    Key {
        name: key::BATCH_RECORDS,
        env: None,
        default: "1024",
        unit: "records",
        set_by: SetBy::Deployer,
        doc: "most records in one push (§5: at most 1024)",
        check: records,
    },
    Key {
        name: key::BATCH_BYTES,
        env: None,
        default: "1048576",
        unit: "bytes",
        set_by: SetBy::Deployer,
        doc: "largest push body; each sync starts at 256 KiB and adapts to the link up to this",
        check: bytes,
    },
    Key {
        name: key::INTEGRATION_WAIT,
        env: None,
        default: "30",
        unit: "seconds",
        set_by: SetBy::Deployer,
        doc: "longest wait for the central to integrate a push before pulling (§5 step 4)",
        check: seconds,
    },
    Key {
        name: key::INIT_POLL,
        env: None,
        default: "15",
        unit: "seconds",
        set_by: SetBy::Deployer,
        doc: "how often to ask while the central builds this site's initial data (§5 step 2)",
        check: seconds,
    },
    Key {
        name: key::RETRY_BASE,
        env: None,
        default: "2000",
        unit: "milliseconds",
        set_by: SetBy::Deployer,
        doc: "first of three retry delays after a cut link or a 408/502/504 (then ×2, ×4)",
        check: millis,
    },
    Key {
        name: key::CHECK_EVERY,
        env: None,
        default: "1",
        unit: "syncs",
        set_by: SetBy::Deployer,
        doc: "check this device's records against what was last synced every this many syncs, to find changes made behind the rules (0: only with `fieldsync verify`)",
        check: check_every,
    },
    Key {
        name: key::COMPARE_EVERY,
        env: None,
        default: "288",
        unit: "syncs",
        set_by: SetBy::Deployer,
        doc: "compare this device's records with the central's every this many syncs (a day of 5-minute syncs; a central found restored is compared with at once; 0: only with `fieldsync verify` or after a restore)",
        check: check_every,
    },
    Key {
        name: key::BUSY_TIMEOUT,
        env: Some("FIELDSYNC_BUSY_TIMEOUT_MS"),
        default: "30000",
        unit: "milliseconds",
        set_by: SetBy::Environment,
        doc: "how long a write waits for the clinic's app to release the database",
        check: millis,
    },
];

/// The settings of one agent, typed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub origin: Origin,
    pub url: String,
    pub site: String,
    /// The `credential_file` setting; unset: beside the database (see
    /// [`super::credential`], which also reads the systemd credential).
    pub credential_file: Option<PathBuf>,
    pub hardware_id: String,
    pub net: Network,
    pub led_dir: PathBuf,
    pub led: Option<String>,
    pub attention_led: Option<String>,
    pub sync: Config,
    pub retry_delays: Vec<Duration>,
    /// How often a long step writes a progress line to the journal or log file.
    pub progress_every: Duration,
    /// Fleet metrics file written after each sync, if any.
    pub metrics_file: Option<PathBuf>,
}

pub fn lookup(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Keys whose default is a description for people (derived, or relative to the
/// database), not a value: no default value for these.
const DESCRIBED_DEFAULTS: &[&str] = &[key::HARDWARE_ID, key::CREDENTIAL_FILE];

/// Where a value came from, for `fieldsync config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    Stored,
    Default,
}

/// The effective value of `k` and its source: environment, stored row, default.
pub fn effective(
    k: &Key,
    stored: &dyn Fn(&str) -> Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<String>, Source) {
    if let Some(v) = k.env.and_then(env) {
        return (Some(v), Source::Environment);
    }
    // An environment-only setting is never read from a file.
    if let Some(v) = stored(k.name).filter(|_| k.set_by != SetBy::Environment) {
        return (Some(v), Source::Stored);
    }
    let d = (!k.default.is_empty() && !DESCRIBED_DEFAULTS.contains(&k.name))
        .then(|| k.default.to_string());
    (d, Source::Default)
}

impl Settings {
    /// Builds the settings from stored rows and the environment. Pure: the two
    /// lookups are the only inputs, so a test gives both as closures.
    pub fn resolve(
        stored: &dyn Fn(&str) -> Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, Failure> {
        let get = |name: &str| -> Result<Option<String>, Failure> {
            let k = lookup(name).expect("every key read here is in KEYS");
            match effective(k, stored, env).0 {
                None => Ok(None),
                Some(v) => k
                    .check(&v)
                    .map(|()| Some(v))
                    .map_err(|m| Failure::new(Class::Input, m)),
            }
        };
        let need = |name: &str| -> Result<String, Failure> {
            get(name)?.ok_or_else(|| {
                Failure::new(
                    Class::NotConfigured,
                    format!("not configured ({name} is not set): run `fieldsync init` first"),
                )
            })
        };
        let number = |name: &str| -> Result<u64, Failure> {
            Ok(get(name)?.map_or(0, |v| v.trim().parse().unwrap_or(0)))
        };
        let url = need(key::CENTRAL_URL)?;
        let site = need(key::SITE_NAME)?;
        let hardware_id = need(key::HARDWARE_ID)?;
        let allow = get(key::ALLOW_HTTP)?
            .as_deref()
            .and_then(parse_bool)
            .unwrap_or(false);
        let origin =
            Origin::parse(&url, allow).map_err(|e| Failure::new(Class::Input, e.to_string()))?;
        let led_name = |name: &str| -> Result<Option<String>, Failure> {
            Ok(get(name)?.filter(|l| !l.trim().is_empty() && l != "none"))
        };
        let sync = Config {
            batch_records: number(key::BATCH_RECORDS)? as usize,
            batch_bytes: number(key::BATCH_BYTES)? as usize,
            integration_wait: Duration::from_secs(number(key::INTEGRATION_WAIT)?),
            init_poll: Duration::from_secs(number(key::INIT_POLL)?),
            check_every: number(key::CHECK_EVERY)? as u32,
            compare_every: number(key::COMPARE_EVERY)? as u32,
            ..Config::default()
        };
        let base = number(key::RETRY_BASE)?;
        Ok(Settings {
            origin,
            url,
            site,
            credential_file: get(key::CREDENTIAL_FILE)?.map(PathBuf::from),
            hardware_id,
            net: Network {
                tls: Tls {
                    ca_file: get(key::CA_FILE)?.map(PathBuf::from),
                },
                dns: Dns::configured(get(key::DNS)?.as_deref())
                    .map_err(|m| Failure::new(Class::Input, m))?,
            },
            led_dir: PathBuf::from(get(key::LED_DIR)?.unwrap_or_else(|| led::SYS_LEDS.into())),
            led: led_name(key::LED)?,
            attention_led: led_name(key::ATTENTION_LED)?,
            sync,
            retry_delays: (0..3).map(|i| Duration::from_millis(base << i)).collect(),
            progress_every: Duration::from_secs(number(key::PROGRESS_SECS)?),
            metrics_file: get(key::METRICS_FILE)?
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
        })
    }

    /// The settings of a configuration file, with the process's environment.
    pub fn from_conf(conf: &Conf) -> Result<Settings, Failure> {
        let stored = |k: &str| conf.get(k).map(str::to_string);
        Settings::resolve(&stored, &|v: &str| std::env::var(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(stored: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Settings, Failure> {
        let s: HashMap<String, String> = stored
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(&|k| s.get(k).cloned(), &|k| e.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("central_url", "https://central.example.org/msupply"),
        ("site_name", "kaw"),
        ("hardware_id", "HW1"),
    ];

    #[test]
    fn defaults_fill_what_is_not_set() {
        let s = resolve(BASE, &[]).unwrap();
        assert_eq!(s.origin.host, "central.example.org");
        assert_eq!(s.sync, Config::default());
        assert_eq!(s.retry_delays, crate::wire::client::RETRY_DELAYS.to_vec());
        assert_eq!(s.led, None);
        assert_eq!(s.led_dir, PathBuf::from("/sys/class/leds"));
        assert_eq!(s.credential_file, None, "a described default is no value");
        let s = resolve(BASE, &[("FIELDSYNC_CREDENTIAL_FILE", "/run/c")]).unwrap();
        assert_eq!(s.credential_file, Some(PathBuf::from("/run/c")));
    }

    #[test]
    fn environment_wins_over_stored_rows() {
        let mut stored = BASE.to_vec();
        stored.push(("led", "ACT"));
        let s = resolve(&stored, &[("FIELDSYNC_LED", "PWR")]).unwrap();
        assert_eq!(s.led.as_deref(), Some("PWR"));
        let s = resolve(&stored, &[("FIELDSYNC_LED", "none")]).unwrap();
        assert_eq!(s.led, None);
    }

    #[test]
    fn a_bad_value_names_key_value_and_fix() {
        let mut stored = BASE.to_vec();
        stored.push(("batch_records", "lots"));
        let e = resolve(&stored, &[]).unwrap_err();
        assert_eq!(e.class, Class::Input);
        assert_eq!(
            e.message,
            "setting batch_records = \"lots\" is not valid: a whole number from 1 to 1024; \
             fix it with `fieldsync config set batch_records VALUE`"
        );
        let mut stored = BASE.to_vec();
        stored.push(("retry_base_ms", "5"));
        stored.push(("integration_wait_secs", "2"));
        let s = resolve(&stored, &[]).unwrap();
        assert_eq!(s.retry_delays, [5, 10, 20].map(Duration::from_millis));
        assert_eq!(s.sync.integration_wait, Duration::from_secs(2));
    }

    #[test]
    fn nothing_stored_is_not_configured() {
        let e = resolve(&[], &[]).unwrap_err();
        assert_eq!(e.class, Class::NotConfigured);
        assert!(e.message.contains("fieldsync init"), "{}", e.message);
    }

    #[test]
    fn every_key_documents_itself_and_accepts_its_default() {
        for k in KEYS {
            assert!(!k.doc.is_empty() && !k.unit.is_empty(), "{}", k.name);
            if !k.default.is_empty() && !DESCRIBED_DEFAULTS.contains(&k.name) {
                k.check(k.default).unwrap();
            }
        }
    }
}
