//! Objects that do not belong where they are stored (another record's
//! update or reference list copied into a record's folder, a file name whose
//! time is not the update's commit time) are typed errors naming the object,
//! never read as the record's own history, references or referrers.
#![allow(clippy::unwrap_used)] // helpers outside #[test] functions

use std::sync::Arc;

use overseer_core::object_store::path::Path;
use overseer_core::object_store::{ObjectStoreExt, PutPayload};
use overseer_core::testing::LinesConsumer;
use overseer_core::{
    Compression, Dal, Error, Ingestor, RecordKey, Reference, References, SourceId, Store, Timestamp,
};

async fn store_with(lines: &[&str]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path())
        .unwrap()
        .with_compression(Compression::None);
    let ingestor = Ingestor::new(
        store.clone(),
        SourceId::new("app").unwrap(),
        Arc::new(LinesConsumer),
        References::new(),
    );
    let batch: Vec<_> = lines.iter().map(|l| l.as_bytes().to_vec().into()).collect();
    ingestor.ingest_and_ack(&batch).await.unwrap();
    (dir, store)
}

async fn only_update(store: &Store, id: &str) -> (String, bytes::Bytes) {
    let key = RecordKey::new("lines", id).unwrap();
    let objects = store.list_updates(&key, Timestamp::MAX).await.unwrap();
    assert_eq!(objects.len(), 1);
    let path = objects[0].path.clone();
    let bytes = store
        .object_store()
        .get(&Path::from(path.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (path, bytes)
}

#[tokio::test]
async fn another_record_s_update_in_a_record_s_prefix_is_an_error() {
    let (_dir, store) = store_with(&["a 10", "b 20"]).await;
    let (b_path, b_bytes) = only_update(&store, "b").await;
    // The same file name, under `a`'s prefix.
    let name = b_path.rsplit('/').next().unwrap();
    let foreign = format!("updates/lines/a/{name}");
    store
        .object_store()
        .put(&Path::from(foreign.as_str()), PutPayload::from_bytes(b_bytes))
        .await
        .unwrap();

    let dal = Dal::new(store.clone()).with_builder(LinesConsumer);
    let a = RecordKey::new("lines", "a").unwrap();
    let state = dal.state_at(&a, Timestamp::MAX).await;
    match state {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, foreign),
        other => panic!("a's state was read from b's update: {other:?}"),
    }
    let history = dal.history(&a, Timestamp::MAX).await;
    assert!(matches!(history, Err(Error::Corrupt { .. })), "{history:?}");
    // The rest of the store still reads.
    let b = RecordKey::new("lines", "b").unwrap();
    assert!(dal.state_at(&b, Timestamp::MAX).await.unwrap().is_some());
}

#[tokio::test]
async fn an_update_whose_file_name_is_not_its_commit_time_is_an_error() {
    let (_dir, store) = store_with(&["a 50"]).await;
    let (path, bytes) = only_update(&store, "a").await;
    // The same object, named as if committed at 5 s rather than 50 s.
    let (dir, name) = path.rsplit_once('/').unwrap();
    let early = format!("{dir}/{:020}{}", 5_000_000, &name[20..]);
    store
        .object_store()
        .put(&Path::from(early.as_str()), PutPayload::from_bytes(bytes))
        .await
        .unwrap();
    store
        .object_store()
        .delete(&Path::from(path.as_str()))
        .await
        .unwrap();

    let dal = Dal::new(store.clone()).with_builder(LinesConsumer);
    let a = RecordKey::new("lines", "a").unwrap();
    // As of 10 s the record does not exist yet (its only update commits at
    // 50 s): answering with the 50 s state is a silent wrong answer.
    let state = dal.state_at(&a, Timestamp::from_secs(10)).await;
    match state {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, early),
        other => panic!("the state as of 10 s holds an update committed at 50 s: {other:?}"),
    }
}

fn key(model: &str, id: &str) -> RecordKey {
    RecordKey::new(model, id).unwrap()
}

async fn copy_only_object(store: &Store, from: &str, to_dir: &str) -> String {
    let listed: Vec<_> =
        futures::TryStreamExt::try_collect(store.object_store().list(Some(&Path::from(from))))
            .await
            .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let location = &listed[0].location;
    let bytes = store
        .object_store()
        .get(location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let copy = format!("{to_dir}/{}", location.filename().unwrap());
    store
        .object_store()
        .put(&Path::from(copy.as_str()), PutPayload::from_bytes(bytes))
        .await
        .unwrap();
    copy
}

#[tokio::test]
async fn another_record_s_reference_list_is_not_part_of_a_master_document() {
    let store = Store::in_memory();
    let to = |id: &str| Reference {
        field: "transfer_id".into(),
        target: key("transfers", id),
    };
    let (a, b) = (key("ledger_entries", "a"), key("ledger_entries", "b"));
    store
        .add_references(&a, &[to("t1")], Timestamp::from_secs(1))
        .await
        .unwrap();
    store
        .add_references(&b, &[to("t2")], Timestamp::from_secs(2))
        .await
        .unwrap();

    let copy = copy_only_object(&store, "refs/ledger_entries/b", "refs/ledger_entries/a").await;
    match store.references(&a).await {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, copy),
        other => panic!("a's master document: {other:?}"),
    }

    let copy = copy_only_object(&store, "referrers/transfers/t2", "referrers/transfers/t1").await;
    match store.referrers(&key("transfers", "t1")).await {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, copy),
        other => panic!("t1's referrers: {other:?}"),
    }
}
