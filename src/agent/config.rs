//! The commands that configure a device: `init` (the central, the site and its
//! password) and `config` (list, get, set, unset one setting, checked as a sync
//! reads it), and the one way every binary reads a password.

use std::path::{Path, PathBuf};

use crate::error::Class;
use crate::store::{InitState, Store};
use crate::wire::credentials;
use crate::wire::transport::Origin;

use super::conf::Conf;
use super::credential;
use super::settings::{effective, key, lookup, Key, SetBy, Source, KEYS};
use super::{CmdResult, Failure};

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
                use std::io::{IsTerminal, Write};
                let mut s = String::new();
                // A person at a terminal gets a prompt and no echo; a pipe
                // (a deployment script) gets neither.
                let hidden = std::io::stdin().is_terminal().then(|| {
                    eprint!("password: ");
                    let _ = std::io::stderr().flush();
                    EchoOff::new()
                });
                let read = std::io::stdin().read_line(&mut s);
                if hidden.is_some() {
                    drop(hidden);
                    eprintln!();
                }
                read.map_err(|e| format!("reading the password from stdin: {e}"))?;
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

/// What to tell a person who gave a central URL with a path: the path is
/// dropped (§2: paths are absolute on the configured origin, as existing
/// clients do), so they know which address is asked, never a silent drop.
fn path_note(url: &str, origin: &Origin) -> Option<String> {
    Origin::path_in(url).map(|path| {
        format!(
            "note: the path {path} of {url} is not used: the v5 API is asked at {}",
            origin.url("/sync/v5/")
        )
    })
}

/// The terminal on stdin without echo, restored when dropped. Through `stty`
/// on that terminal (the crate has no unsafe code for termios): where `stty`
/// is missing the password echoes, as it did before.
struct EchoOff(bool);

impl EchoOff {
    fn new() -> EchoOff {
        EchoOff(stty("-echo"))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.0 {
            stty("echo");
        }
    }
}

fn stty(setting: &str) -> bool {
    std::process::Command::new("stty")
        .arg(setting)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
    let origin = Origin::parse(&o.url, o.allow_insecure_http)
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
    let mut conf = Conf::open(db, &mut store)?;
    // Changing the site of an initialised store would mix two sites' data in
    // one file: refused before anything is written (a refused init changes
    // nothing, the credential included).
    if let Some(old_site) = conf.get(key::SITE_NAME) {
        let known = store.init_state()? != InitState::Uninitialised || store.identity()?.is_some();
        if known && !old_site.eq_ignore_ascii_case(&o.site) {
            return Err(Failure::new(
                Class::Input,
                format!(
                    "this database belongs to site {old_site} ({}); use a new --db for site {}; nothing was changed",
                    conf.get(key::CENTRAL_URL).unwrap_or("?"),
                    o.site
                ),
            ));
        }
    }
    // The credential before the settings, apart from the database (see
    // `credential`): a kill before the settings are saved leaves a re-runnable
    // init, never a site without one.
    let configured = std::env::var("FIELDSYNC_CREDENTIAL_FILE")
        .ok()
        .or(conf.get(key::CREDENTIAL_FILE).map(str::to_string))
        .map(PathBuf::from);
    let places = credential::Places::from_env(db, configured);
    credential::write(&places.file, &credentials::password_digest(&o.password))?;
    if conf.get(key::CENTRAL_URL) != Some(o.url.as_str()) {
        // Another central: what the old one said of gzip bodies no longer holds.
        store.set_central_gzip(None)?;
    }
    conf.set(key::CENTRAL_URL, &o.url);
    conf.set(key::SITE_NAME, &o.site);
    conf.set(
        key::ALLOW_HTTP,
        if o.allow_insecure_http { "1" } else { "0" },
    );
    if conf.get(key::HARDWARE_ID).is_none() {
        conf.set(
            key::HARDWARE_ID,
            &credentials::derive_hardware_id(credentials::MACHINE_ID_PATHS),
        );
    }
    if let Some(l) = &o.led {
        conf.set(key::LED, l);
    }
    if let Some(l) = &o.attention_led {
        conf.set(key::ATTENTION_LED, l);
    }
    conf.save()?;
    // A digest an older fieldsync kept in the database goes (the file now holds
    // the new one).
    credential::migrate(&mut store, &places.file)?;
    let hw = conf.get(key::HARDWARE_ID).unwrap_or_default();
    println!(
        "configured site {} at {} (hardware id {hw}); the site credential is in {}; run `fieldsync sync`",
        o.site,
        o.url,
        places.file.display()
    );
    if let Some(note) = path_note(&o.url, &origin) {
        println!("{note}");
    }
    if places.systemd.as_ref().is_some_and(|p| p.exists()) {
        println!(
            "note: this process has a systemd credential ({}), which wins over the file; update it too",
            places.systemd.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

/// `fieldsync config`: every setting with its effective value and where it came from.
pub fn list(db: &Path, json: bool) -> CmdResult {
    let conf = configured(db)?;
    let stored = |k: &str| conf.get(k).map(str::to_string);
    let env = |v: &str| std::env::var(v).ok();
    let mut out = Vec::new();
    for k in KEYS {
        let (value, source) = effective(k, &stored, &env);
        let source = match source {
            Source::Environment => format!("environment {}", k.env.unwrap_or("")),
            Source::Stored => "configuration file".into(),
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
    let conf = configured(db)?;
    let (value, _) = effective(k, &|n: &str| conf.get(n).map(str::to_string), &|v: &str| {
        std::env::var(v).ok()
    });
    println!("{}", value.unwrap_or_default());
    Ok(())
}

/// `fieldsync config set KEY VALUE`, checked as `sync` would read it.
pub fn set(db: &Path, name: &str, value: &str) -> CmdResult {
    let k = settable(name)?;
    k.check(value).map_err(|m| Failure::new(Class::Input, m))?;
    let note = (k.name == key::CENTRAL_URL)
        .then(|| Origin::parse(value, true).ok())
        .flatten()
        .and_then(|origin| path_note(value, &origin));
    let mut store = Store::open_configured(db)?;
    let mut conf = Conf::open(db, &mut store)?;
    conf.set(k.name, value);
    conf.save()?;
    if k.name == key::CENTRAL_URL {
        store.set_central_gzip(None)?;
    }
    if let Some(var) = k.env.filter(|v| std::env::var_os(v).is_some()) {
        println!(
            "{} = {value} (note: the environment's {var} overrides it)",
            k.name
        );
    } else {
        println!("{} = {value}", k.name);
    }
    if let Some(note) = note {
        println!("{note}");
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
    let mut store = Store::open_configured(db)?;
    let mut conf = Conf::open(db, &mut store)?;
    if conf.unset(k.name) {
        conf.save()?;
    }
    println!("{} back to its default ({})", k.name, k.default);
    Ok(())
}

/// The configuration of a database that exists (moved out of an older
/// database the first time).
fn configured(db: &Path) -> Result<Conf, Failure> {
    let mut store = Store::open_configured(db)?;
    Conf::open(db, &mut store)
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

    #[test]
    fn passwords_lose_one_line_ending_only() {
        let tmp = crate::testkit::tempdir::TempDir::new("pw");
        let dir = tmp.join("password");
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
