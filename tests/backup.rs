//! Backups while serving: a backup taken under a write load holds every write
//! acknowledged before the call, and a server opened on a copy of it serves
//! them; names cannot leave `backup_dir`; backups are off without it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tierkv::clock::ManualClock;
use tierkv::proto::v1 as pb;
use tierkv::server::RunningServer;
use tonic::Code;

type AdminClient = pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

async fn admin_client(server: &TestServer) -> AdminClient {
    AdminClient::connect(server.server.endpoint())
        .await
        .unwrap()
}

/// Copies a directory tree (the backup), as an operator restoring it would.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_write_load_restores_every_acknowledged_write() {
    let backups = tempfile::tempdir().unwrap();
    let backup_root = backups.path().to_path_buf();
    let server = start_with(|config| config.backup_dir = Some(backup_root)).await;

    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = connect(&server.server.endpoint()).await;
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Some values are large enough to be stored out of line.
                let key = format!("user:load:{writer}:{n}");
                let value = if n % 10 == 0 {
                    "x".repeat(4096)
                } else {
                    n.to_string()
                };
                let version = client
                    .put(put_text(&key, &value))
                    .await
                    .unwrap()
                    .into_inner()
                    .version;
                acknowledged.lock().unwrap().push((key, version));
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 2_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let before: Vec<(String, u64)> = acknowledged.lock().unwrap().clone();
    let response = admin_client(&server)
        .await
        .backup(pb::BackupRequest {
            name: "under-load".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Keep writing a little after the backup, then stop.
    let after_backup = acknowledged.lock().unwrap().len();
    while acknowledged.lock().unwrap().len() < after_backup + 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(response.name, "under-load");
    assert!(response.files > 0 && response.bytes > 0, "{response:?}");

    // Restore: serve a copy of the backup directory.
    let restored_dir = tempfile::tempdir().unwrap();
    let data = restored_dir.path().join("data");
    copy_dir(&backups.path().join(&response.name), &data);
    let mut config = test_config(&restored_dir);
    config.data_dir = data;
    let restored = RunningServer::start(config, ManualClock::starting_now())
        .await
        .expect("a backup opens as a data directory");
    let mut client = connect(&restored.endpoint()).await;
    let mut missing = Vec::new();
    for chunk in before.chunks(100) {
        let keys = chunk.iter().map(|(key, _)| key.clone()).collect();
        let results = client
            .batch_get(pb::BatchGetRequest {
                keys,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        for ((key, version), result) in chunk.iter().zip(results) {
            if !result.found || result.version != *version {
                missing.push(key.clone());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged before the backup are not in it: {:?}",
        missing.len(),
        before.len(),
        &missing[..missing.len().min(5)]
    );
    // New versions on the restored copy are above every version it holds.
    let newest = before.iter().map(|(_, version)| *version).max().unwrap();
    let version = client
        .put(put_text("user:after-restore", "v"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(version > newest);
    restored.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn backup_names_stay_inside_backup_dir_and_backups_can_be_off() {
    let backups = tempfile::tempdir().unwrap();
    let backup_root = backups.path().to_path_buf();
    let mut server = start_with(|config| config.backup_dir = Some(backup_root)).await;
    server.client.put(put_text("user:a", "1")).await.unwrap();
    let mut admin = admin_client(&server).await;

    for bad in ["../escape", "a/b", "/tmp/x", "..", "with space"] {
        let status = admin
            .backup(pb::BackupRequest { name: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
    }
    assert!(!backups.path().parent().unwrap().join("escape").exists());

    let first = admin
        .backup(pb::BackupRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(backups.path().join(&first.name).join("CURRENT").exists());
    let again = admin
        .backup(pb::BackupRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let unnamed = admin
        .backup(pb::BackupRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(unnamed.name.starts_with("backup-"), "{}", unnamed.name);
    assert!(backups.path().join(&unnamed.name).join("CURRENT").exists());
    server.stop().await;

    let off = start().await;
    let status = admin_client(&off)
        .await
        .backup(pb::BackupRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("backup_dir"), "{status:?}");
    off.stop().await;
}

/// A backup answers with its name and size, never the server's file system
/// path (which only the operator needs to know).
#[tokio::test]
async fn backup_answers_its_name_and_size_not_a_server_path() {
    use prost::Message;
    let backups = tempfile::tempdir().unwrap();
    let backup_root = backups.path().to_path_buf();
    let mut server = start_with(|config| config.backup_dir = Some(backup_root)).await;
    server.client.put(put_text("user:a", "1")).await.unwrap();
    let mut admin = admin_client(&server).await;
    for name in ["nightly", ""] {
        let response = admin
            .backup(pb::BackupRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner();
        let root = backups.path().display().to_string();
        assert!(
            !String::from_utf8_lossy(&response.encode_to_vec()).contains(&root),
            "the answer holds the server's path {root}: {response:?}"
        );
        if name.is_empty() {
            assert!(response.name.starts_with("backup-"), "{response:?}");
        } else {
            assert_eq!(response.name, name);
        }
        assert!(response.files > 0 && response.bytes > 0, "{response:?}");
    }
    server.stop().await;
}

/// Backups of one name at once: one wins, every other gets ALREADY_EXISTS,
/// none INTERNAL, and the winner is a whole backup that opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backups_of_one_name_one_wins_the_others_already_exist() {
    let backups = tempfile::tempdir().unwrap();
    let backup_root = backups.path().to_path_buf();
    let mut server = start_with(|config| config.backup_dir = Some(backup_root)).await;
    server.client.put(put_text("user:a", "1")).await.unwrap();
    let admin = admin_client(&server).await;
    for (round, at_once) in [2, 2, 2, 2, 2, 8, 8].into_iter().enumerate() {
        let name = format!("same-{round}");
        let calls: Vec<_> = (0..at_once)
            .map(|_| {
                let mut admin = admin.clone();
                let name = name.clone();
                tokio::spawn(async move { admin.backup(pb::BackupRequest { name }).await })
            })
            .collect();
        let mut won = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => won += 1,
                Err(status) => assert_eq!(
                    status.code(),
                    Code::AlreadyExists,
                    "round {round}: {status:?}"
                ),
            }
        }
        assert_eq!(won, 1, "round {round}: one backup of {name} wins");
        assert!(backups.path().join(&name).join("CURRENT").exists());
    }
    // Only finished backups are left in the directory.
    let mut entries: Vec<String> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let expected: Vec<String> = (0..7).map(|round| format!("same-{round}")).collect();
    assert_eq!(entries, expected);
    // The last one restores.
    let restored_dir = tempfile::tempdir().unwrap();
    let data = restored_dir.path().join("data");
    copy_dir(&backups.path().join("same-6"), &data);
    let mut config = test_config(&restored_dir);
    config.data_dir = data;
    let restored = RunningServer::start(config, ManualClock::starting_now())
        .await
        .expect("the winning backup opens as a data directory");
    let mut client = connect(&restored.endpoint()).await;
    assert!(exists(&mut client, "user:a").await);
    restored.stop().await.unwrap();
    server.stop().await;
}
