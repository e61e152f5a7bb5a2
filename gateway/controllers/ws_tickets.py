"""`POST /v1/ws-tickets`: a single-use ticket that opens one WebSocket (`gateway/ws_tickets.py`)."""

from __future__ import annotations

from litestar import Controller, post
from pydantic import BaseModel, Field

from gateway import ws_tickets
from gateway.auth import GatewayDep, PrincipalDep
from gateway.socket_auth import TICKET


class WsTicket(BaseModel):
    """A ticket and how to use it."""

    ticket: str = Field(description="send as the subprotocols 'dim.ticket, <ticket>'")
    protocol: str = Field(TICKET, description="the subprotocol name to offer before it")
    expires_in: int = Field(description="seconds the ticket stays valid; it opens one socket")


class WsTicketsController(Controller):
    """`/v1/ws-tickets`."""

    path = "/v1/ws-tickets"
    tags = ["jobs"]

    @post(
        operation_id="createWsTicket",
        summary="A single-use, short-lived ticket to open one WebSocket from a browser",
        status_code=201,
    )
    async def create(self, gateway: GatewayDep, principal: PrincipalDep) -> WsTicket:
        """The ticket names you (your key or session, tenant and roles) and nothing else."""
        ticket, ttl = ws_tickets.issue(gateway, principal)
        return WsTicket(ticket=ticket, expires_in=ttl)
