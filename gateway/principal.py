"""Who is calling: the identity every authenticated request carries."""

from __future__ import annotations

from dataclasses import dataclass

from events.accounts import Role


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user or service, in one tenant, with roles."""

    principal_id: str
    tenant: str
    roles: tuple[Role, ...]
    key_id: str | None = None
    session_id: str | None = None

    @property
    def admin(self) -> bool:
        """Whether the caller may use admin endpoints (within its tenant)."""
        return "admin" in self.roles

    def may_see(self, owner: str, tenant: str) -> bool:
        """Whether the caller may see what `owner` made in `tenant` (a job, a key): its owner,
        or an admin of that tenant."""
        return tenant == self.tenant and (self.admin or owner == self.principal_id)
