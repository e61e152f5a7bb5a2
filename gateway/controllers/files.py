"""The Files API, as OpenAI's SDK calls it (`client.files`): batch input files up, batch output
files down."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter

from gateway import files
from gateway.auth import GatewayDep, PrincipalDep
from gateway.errors import ApiError
from gateway.schemas.batches import FileDeleted, FileList, FileObject

_MULTIPART_SLACK = 64 * 1024  # the form's boundaries and its other fields, beside the file


class FilesController(Controller):
    """`/v1/files`."""

    path = "/v1/files"
    tags = ["files"]

    @classmethod
    def limited(cls, max_file_bytes: int) -> type[FilesController]:
        """This controller taking bodies up to a file of `max_file_bytes` (413 beyond, from the
        request's length, before the body is read)."""
        body = max_file_bytes + _MULTIPART_SLACK
        return type(cls.__name__, (cls,), {"request_max_body_size": body})

    @post(
        operation_id="createFile",
        summary="Upload a batch input file (multipart: `file`, `purpose` batch)",
        status_code=200,
    )
    async def create(
        self,
        data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)],
        gateway: GatewayDep,
        principal: PrincipalDep,
    ) -> FileObject:
        """Store a JSONL file of batch requests (checked: not empty, UTF-8, within the bounds)."""
        files.require_batch_purpose(data.get("purpose"))
        extra = sorted(set(data) - {"file", "purpose"})
        if extra:  # e.g. expires_after: files stay until deleted, and no field is ignored
            raise ApiError(
                400,
                f"{extra[0]}: not served (files stay until deleted)",
                code="unsupported_parameter",
                param=extra[0],
            )
        upload = data.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "send the file as the form's `file` part", param="file")
        raw = await upload.read()
        return FileObject.of(await files.upload(gateway, principal, raw, upload.filename))

    @get(operation_id="listFiles", summary="Your files, newest first")
    async def list_files(
        self,
        gateway: GatewayDep,
        principal: PrincipalDep,
        purpose: Annotated[str | None, QueryParameter(name="purpose")] = None,
        after: Annotated[
            str | None, QueryParameter(name="after", description="the last id of the page before")
        ] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=10_000)] = 10_000,
        order: Annotated[Literal["asc", "desc"], QueryParameter(name="order")] = "desc",
    ) -> FileList:
        """A page of files."""
        records, more = await files.listing(
            gateway,
            principal,
            purpose=purpose,
            after=after,
            limit=limit,
            ascending=order == "asc",
        )
        return FileList.of([FileObject.of(r) for r in records], more)

    @get("/{file_id:str}", operation_id="retrieveFile", summary="A file's description")
    async def retrieve(
        self, file_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> FileObject:
        """The file object."""
        return FileObject.of(await files.load(gateway, principal, file_id))

    @get(
        "/{file_id:str}/content",
        operation_id="downloadFile",
        summary="A file's content (a batch's output is JSONL)",
        media_type="application/octet-stream",
    )
    async def content(
        self, file_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> Response[bytes]:
        """The file's bytes."""
        record, raw = await files.content(gateway, principal, file_id)
        disposition = f'attachment; filename="{record.filename}"'
        return Response(
            raw,
            media_type="application/octet-stream",
            headers={"content-disposition": disposition},
        )

    @delete("/{file_id:str}", operation_id="deleteFile", summary="Delete a file", status_code=200)
    async def remove(
        self, file_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> FileDeleted:
        """Delete the file (a batch that read it keeps its own copy of the requests)."""
        record = await files.load(gateway, principal, file_id)
        await gateway.files.delete(record)
        return FileDeleted(id=record.id)
