//! The agent's configuration, with one home: every setting a deployer or a test
//! may touch is a row of [`KEYS`] (its stored name, environment override,
//! default, unit, who sets it, and how it is checked), and [`Settings::resolve`]
//! builds the typed settings from stored rows and the environment in one pure
//! function. A malformed value is an error that names the key, the value and the
//! fix — never silently dropped.
//!
//! Precedence: the environment (the package's `/etc/default/fieldsync`, read by
//! systemd) over the stored row over the default. Command-line options that
//! configure a single run (`--db`, `-v`, `--log-file`, `run --interval`) are
//! parsed in the binary and passed in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Class;
use crate::field::led;
use crate::store::{self, key, Store, StoreError};
use crate::sync::batch;
use crate::sync::Config;
use crate::wire::credentials;
use crate::wire::credentials::Secret;
use crate::wire::transport::{Origin, Tls};

use super::{CmdResult, Failure};

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
        name: key::LED,
        env: Some("FIELDSYNC_LED"),
        default: "",
        unit: "LED name",
        set_by: SetBy::Init,
        doc: "the status LED under /sys/class/leds (`ACT` on a Pi); empty or `none`: no LED",
        check: any,
    },
    Key {
        name: key::ATTENTION_LED,
        env: Some("FIELDSYNC_ATTENTION_LED"),
        default: "",
        unit: "LED name",
        set_by: SetBy::Init,
        doc: "a second LED lit only when a person must act (`PWR` on a Pi)",
        check: any,
    },
    Key {
        name: "led_dir",
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
        name: "busy_timeout_ms",
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
    pub digest: Secret,
    pub hardware_id: String,
    pub tls: Tls,
    pub led_dir: PathBuf,
    pub led: Option<String>,
    pub attention_led: Option<String>,
    pub sync: Config,
    pub retry_delays: Vec<Duration>,
}

pub fn lookup(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

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
    if let Some(v) = stored(k.name) {
        return (Some(v), Source::Stored);
    }
    let d = (!k.default.is_empty() && k.name != key::HARDWARE_ID).then(|| k.default.to_string());
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
        let digest = stored(key::PASSWORD_DIGEST).ok_or_else(|| {
            Failure::new(
                Class::NotConfigured,
                "not configured (no site password stored): run `fieldsync init` first",
            )
        })?;
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
            ..Config::default()
        };
        let base = number(key::RETRY_BASE)?;
        Ok(Settings {
            origin,
            url,
            site,
            digest: Secret::new(digest),
            hardware_id,
            tls: Tls {
                ca_file: get(key::CA_FILE)?.map(PathBuf::from),
            },
            led_dir: PathBuf::from(get("led_dir")?.unwrap_or_else(|| led::SYS_LEDS.into())),
            led: led_name(key::LED)?,
            attention_led: led_name(key::ATTENTION_LED)?,
            sync,
            retry_delays: (0..3).map(|i| Duration::from_millis(base << i)).collect(),
        })
    }

    /// The settings of the store at hand, with the process's environment.
    pub fn load(store: &Store) -> Result<Settings, Failure> {
        let rows = store.settings()?;
        let stored = |k: &str| rows.get(k).cloned();
        Settings::resolve(&stored, &|v: &str| std::env::var(v).ok())
    }
}

/// Where a password comes from; never the command line (`ps` would show it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
    Stdin,
}

impl PasswordSource {
    /// From the three mutually exclusive options every binary offers.
    pub fn from_options(
        file: Option<PathBuf>,
        env: Option<String>,
        stdin: bool,
    ) -> Result<PasswordSource, String> {
        match (file, env, stdin) {
            (Some(f), None, false) => Ok(PasswordSource::File(f)),
            (None, Some(v), false) => Ok(PasswordSource::Env(v)),
            (None, None, true) => Ok(PasswordSource::Stdin),
            (None, None, false) => Err(
                "give the password with --password-file F, --password-env VAR or --password-stdin (never on the command line)"
                    .into(),
            ),
            _ => Err("give the password one way only: --password-file, --password-env or --password-stdin".into()),
        }
    }

    /// Reads it. One trailing line ending is removed (a file written by `echo`);
    /// anything else, spaces included, is part of the password.
    pub fn read(&self) -> Result<String, String> {
        let text = match self {
            PasswordSource::File(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("password file {}: {e}", f.display()))?,
            PasswordSource::Env(v) => {
                std::env::var(v).map_err(|_| format!("environment variable {v} is not set"))?
            }
            PasswordSource::Stdin => {
                let mut s = String::new();
                std::io::stdin()
                    .read_line(&mut s)
                    .map_err(|e| format!("reading the password from stdin: {e}"))?;
                s
            }
        };
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text)
            .to_string();
        if text.is_empty() {
            return Err("the password is empty; give the one the administrator set".into());
        }
        Ok(text)
    }
}

// ---- commands -----------------------------------------------------------------

/// What `fieldsync init` sets.
pub struct InitOptions {
    pub url: String,
    pub site: String,
    pub password: String,
    pub allow_insecure_http: bool,
    pub led: Option<String>,
    pub attention_led: Option<String>,
}

/// `fieldsync init`: the central, the site and its password, the LEDs; derives
/// the hardware id once. Re-running it with a new password keeps all data.
pub fn init(db: &Path, o: &InitOptions) -> CmdResult {
    Origin::parse(&o.url, o.allow_insecure_http)
        .map_err(|e| Failure::new(Class::Input, e.to_string()))?;
    for (k, v) in [
        (key::CENTRAL_URL, o.url.as_str()),
        (key::SITE_NAME, o.site.as_str()),
    ] {
        lookup(k)
            .expect("in KEYS")
            .check(v)
            .map_err(|m| Failure::new(Class::Input, m))?;
    }
    if o.password.is_empty() {
        return Err(Failure::new(
            Class::Input,
            "the password is empty; give the one the administrator set",
        ));
    }
    let mut store = Store::open(db)?;
    let tx = store.tx()?;
    // Changing the site of an initialised store would mix two sites' data in one file.
    if let (Some(old_url), Some(old_site)) = (
        store::get_setting(&tx, key::CENTRAL_URL)?,
        store::get_setting(&tx, key::SITE_NAME)?,
    ) {
        let initialised = store::get_setting(&tx, key::INIT_STATE)?.is_some();
        if initialised && !old_site.eq_ignore_ascii_case(&o.site) {
            return Err(Failure::new(
                Class::Input,
                format!("this database belongs to site {old_site} ({old_url}); use a new --db for site {}", o.site),
            ));
        }
    }
    store::set_setting(&tx, key::CENTRAL_URL, &o.url)?;
    store::set_setting(&tx, key::SITE_NAME, &o.site)?;
    store::set_setting(
        &tx,
        key::PASSWORD_DIGEST,
        credentials::password_digest(&o.password).expose(),
    )?;
    store::set_setting(
        &tx,
        key::ALLOW_HTTP,
        if o.allow_insecure_http { "1" } else { "0" },
    )?;
    if store::get_setting(&tx, key::HARDWARE_ID)?.is_none() {
        store::set_setting(
            &tx,
            key::HARDWARE_ID,
            &credentials::derive_hardware_id(credentials::MACHINE_ID_PATHS),
        )?;
    }
    if let Some(l) = &o.led {
        store::set_setting(&tx, key::LED, l)?;
    }
    if let Some(l) = &o.attention_led {
        store::set_setting(&tx, key::ATTENTION_LED, l)?;
    }
    tx.commit()
        .map_err(|e| StoreError::sqlite("saving settings", e))?;
    let hw = store.setting(key::HARDWARE_ID)?.unwrap_or_default();
    println!(
        "configured site {} at {} (hardware id {hw}); run `fieldsync sync`",
        o.site, o.url
    );
    Ok(())
}

/// `fieldsync config`: every setting with its effective value and where it came from.
pub fn list(db: &Path, json: bool) -> CmdResult {
    let store = Store::open_configured(db)?;
    let rows = store.settings()?;
    let stored = |k: &str| rows.get(k).cloned();
    let env = |v: &str| std::env::var(v).ok();
    let mut out = Vec::new();
    for k in KEYS {
        let (value, source) = effective(k, &stored, &env);
        let source = match source {
            Source::Environment => format!("environment {}", k.env.unwrap_or("")),
            Source::Stored => "stored".into(),
            Source::Default => "default".into(),
        };
        out.push((k, value.unwrap_or_default(), source));
    }
    if json {
        let v: Vec<_> = out
            .iter()
            .map(|(k, value, source)| {
                serde_json::json!({"key": k.name, "value": value, "source": source,
                                   "unit": k.unit, "default": k.default, "set_by": k.set_by.as_str()})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for (k, value, source) in out {
            println!("{:<22} {:<34} ({source})", k.name, value);
        }
    }
    Ok(())
}

/// `fieldsync config get KEY`: the effective value alone, for scripts.
pub fn get(db: &Path, name: &str) -> CmdResult {
    let k = lookup(name).ok_or_else(|| {
        Failure::new(
            Class::Input,
            format!("no setting {name:?}; `fieldsync config` lists them"),
        )
    })?;
    let store = Store::open_configured(db)?;
    let rows = store.settings()?;
    let (value, _) = effective(k, &|n: &str| rows.get(n).cloned(), &|v: &str| {
        std::env::var(v).ok()
    });
    println!("{}", value.unwrap_or_default());
    Ok(())
}

/// `fieldsync config set KEY VALUE`, checked as `sync` would read it.
pub fn set(db: &Path, name: &str, value: &str) -> CmdResult {
    let k = settable(name)?;
    k.check(value).map_err(|m| Failure::new(Class::Input, m))?;
    let store = Store::open_configured(db)?;
    store.set_setting(k.name, value)?;
    if let Some(var) = k.env.filter(|v| std::env::var_os(v).is_some()) {
        println!(
            "{} = {value} (note: the environment's {var} overrides it)",
            k.name
        );
    } else {
        println!("{} = {value}", k.name);
    }
    Ok(())
}

/// `fieldsync config unset KEY`: back to the default.
pub fn unset(db: &Path, name: &str) -> CmdResult {
    let k = settable(name)?;
    if k.set_by == SetBy::Init && k.default.is_empty() {
        return Err(Failure::new(
            Class::Input,
            format!(
                "{} has no default; change it with `fieldsync config set` or `fieldsync init`",
                k.name
            ),
        ));
    }
    let store = Store::open_configured(db)?;
    store.unset_setting(k.name)?;
    println!("{} back to its default ({})", k.name, k.default);
    Ok(())
}

fn settable(name: &str) -> Result<&'static Key, Failure> {
    match lookup(name) {
        Some(k) if k.set_by != SetBy::Environment && k.name != key::SITE_NAME => Ok(k),
        Some(k) if k.name == key::SITE_NAME => Err(Failure::new(
            Class::Input,
            "the site name is set with `fieldsync init` (with its password)",
        )),
        Some(k) => Err(Failure::new(
            Class::Input,
            format!(
                "{} is read from the environment ({})",
                k.name,
                k.env.unwrap_or("")
            ),
        )),
        None => Err(Failure::new(
            Class::Input,
            format!("no setting {name:?}; `fieldsync config` lists them"),
        )),
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
        ("password_digest", "abc"),
    ];

    #[test]
    fn defaults_fill_what_is_not_set() {
        let s = resolve(BASE, &[]).unwrap();
        assert_eq!(s.origin.host, "central.example.org");
        assert_eq!(s.sync, Config::default());
        assert_eq!(s.retry_delays, crate::wire::client::RETRY_DELAYS.to_vec());
        assert_eq!(s.led, None);
        assert_eq!(s.led_dir, PathBuf::from("/sys/class/leds"));
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
            if !k.default.is_empty() && k.name != key::HARDWARE_ID {
                k.check(k.default).unwrap();
            }
        }
    }

    #[test]
    fn passwords_lose_one_line_ending_only() {
        let dir = std::env::temp_dir().join(format!("fs-pw-{}", std::process::id()));
        for (text, want) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw  \n", "pw  "),
            ("pw\n\n", "pw\n"),
        ] {
            std::fs::write(&dir, text).unwrap();
            assert_eq!(PasswordSource::File(dir.clone()).read().unwrap(), want);
        }
        std::fs::write(&dir, "\n").unwrap();
        assert!(PasswordSource::File(dir.clone())
            .read()
            .unwrap_err()
            .contains("empty"));
        std::fs::remove_file(dir).unwrap();
        assert!(PasswordSource::from_options(None, None, false).is_err());
        assert!(PasswordSource::from_options(Some("f".into()), Some("V".into()), false).is_err());
    }
}
