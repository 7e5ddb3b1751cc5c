//! The directory of live workers on PostgreSQL (`chronicle_workers`): an
//! offer's notification names one live worker with spare capacity, in
//! turn, so that one worker claims instead of every worker; full, expired
//! and removed workers are not named; with none known, an offer names no
//! one (every worker claims); a worker can wake every worker itself. On
//! redb the directory calls do nothing.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chronicle_store::{Change, LeaseOp, Seq, Store, StoreOptions, StreamId, WriteRequest};
use common::{ev, fresh_postgres};

fn open(url: &str) -> Store {
    Store::open(url, StoreOptions::default()).expect("open the PostgreSQL store")
}

/// Offer one new run from `offerer` (a commit of its own) and return the
/// change `changes` hears of it (within 5 s).
async fn offer(
    offerer: &Store,
    changes: &mut tokio::sync::broadcast::Receiver<Arc<Change>>,
) -> Arc<Change> {
    let run = StreamId::Run(uuid::Uuid::now_v7());
    let mut req = WriteRequest::append(run.clone(), Seq(0), vec![ev("created")]);
    req.leases.push(LeaseOp::Offer { run: run.key() });
    offerer.write(req).await.unwrap();
    loop {
        let c = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("the offer is heard within 5 s")
            .unwrap();
        if c.streams.as_deref() == Some(&[run.key()][..]) {
            assert!(c.offers, "an offer is announced as one: {c:?}");
            return c;
        }
    }
}

/// Offers until `done` holds of the worker the last two offers named
/// (the directory is read in the background when an offer needs it and
/// its copy is a second old); at most 5 s. The last name.
async fn offer_until(
    offerer: &Store,
    changes: &mut tokio::sync::broadcast::Receiver<Arc<Change>>,
    what: &str,
    done: impl Fn(&Option<String>, &Option<String>) -> bool,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut before = offer(offerer, changes).await.offered_to.clone();
    loop {
        let named = offer(offerer, changes).await.offered_to.clone();
        if done(&before, &named) {
            return named;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = named;
    }
}

#[test]
fn offers_name_the_live_workers_with_spare_capacity_in_turn() {
    let url = fresh_postgres();
    let offerer = open(&url);
    let listener = open(&url);
    let directory = open(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut changes = listener.subscribe_changes();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // No worker registered: an offer names no one.
        let c = offer(&offerer, &mut changes).await;
        assert_eq!(c.offered_to, None, "{c:?}");

        directory.register_worker("host/1/a", 60_000, 4).unwrap();
        directory.register_worker("host/2/b", 60_000, 1).unwrap();
        directory.register_worker("host/3/full", 60_000, 0).unwrap();
        directory.register_worker("host/4/expired", 1, 4).unwrap();
        offer_until(&offerer, &mut changes, "an offer names a worker", |_, n| {
            n.is_some()
        })
        .await;
        let mut named = Vec::new();
        for _ in 0..6 {
            named.push(offer(&offerer, &mut changes).await.offered_to.clone());
        }
        let live: BTreeSet<Option<String>> = named.iter().cloned().collect();
        assert_eq!(
            live,
            BTreeSet::from([Some("host/1/a".to_string()), Some("host/2/b".to_string())]),
            "offers name the live workers with spare capacity, only: {named:?}"
        );
        assert!(named.windows(2).all(|w| w[0] != w[1]), "in turn: {named:?}");

        // A worker removed (it stopped) is named no more once the
        // directory is read again (at most a second later): named in turn
        // with another, it would never be skipped twice in a row.
        directory.unregister_worker("host/1/a").unwrap();
        let b = Some("host/2/b".to_string());
        offer_until(
            &offerer,
            &mut changes,
            "the directory is read again",
            |x, y| *x == b && *y == b,
        )
        .await;
        for _ in 0..4 {
            let c = offer(&offerer, &mut changes).await;
            assert_eq!(c.offered_to.as_deref(), Some("host/2/b"), "{c:?}");
        }

        // A worker's renewal replaces its row: full now, it is named no
        // more; no worker left with spare capacity, no one is named.
        directory.register_worker("host/2/b", 60_000, 0).unwrap();
        offer_until(&offerer, &mut changes, "an offer names no one", |_, n| {
            n.is_none()
        })
        .await;
        let c = offer(&offerer, &mut changes).await;
        assert_eq!(c.offered_to, None, "{c:?}");

        // A worker wakes every worker: an offer naming no one, with no
        // events.
        directory.announce_offers().unwrap();
        let c = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("heard within 5 s")
            .unwrap();
        assert!(c.offers && c.offered_to.is_none(), "{c:?}");
        assert_eq!(c.streams, Some(Vec::new()), "{c:?}");
    });
    // What the directory holds: one row per registered worker, updated in
    // place, the removed one gone.
    let rows = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(
                "SELECT owner, spare FROM chronicle_workers ORDER BY owner",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        rows,
        [
            ("host/2/b".to_string(), 0),
            ("host/3/full".to_string(), 0),
            ("host/4/expired".to_string(), 4)
        ]
    );
}

#[test]
fn the_directory_does_nothing_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(&dir.path().join("log.redb"));
    store.register_worker("w", 1000, 4).unwrap();
    store.announce_offers().unwrap();
    store.unregister_worker("w").unwrap();
    assert_eq!(store.claim_leases("w", 4, 1000, None).unwrap(), Vec::new());
}
