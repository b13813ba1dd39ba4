//! The cycle's boundary cases, in process: the agent's real cycle against the real
//! reference central through an in-process transport, in virtual time — no
//! sockets, no sleeps. Each case names what it proves; the faults come from the
//! transport's hook (lose an answer, answer in the central's place, fail the link).

use std::sync::Arc;
use std::time::Duration;

use fieldsync::central::Central;
use fieldsync::clock::Virtual;
use fieldsync::error::Class;
use fieldsync::store::Store;
use fieldsync::sync::{self, Config, Report};
use fieldsync::testkit::inprocess::{Exchange, Fate, InProcess};
use fieldsync::wire::client::Client;
use fieldsync::wire::credentials::{basic_auth, password_digest};
use fieldsync::wire::transport::Method;
use fieldsync::wire::TransportError;
use serde_json::json;

struct Site {
    _dir: fieldsync::testkit::tempdir::TempDir,
    central: Central,
    store: Store,
    client: Client<InProcess>,
    clock: Arc<Virtual>,
    cfg: Config,
}

impl Site {
    /// A central with site `kaw` and its active store `S`, and an agent that has
    /// completed its first sync.
    fn new() -> Site {
        let dir = fieldsync::testkit::tempdir::TempDir::new("cycle");
        let mut central = Central::open(&dir.join("central.sqlite")).unwrap();
        central.background_integration = false;
        central.add_site("kaw", "KAW", "pw").unwrap();
        central.add_store("S", "S", "Store S", Some("kaw")).unwrap();
        central
            .put("item", &json!({"ID": "I1", "item_name": "Paracetamol"}))
            .unwrap();
        let clock = Arc::new(Virtual::default());
        let client = Client::new(
            InProcess::new(central.clone()),
            basic_auth("kaw", &password_digest("pw")),
            "HW".into(),
            clock.clone(),
        );
        let mut site = Site {
            _dir: dir,
            central,
            store: Store::open_in_memory().unwrap(),
            client,
            clock,
            cfg: Config::default(),
        };
        let r = site.sync();
        assert_eq!(r.class, None, "first sync: {r:?}");
        assert!(r.initialised);
        site
    }

    fn sync(&mut self) -> Report {
        sync::run(
            &mut self.store,
            &mut self.client,
            &self.cfg,
            || Ok(()),
            &mut |_| {},
        )
    }

    fn hook(&mut self, hook: impl FnMut(&Exchange<'_>) -> Fate + 'static) {
        self.client.transport_mut().set_hook(Box::new(hook));
    }

    fn seen(&self) -> Vec<String> {
        self.client.transport().seen.clone()
    }

    /// `n` new stock lines, ids starting with `prefix`.
    fn local(&mut self, prefix: &str, n: usize) {
        for i in 0..n {
            self.store
                .put("item_line", &json!({"ID": format!("{prefix}{i:04}"), "store_ID": "S", "item_ID": "I1", "quantity": i}))
                .unwrap();
        }
    }

    fn central_count(&self, table: &str) -> i64 {
        self.central
            .conn()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM record WHERE table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn outbox(&self) -> u64 {
        self.store.outbox_pending().unwrap()
    }
}

#[test]
fn an_idle_cycle_is_five_requests_and_waits_before_pulling() {
    let mut s = Site::new();
    s.client.transport_mut().seen.clear();
    let r = s.sync();
    assert_eq!(r.class, None, "{r:?}");
    assert_eq!(
        s.seen(),
        [
            "GET /site",
            "POST /queued_records",
            "GET /site_status",
            "GET /central_records",
            "GET /queued_records"
        ],
        "§5.4 rev 2 (case 34): the wait follows every final push, before any pull"
    );
}

#[test]
fn exactly_one_batch_and_one_more_than_a_batch() {
    let mut s = Site::new();
    s.cfg.batch_records = 10;
    s.local("A", 10);
    let r = s.sync();
    assert_eq!((r.class, r.pushed, r.push_batches), (None, 10, 1), "{r:?}");
    s.local("B", 11);
    let r = s.sync();
    assert_eq!((r.class, r.pushed, r.push_batches), (None, 11, 2), "{r:?}");
    assert_eq!(s.central_count("item_line"), 21);
    assert_eq!(s.outbox(), 0);
}

#[test]
fn an_oversized_record_is_set_aside_and_the_rest_goes() {
    let mut s = Site::new();
    s.local("A", 3);
    // Under the store's limit, over the send limit once wrapped in its envelope.
    let pad = "x".repeat(fieldsync::store::MAX_RECORD_BYTES - 60);
    s.store
        .put(
            "item_line",
            &json!({"ID": "BIG", "store_ID": "S", "note": pad}),
        )
        .unwrap();
    let r = s.sync();
    assert_eq!(
        (r.class, r.pushed, r.too_large),
        (Some(Class::Rejected), 3, 1),
        "{r:?}"
    );
    let aside = s.store.outbox_list(true, 10).unwrap();
    assert_eq!(aside[0].id, "BIG");
    assert!(
        aside[0].reason.as_deref().unwrap().starts_with("too_large"),
        "{aside:?}"
    );
    assert_eq!(s.central_count("item_line"), 3);
}

#[test]
fn a_lost_acknowledgement_delivers_once() {
    let mut s = Site::new();
    s.central
        .put(
            "store",
            &json!({"ID": "S", "name": "Store S, renamed", "sync_id_remote_site": 2}),
        )
        .unwrap();
    // Every attempt reaches the central, every answer is lost.
    s.hook(|ex| {
        if ex.method == Method::Post && ex.endpoint() == "/acknowledged_records" {
            Fate::LoseAnswer
        } else {
            Fate::Pass
        }
    });
    let started = s.clock.elapsed();
    let r = s.sync();
    assert_eq!(r.class, Some(Class::Transient), "{r:?}");
    assert_eq!(
        (r.pulled_queue, r.integrated),
        (1, 1),
        "what arrived is integrated: {r:?}"
    );
    assert!(
        s.clock.elapsed() - started >= Duration::from_secs(14),
        "retried 2+4+8 s, in virtual time"
    );
    s.hook(|_| Fate::Pass);
    let r = s.sync();
    assert_eq!(
        (r.class, r.pulled_queue),
        (None, 0),
        "the central had deleted them: {r:?}"
    );
    // And when the acknowledgement never arrives at all, the entry comes again
    // and upserts harmlessly.
    s.central
        .put(
            "store",
            &json!({"ID": "S", "name": "Store S, again", "sync_id_remote_site": 2}),
        )
        .unwrap();
    s.hook(|ex| {
        if ex.endpoint() == "/acknowledged_records" {
            Fate::Fail(TransportError::unreachable("link down"))
        } else {
            Fate::Pass
        }
    });
    assert_eq!(s.sync().class, Some(Class::Offline));
    s.hook(|_| Fate::Pass);
    let r = s.sync();
    assert_eq!(
        (r.class, r.pulled_queue, r.integrated),
        (None, 1, 1),
        "{r:?}"
    );
    assert_eq!(
        s.store.get("store", "S").unwrap().unwrap()["name"],
        "Store S, again"
    );
}

#[test]
fn a_refusal_listing_nothing_stops_and_keeps_the_outbox() {
    let mut s = Site::new();
    s.local("A", 2);
    let body = json!({"error": {"code": "record_not_owned_by_site", "message": "no", "data": {"records": []}}});
    s.hook(move |ex| {
        if ex.method == Method::Post
            && ex.endpoint() == "/queued_records"
            && !ex.body.starts_with(br#"{"queueLength":0"#)
        {
            Fate::Answer(403, body.to_string().into_bytes())
        } else {
            Fate::Pass
        }
    });
    let r = s.sync();
    assert_eq!(r.class, Some(Class::Site), "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("listed no record"),
        "{r:?}"
    );
    assert_eq!(
        (s.outbox(), r.rejected),
        (2, 0),
        "nothing set aside, nothing lost"
    );
}

#[test]
fn a_page_longer_than_its_limit_is_accepted_whole() {
    let mut s = Site::new();
    let rows: Vec<_> = (1..=150)
        .map(|i| json!({"ID": 1000 + i, "tableName": "unit", "recordId": format!("U{i}"), "action": "update", "recordData": {"ID": format!("U{i}")}}))
        .collect();
    let page = json!({"maxCursor": 1150, "data": rows})
        .to_string()
        .into_bytes();
    let mut served = false;
    s.hook(move |ex| {
        if ex.endpoint() == "/central_records" && !served {
            served = true;
            Fate::Answer(200, page.clone())
        } else if ex.endpoint() == "/central_records" {
            Fate::Answer(200, br#"{"maxCursor":1150,"data":[]}"#.to_vec())
        } else {
            Fate::Pass
        }
    });
    let r = s.sync();
    assert_eq!((r.class, r.pulled_central), (None, 150), "{r:?}");
    assert!(s.store.get("unit", "U150").unwrap().is_some());
}

#[test]
fn a_stalled_page_halves_the_limit_and_the_next_cycle_goes_on() {
    let mut s = Site::new();
    let before = s.store.pull_limit().unwrap().unwrap_or(100);
    s.hook(|ex| {
        if ex.endpoint() == "/central_records" {
            Fate::Fail(TransportError::interrupted("no progress for 60 s"))
        } else {
            Fate::Pass
        }
    });
    let r = s.sync();
    assert_eq!(r.class, Some(Class::Transient), "{r:?}");
    let after = s.store.pull_limit().unwrap().unwrap();
    assert_eq!(
        after,
        (before / 2).max(20),
        "§9.3: a timeout halves the page"
    );
    s.hook(|_| Fate::Pass);
    assert_eq!(s.sync().class, None);
}
