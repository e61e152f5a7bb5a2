"""API keys over HTTP: issue (the secret shown once), list, revoke."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from gateway.auth import GatewayDep, PrincipalDep
from gateway.errors import ApiError
from gateway.schemas.accounts import KeyIssued, KeyOut, KeyRequest
from services.accounts.keys import KeyRecord, create_key, revoke_key


def _out(record: KeyRecord) -> KeyOut:
    return KeyOut(
        key_id=record.key_id,
        principal_id=record.principal_id,
        tenant=record.tenant,
        roles=list(record.roles),
        name=record.name,
        created_at=record.created_at,
        daily_tokens=record.daily_tokens or None,
    )


class KeysController(Controller):
    """`/v1/keys`."""

    path = "/v1/keys"
    tags = ["keys"]

    @post(
        operation_id="createKey",
        summary="Issue an API key (its secret is shown only in this answer)",
        status_code=201,
    )
    async def create(
        self, data: JSONBody[KeyRequest], gateway: GatewayDep, principal: PrincipalDep
    ) -> KeyIssued:
        """A key for yourself; admins may issue keys for others in their tenant, and admin keys.
        A key with a daily token budget issues none: the new key would escape the budget."""
        if gateway.quotas.budget_of(principal) > 0:
            raise ApiError(
                403,
                "this API key has a daily token budget, and a key it issued would not be bound "
                "by it: issue keys with a key without a budget, or from a login session",
                code="key_has_budget",
            )
        owner = data.principal_id or principal.principal_id
        if (owner != principal.principal_id or data.role == "admin") and not principal.admin:
            raise ApiError(
                403, "only admins issue keys for others or admin keys", code="admin_only"
            )
        held = sum(1 for r in gateway.keys.items.values() if r.principal_id == owner)
        cap = gateway.settings.max_keys_per_user
        if held >= cap:
            raise ApiError(
                409,
                f"{owner} holds {held} live keys, the most one may (DIM_MAX_KEYS_PER_USER); "
                "revoke one first",
                code="too_many_keys",
            )
        record, key = await create_key(
            gateway.bus,
            principal_id=owner,
            tenant=principal.tenant,
            roles=(data.role,),
            name=data.name,
            actor=principal.principal_id,
            daily_tokens=data.daily_tokens or 0,
        )
        return KeyIssued(key=key, **_out(record).model_dump())

    @get(operation_id="listKeys", summary="Your keys (an admin: the tenant's), without secrets")
    async def list_keys(self, gateway: GatewayDep, principal: PrincipalDep) -> list[KeyOut]:
        """Live keys."""
        return [
            _out(r)
            for r in sorted(gateway.keys.items.values(), key=lambda r: r.key_id)
            if principal.may_see(r.principal_id, r.tenant)
        ]

    @delete(
        "/{key_id:str}",
        operation_id="revokeKey",
        summary="Revoke a key on every gateway at once",
        status_code=204,
    )
    async def revoke(
        self, key_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> None:
        """Revoke one of your keys (an admin: any of the tenant's)."""
        record = gateway.keys.items.get(key_id)
        if record is None or not principal.may_see(record.principal_id, record.tenant):
            raise ApiError(404, f"no key {key_id!r}", code="key_not_found", param="key_id")
        await revoke_key(gateway.bus, record, by=principal.principal_id)
