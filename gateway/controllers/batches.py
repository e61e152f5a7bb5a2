"""The Batch API, as OpenAI's SDK calls it (`client.batches`): create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from gateway import batches
from gateway.auth import GatewayDep, PrincipalDep
from gateway.schemas.batches import BatchList, BatchObject, BatchRequest


class BatchesController(Controller):
    """`/v1/batches`."""

    path = "/v1/batches"
    tags = ["batches"]

    @post(
        operation_id="createBatch",
        summary="Run every request of an input file (each line checked first)",
        status_code=200,
    )
    async def create(
        self, data: JSONBody[BatchRequest], gateway: GatewayDep, principal: PrincipalDep
    ) -> BatchObject:
        """Create a batch: `validating` until the batch runner takes it up, or `failed` with
        `errors` naming each refused line."""
        return BatchObject.of(await batches.create(gateway, principal, data))

    @get(operation_id="listBatches", summary="Your batches (an admin: the tenant's), newest first")
    async def list_batches(
        self,
        gateway: GatewayDep,
        principal: PrincipalDep,
        after: Annotated[
            str | None, QueryParameter(name="after", description="the last id of the page before")
        ] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=100)] = 20,
    ) -> BatchList:
        """A page of batches."""
        views, more = await batches.listing(gateway, principal, after=after, limit=limit)
        return BatchList.of([BatchObject.of(v) for v in views], more)

    @get("/{batch_id:str}", operation_id="retrieveBatch", summary="A batch: status, counts, files")
    async def retrieve(
        self, batch_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> BatchObject:
        """The batch object."""
        return BatchObject.of(await batches.load(gateway, principal, batch_id))

    @post(
        "/{batch_id:str}/cancel",
        operation_id="cancelBatch",
        summary="Cancel a batch (its ended lines are kept in its files)",
        status_code=200,
    )
    async def cancel(
        self, batch_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> BatchObject:
        """`cancelling` until its running lines end, then `cancelled`."""
        return BatchObject.of(await batches.cancel(gateway, principal, batch_id))
