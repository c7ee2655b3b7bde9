//! The `tierkv.v1.AdminService` adapter: batch migrations and namespaces.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::authorize_admin;
use super::convert::timestamp_from_millis;
use super::status::{admin_status, migrate_status};
use crate::admin::backup::Backups;
use crate::admin::NamespaceAdmin;
use crate::auth::Permission;
use crate::metrics::{parse_samples, Metrics};
use crate::migrate::{MigrationProgress, MigrationRequest, MigrationState, Migrator};
use crate::proto::v1 as pb;
use pb::admin_service_server::AdminService as AdminServiceRpc;

/// Serves batch migrations and namespace administration over gRPC.
#[derive(Clone)]
pub struct AdminApi {
    migrator: Arc<Migrator>,
    namespaces: NamespaceAdmin,
    backups: Backups,
    metrics: Arc<std::sync::OnceLock<Metrics>>,
}

impl AdminApi {
    /// An adapter for `migrator`, `namespaces` and `backups`, serving the
    /// server's `metrics` once they are set.
    pub fn new(
        migrator: Arc<Migrator>,
        namespaces: NamespaceAdmin,
        backups: Backups,
        metrics: Arc<std::sync::OnceLock<Metrics>>,
    ) -> Self {
        Self {
            migrator,
            namespaces,
            backups,
            metrics,
        }
    }

    /// The tonic service to mount.
    pub fn into_server(self) -> pb::admin_service_server::AdminServiceServer<Self> {
        pb::admin_service_server::AdminServiceServer::new(self)
    }
}

fn state_to_proto(state: MigrationState) -> pb::MigrationState {
    pb::MigrationState {
        prefix: state.prefix,
        dry_run: state.dry_run,
        scanned: state.scanned,
        migrated: state.migrated,
        already_current: state.already_current,
        failed: state.failed,
        newer_than_known: state.newer_than_known,
        skipped: state.skipped,
        checkpoint: state.checkpoint.unwrap_or_default(),
        start_time: Some(timestamp_from_millis(state.started_at_millis)),
        finish_time: state.finished_at_millis.map(timestamp_from_millis),
        done: state.done,
        running: state.running,
    }
}

fn progress_to_proto(progress: MigrationProgress) -> pb::MigrateProgress {
    pb::MigrateProgress {
        state: Some(state_to_proto(progress.state)),
        failures: progress
            .failures
            .into_iter()
            .map(|(key, reason)| pb::MigrationFailure { key, reason })
            .collect(),
        failures_not_listed: progress.failures_not_listed,
    }
}

/// The stream of a `Migrate` call.
pub type MigrateStream = Pin<Box<dyn Stream<Item = Result<pb::MigrateProgress, Status>> + Send>>;

#[tonic::async_trait]
impl AdminServiceRpc for AdminApi {
    type MigrateStream = MigrateStream;

    async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<Self::MigrateStream>, Status> {
        authorize_admin(&request, "Migrate", &[Permission::Migrate])?;
        let request = request.into_inner();
        let receiver = self
            .migrator
            .start(MigrationRequest {
                prefix: request.prefix,
                dry_run: request.dry_run,
                batch_size: request.batch_size,
                max_records_per_second: request.max_records_per_second,
            })
            .await
            .map_err(|error| migrate_status("Migrate", error))?;
        let stream = ReceiverStream::new(receiver).map(|item| {
            item.map(progress_to_proto)
                .map_err(|error| migrate_status("Migrate", error))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::MigrationState>, Status> {
        authorize_admin(
            &request,
            "GetMigration",
            &[Permission::Stats, Permission::Migrate],
        )?;
        let state = self
            .migrator
            .state(&request.into_inner().prefix)
            .await
            .map_err(|error| migrate_status("GetMigration", error))?;
        Ok(Response::new(state_to_proto(state)))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        authorize_admin(&request, "ListNamespaces", &[Permission::Stats])?;
        let namespaces = self
            .namespaces
            .list()
            .await
            .map_err(|error| admin_status("ListNamespaces", error))?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: namespaces
                .into_iter()
                .map(|namespace| pb::Namespace {
                    prefix: namespace.prefix,
                    column_family: namespace.column_family,
                    estimated_keys: namespace.estimated_keys,
                    estimated_live_bytes: namespace.estimated_live_bytes,
                    owner: namespace.owner.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn drop_namespace(
        &self,
        request: Request<pb::DropNamespaceRequest>,
    ) -> Result<Response<pb::DropNamespaceResponse>, Status> {
        authorize_admin(&request, "DropNamespace", &[Permission::Drop])?;
        let request = request.into_inner();
        let deleted_keys = self
            .namespaces
            .drop_namespace(&request.prefix, request.expected_keys, request.force)
            .await
            .map_err(|error| admin_status("DropNamespace", error))?;
        Ok(Response::new(pb::DropNamespaceResponse { deleted_keys }))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        authorize_admin(&request, "Backup", &[Permission::Backup])?;
        let done = self
            .backups
            .backup(&request.into_inner().name)
            .await
            .map_err(|error| admin_status("Backup", error))?;
        Ok(Response::new(pb::BackupResponse {
            name: done.name,
            files: done.files,
            bytes: done.bytes,
            took: prost_types::Duration::try_from(done.took).ok(),
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        authorize_admin(&request, "Stats", &[Permission::Stats])?;
        let Some(metrics) = self.metrics.get() else {
            return Err(Status::unavailable("the server is still starting"));
        };
        let prefix = request.into_inner().name_prefix;
        let text = metrics.scrape().await;
        let samples = parse_samples(&text)
            .into_iter()
            .filter(|sample| sample.name.starts_with(&prefix))
            .map(|sample| pb::Sample {
                name: sample.name,
                labels: sample.labels.into_iter().collect(),
                value: sample.value,
            })
            .collect();
        Ok(Response::new(pb::StatsResponse { samples, text }))
    }
}
