//! The Registry gRPC service: unpacks each request, calls [`Registry`], and packs the answer.
use std::pin::Pin;
use std::sync::Arc;

use coe_proto::v1 as pb;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::service::Registry;

/// The gRPC face of a [`Registry`]; build it with [`crate::registry_grpc_service`].
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    type WatchStream = WatchStream;

    async fn add_expert(
        &self,
        request: Request<pb::AddExpertRequest>,
    ) -> Result<Response<pb::ExpertRecord>, Status> {
        Ok(Response::new(
            self.registry.add_expert(request.into_inner()).await?,
        ))
    }

    async fn remove_expert(
        &self,
        request: Request<pb::RemoveExpertRequest>,
    ) -> Result<Response<pb::RemoveExpertResponse>, Status> {
        let request = request.into_inner();
        let removed = self
            .registry
            .remove_expert(&request.name, request.force)
            .await?;
        Ok(Response::new(pb::RemoveExpertResponse {
            name: removed.name,
            revision: removed.revision,
            remapped_categories: removed.remapped_categories,
        }))
    }

    async fn list_experts(
        &self,
        _request: Request<pb::ListExpertsRequest>,
    ) -> Result<Response<pb::ListExpertsResponse>, Status> {
        let (experts, revision) = self.registry.list_experts().await?;
        Ok(Response::new(pb::ListExpertsResponse { experts, revision }))
    }

    async fn get_expert(
        &self,
        request: Request<pb::GetExpertRequest>,
    ) -> Result<Response<pb::ExpertRecord>, Status> {
        Ok(Response::new(
            self.registry.get_expert(&request.into_inner().name).await?,
        ))
    }

    async fn set_category_map(
        &self,
        request: Request<pb::SetCategoryMapRequest>,
    ) -> Result<Response<pb::CategoryMap>, Status> {
        let map = request
            .into_inner()
            .map
            .ok_or_else(|| Status::invalid_argument("SetCategoryMap needs a map"))?;
        Ok(Response::new(self.registry.set_category_map(map).await?))
    }

    async fn get_category_map(
        &self,
        request: Request<pb::GetCategoryMapRequest>,
    ) -> Result<Response<pb::CategoryMap>, Status> {
        Ok(Response::new(
            self.registry
                .get_category_map(request.into_inner().version)
                .await?,
        ))
    }

    async fn rollback_category_map(
        &self,
        request: Request<pb::RollbackCategoryMapRequest>,
    ) -> Result<Response<pb::CategoryMap>, Status> {
        Ok(Response::new(
            self.registry
                .rollback_category_map(request.into_inner().to_version)
                .await?,
        ))
    }

    async fn assign_expert(
        &self,
        request: Request<pb::AssignExpertRequest>,
    ) -> Result<Response<pb::ExpertRecord>, Status> {
        let request = request.into_inner();
        let placement = request
            .placement
            .ok_or_else(|| Status::invalid_argument("AssignExpert needs a placement"))?;
        Ok(Response::new(
            self.registry
                .assign_expert(&request.name, placement)
                .await?,
        ))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let events = self.registry.watch(request.into_inner().from_revision);
        let stream = ReceiverStream::new(events).map(|event| event.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
